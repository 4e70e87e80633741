"""Soak test: N streams for T minutes against a real `endless serve`, with random prompt
switches, viewers joining and leaving, and one SIGKILL of the engine process every
--kill-minutes. Prints one line per minute and a JSON summary at the end:

    python ops/soak.py --streams 1 --minutes 60 > /tmp/soak.log

Per minute: RSS of the server and of the engine process (MiB), the server's open files
and threads, stalls (from /metrics), frames each stream's steady viewer decoded, engine
restarts. A stream is lost if it ends, or if its steady viewer decodes nothing for
--lost-seconds. The summary's RSS growth compares the last minute with the first (after
warm-up); the engine's is measured within one engine's lifetime (it is new after a kill).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPTS = [
    "a big red circle bouncing over the ocean",
    "a small blue square moving left in the snow",
    "a big yellow triangle circling in the desert",
    "a small cyan ring moving up in the night",
]


def start_server(args) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "server.cli", "serve", "--port", "0", "--model", args.model]
    cmd += ["--grace", "30", "--log-level", "WARNING"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    for line in proc.stdout:
        if m := re.search(r"serving on (http://\S+/)", line):
            threading.Thread(target=_relay, args=(proc.stdout,), daemon=True).start()
            return proc, m.group(1)
    raise SystemExit("the server printed no URL")


def _relay(out) -> None:
    """Keep reading the server's output (a full pipe would stop it), onto stderr."""
    for line in out:
        print("server:", line, end="", file=sys.stderr, flush=True)


def http_get(url: str, accept: str = "*/*") -> str:
    req = urllib.request.Request(url, headers={"Accept": accept})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.read().decode()
    except urllib.error.HTTPError as err:
        return err.read().decode()


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else 0.0


def rss_mib(pid: int | None) -> float | None:
    try:
        return psutil.Process(pid).memory_info().rss / 2**20 if pid else None
    except psutil.NoSuchProcess:
        return None


class SoakStream:
    def __init__(self, session, stream_id: str, viewer):
        self.session = session
        self.id = stream_id
        self.viewer = viewer
        self.last_count = 0
        self.last_change = time.monotonic()
        self.lost = False
        self.frames_this_minute = 0


async def soak(args) -> dict:
    from client.session import LiveSession

    server, url = start_server(args)
    ws = url.replace("http://", "ws://") + "ws"
    rng = random.Random(args.seed)
    streams: list[SoakStream] = []
    extra_viewers: list = []
    view_tokens: dict[str, str] = {}
    sessions = []
    try:
        for i in range(args.streams):
            s = await LiveSession(ws).connect(30)
            sessions.append(s)
            created = await s.create(PROMPTS[i % len(PROMPTS)], seed=i)
            sid = created["stream"]
            v = await s.watch(sid, keep_images=False, history=64)
            streams.append(SoakStream(s, sid, v))
            view_tokens[sid] = created["view_token"]  # the churning viewers watch by share link
        churn = await LiveSession(ws).connect(30)
        sessions.append(churn)
        t0 = time.monotonic()
        next_kill = t0 + args.kill_minutes * 60
        next_switch = t0 + rng.uniform(5, 20)
        next_churn = t0 + rng.uniform(5, 20)
        minute, rows, kills = 0, [], 0
        last_stalls = 0.0
        srv = psutil.Process(server.pid)
        while time.monotonic() - t0 < args.minutes * 60:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            for st in streams:
                n = st.viewer.received
                if n != st.last_count:
                    st.frames_this_minute += n - st.last_count
                    st.last_count, st.last_change = n, now
                elif now - st.last_change > args.lost_seconds and not st.lost:
                    st.lost = True
                    print(f"LOST stream {st.id}: no frame for {args.lost_seconds}s", flush=True)
                ended = [e for e in st.session.events if e.get("type") == "stream_ended"]
                if ended and not st.lost:
                    st.lost = True
                    print(f"LOST stream {st.id}: {ended[-1]}", flush=True)
            if now >= next_switch:
                st = rng.choice(streams)
                try:
                    await st.session.prompt(st.id, rng.choice(PROMPTS))
                except Exception as exc:  # rate limits, a restart under way
                    print(f"switch refused: {exc}", flush=True)
                next_switch = now + rng.uniform(5, 20)
            if args.churn and now >= next_churn:
                if extra_viewers and (len(extra_viewers) >= 3 or rng.random() < 0.5):
                    v = extra_viewers.pop(rng.randrange(len(extra_viewers)))
                    token = view_tokens[v.stream]
                    unwatch = {"type": "unwatch", "stream": v.stream, "viewer": v.id}
                    await churn.request(unwatch | {"token": token})
                    await v.close()
                else:
                    st = rng.choice(streams)
                    token = view_tokens[st.id]
                    extra_viewers.append(
                        await churn.watch(st.id, keep_images=False, history=8, token=token)
                    )
                next_churn = now + rng.uniform(5, 20)
            if now >= next_kill:
                health = json.loads(http_get(url + "healthz", "application/json"))
                if health.get("engine_pid"):
                    os.kill(health["engine_pid"], signal.SIGKILL)
                    kills += 1
                    print(f"killed engine {health['engine_pid']}", flush=True)
                next_kill = now + args.kill_minutes * 60
            if now - t0 >= (minute + 1) * 60:
                minute += 1
                text = http_get(url + "metrics")
                health = json.loads(http_get(url + "healthz", "application/json"))
                stalls = metric(text, "endless_stalls_total")
                row = {
                    "minute": minute,
                    "server_rss_mib": round(srv.memory_info().rss / 2**20, 1),
                    "engine_rss_mib": round(rss_mib(health.get("engine_pid")) or 0, 1),
                    "engine_pid": health.get("engine_pid"),
                    "open_files": srv.num_fds(),
                    "threads": srv.num_threads(),
                    "viewers": int(metric(text, "endless_viewers")),
                    "stalls": int(stalls - last_stalls),
                    "frames": [st.frames_this_minute for st in streams],
                    "restarts": health.get("restarts"),
                    "state": health.get("state"),
                    "lost": sum(st.lost for st in streams),
                }
                last_stalls = stalls
                for st in streams:
                    st.frames_this_minute = 0
                rows.append(row)
                print(json.dumps(row), flush=True)
        return summarize(rows, kills, args)
    finally:
        for s in sessions:
            await s.close()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()


def summarize(rows: list[dict], kills: int, args) -> dict:
    def growth(key: str, rows: list[dict]) -> float | None:
        if len(rows) < 2 or not rows[0][key]:
            return None
        return round(100 * (rows[-1][key] - rows[0][key]) / rows[0][key], 2)

    warm = rows[1:] if len(rows) > 2 else rows  # minute 1 is warm-up
    last_pid = warm[-1]["engine_pid"] if warm else None
    # the last engine's own minutes, from its second: in its first it may still be loading
    same_engine = [r for r in warm if r["engine_pid"] == last_pid][1:]
    return {
        "streams": args.streams,
        "minutes": len(rows),
        "kills": kills,
        "server_rss_growth_pct": growth("server_rss_mib", warm),
        "engine_rss_growth_pct": growth("engine_rss_mib", same_engine),
        "engine_minutes_measured": len(same_engine),
        "open_files": [warm[0]["open_files"], warm[-1]["open_files"]] if warm else None,
        "threads": [warm[0]["threads"], warm[-1]["threads"]] if warm else None,
        "stalls_per_minute": [r["stalls"] for r in rows],
        "lost_streams": rows[-1]["lost"] if rows else None,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--streams", type=int, default=1)
    p.add_argument("--minutes", type=float, default=60)
    p.add_argument("--kill-minutes", type=float, default=10, help="SIGKILL the engine this often")
    p.add_argument("--lost-seconds", type=float, default=15)
    p.add_argument(
        "--no-churn",
        dest="churn",
        action="store_false",
        help="no viewers joining and leaving (to tell their memory from the rest)",
    )
    p.add_argument("--model", default="tiny")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    print(json.dumps({"summary": asyncio.run(soak(args))}), flush=True)


if __name__ == "__main__":
    main()
