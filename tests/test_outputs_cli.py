"""`endless serve --record-dir D --osc-port P` as a user runs it: a recording left running
is finished, playable, when the server is stopped with Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time

import av
from conftest import timeout

from client.session import LiveSession

PROMPT = "a big red circle bouncing over the ocean"


def test_serve_with_record_dir_and_osc_finishes_a_running_recording_on_sigint(tmp_path):
    """The flags reach the server (OSC port printed, files in --record-dir); SIGINT
    finishes the recording nobody stopped into a playable MP4."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "server.cli", "serve", "--port", "0", "--model", "random"]
    cmd += ["--record-dir", str(tmp_path), "--osc-port", "0"]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    try:
        deadline = time.monotonic() + timeout(60)
        url = osc = None
        while not (url and osc) and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            url = url or (m.group(1) if (m := re.search(r"websocket (ws://\S+)\)", line)) else None)
            osc = m.group(1) if (m := re.search(r"OSC control on udp \S+:(\d+)", line)) else None
        assert url and osc, "serve printed no websocket URL or OSC port"

        async def record() -> dict:
            async with LiveSession(url) as s:
                created = await s.create(PROMPT)
                rec = {"type": "record", "stream": created["stream"]}
                started = await s.request({**rec, "token": created["control_token"]})
                await asyncio.sleep(2.0)
                return started

        started = asyncio.run(record())
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout(30)) == 0
        with av.open(str(tmp_path / f"{started['id']}.mp4")) as c:
            assert sum(1 for _ in c.decode(video=0)) >= 12
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
