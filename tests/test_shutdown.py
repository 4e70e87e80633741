"""Shutdown of a real `endless serve`: SIGTERM tells clients, saves, and exits within 5 s
even with a client that stopped reading; a second signal exits at once."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import psutil
import websockets
from conftest import timeout

SHUTDOWN_SECONDS = 5.0


def start_serve(*extra: str) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "server.cli", "serve", "--port", "0", "--model", "random"]
    proc = subprocess.Popen(
        [*cmd, *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    deadline = time.monotonic() + timeout(60)
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if m := re.search(r"serving on (http://\S+/)", line):
            return proc, m.group(1)
    proc.kill()
    raise AssertionError("serve printed no URL")


async def engine_pid(url: str) -> int:
    def get() -> int:
        req = urllib.request.Request(url + "healthz", headers={"Accept": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())["engine_pid"]

    return await asyncio.to_thread(get)


async def clients(url: str):
    """A client that reads its events, and one (on the same stream) that stopped reading."""
    ws_url = url.replace("http://", "ws://") + "ws"
    good = await websockets.connect(ws_url)
    await good.recv()  # hello
    await good.send(json.dumps({"type": "create", "prompt": "a big red circle"}))
    while (msg := json.loads(await good.recv()))["type"] != "created":
        pass
    stalled = await websockets.connect(ws_url)
    await stalled.send(json.dumps({"type": "join", "stream": msg["stream"]}))
    await asyncio.sleep(0.2)
    stalled.transport.pause_reading()  # it reads nothing more: not even a close frame
    return good, stalled


async def events_until_closed(ws) -> list[dict]:
    got = []
    try:
        async for raw in ws:
            got.append(json.loads(raw))
    except websockets.ConnectionClosed:
        pass
    return got


def gone(pid: int, seconds: float) -> bool:
    """Whether process `pid` has exited within `seconds` (a zombie has: once its parent is
    gone, reaping it is up to init)."""
    deadline = time.monotonic() + timeout(seconds)
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


async def test_sigterm_exits_within_5s_with_a_client_that_stopped_reading(tmp_path):
    """SIGTERM: the reading client gets `shutting_down`, the state dir gets the stream,
    the server exits 0 within 5 s though a client stopped reading; no engine is left."""
    proc, url = start_serve("--state-dir", str(tmp_path))
    try:
        good, stalled = await clients(url)
        engine = await engine_pid(url)
        await asyncio.sleep(1.5)  # a chunk has played: there is a snapshot to save
        reader = asyncio.ensure_future(events_until_closed(good))
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = await asyncio.to_thread(proc.wait, timeout(SHUTDOWN_SECONDS + 5))
        elapsed = time.monotonic() - t0
        events = await asyncio.wait_for(reader, timeout(5))
        assert rc == 0 and elapsed < SHUTDOWN_SECONDS, f"exit {rc} after {elapsed:.1f}s"
        assert {"type": "shutting_down", "reason": "server_shutdown"} in events
        assert len(list(tmp_path.glob("*.json"))) == 1
        assert gone(engine, 5)
        stalled.transport.abort()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_a_second_signal_exits_at_once():
    """A second SIGTERM during the shutdown ends the process at once (status 130)."""
    proc, url = start_serve()
    try:
        good, stalled = await clients(url)
        engine = await engine_pid(url)
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.1)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = await asyncio.to_thread(proc.wait, timeout(10))
        assert rc == 130 and time.monotonic() - t0 < 1.0
        assert gone(engine, 5)  # the engine process follows its server
        stalled.transport.abort()
        await good.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
