"""Outputs benchmark: one stream with a websocket WebRTC viewer, a WHEP viewer, HLS, a
recording and an RTMP push at once (added one per phase), on an in-process server.

    .venv/bin/python ops/bench_outputs.py [--seconds 8] [--model tiny] [--json out.json]

Per phase: the encoders of the stream and encodes per shown tick (1 per codec is the
goal), and CPU per thread group in % of one core, read from /proc: the model thread, the
event loop (which also runs this script's clients' RTP receive), the encoder thread,
the RTMP push thread; the delta between phases is the cost of the output added.
Latency: a frame's shown time (the playout clock hands it to the encoder) -> decoded by
the websocket viewer / the WHEP viewer (aiortc, in this process); HLS: shown -> its
segment listed in the playlist (first frame of each segment), and an estimate for a
player starting three segments from the live edge (hls.js's default). The RTMP server is Debian's
nginx with its RTMP module when installed (the push phase is skipped otherwise).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

NGINX, RTMP_MODULE = "/usr/sbin/nginx", "/usr/lib/nginx/modules/ngx_rtmp_module.so"
CLK = os.sysconf("SC_CLK_TCK")

PROMPT = "a big red circle bouncing over the ocean"


def thread_cpu(tid: int) -> float:
    """CPU seconds (user + system) of one thread of this process."""
    try:
        fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK


def all_threads() -> list[int]:
    return [int(t) for t in os.listdir("/proc/self/task")]


def start_nginx(directory: Path) -> tuple[subprocess.Popen, int] | None:
    if not (Path(NGINX).exists() and Path(RTMP_MODULE).exists()):
        return None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = directory / "nginx.conf"
    conf.write_text(
        f"daemon off; master_process off; pid {directory}/nginx.pid;\n"
        f"error_log {directory}/error.log; load_module {RTMP_MODULE};\n"
        "events { worker_connections 64; }\n"
        f"rtmp {{ server {{ listen 127.0.0.1:{port}; application live {{ live on; }} }} }}\n"
    )
    proc = subprocess.Popen(
        [NGINX, "-p", str(directory), "-c", str(conf), "-e", "stderr"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), 0.1).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    return None


class Clock:
    """When each tick was shown: the playout hands it to `_emit` (then encodes it)."""

    def __init__(self, live):
        self.shown: dict[int, float] = {}
        emit = live._emit

        async def timed(shown):
            self.shown[shown.tick] = time.monotonic()
            await emit(shown)

        live._emit = timed


async def whep_viewer(http, server, created, arrivals: list):
    from aiortc import RTCPeerConnection, RTCSessionDescription
    from aiortc.mediastreams import MediaStreamError

    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="recvonly")
    done = asyncio.get_running_loop().create_future()

    async def read(track):
        try:
            while True:
                frame = await track.recv()
                arrivals.append((frame.pts, time.monotonic()))
        except MediaStreamError:  # the peer closed
            pass

    pc.on("track", lambda t: done.set_result(asyncio.ensure_future(read(t))))
    await pc.setLocalDescription(await pc.createOffer())
    headers = {
        "Authorization": f"Bearer {created['view_token']}",
        "Content-Type": "application/sdp",
    }
    url = f"{server.url}whep/{created['stream']}"
    async with http.post(url, data=pc.localDescription.sdp, headers=headers) as r:
        assert r.status == 201, r.status
        await pc.setRemoteDescription(RTCSessionDescription(await r.text(), "answer"))
    return pc


async def hls_reader(http, server, created, listed: dict, stop: asyncio.Event):
    """Poll the playlist like a player (every 50 ms), fetch each new segment."""
    url = f"{server.url}hls/{created['stream']}/index.m3u8?token={created['view_token']}"
    base = f"{server.url}hls/{created['stream']}/"
    while not stop.is_set():
        async with http.get(url) as r:
            text = await r.text()
        for line in text.splitlines():
            if line.endswith(f"token={created['view_token']}") and ".ts" in line:
                seq = int(line.split(".ts")[0])
                if seq not in listed:
                    listed[seq] = time.monotonic()
                    async with http.get(base + line) as seg:
                        await seg.read()
        await asyncio.sleep(0.05)


def latencies(first_tick, arrivals, clock, tpf) -> list[float]:
    out = []
    for pts, t in arrivals:
        tick = first_tick + round(pts / tpf)
        if tick in clock.shown:
            out.append(t - clock.shown[tick])
    return out


def summary(values: list[float]) -> dict:
    if not values:
        return {}
    v = sorted(values)
    return {
        "median_ms": round(1e3 * statistics.median(v), 1),
        "p90_ms": round(1e3 * v[int(0.9 * (len(v) - 1))], 1),
        "n": len(v),
    }


async def run(args) -> dict:
    import aiohttp

    from client.session import LiveSession
    from server.app import LiveServer
    from server.config import ServerConfig

    tmp = Path(tempfile.mkdtemp(prefix="endless-bench-outputs-"))
    config = ServerConfig(
        codec="h264", model=args.model, record_dir=str(tmp / "rec"), hls_idle_seconds=60.0
    )
    server = await LiveServer(config).start()
    nginx = start_nginx(tmp)
    report: dict = {"seconds_per_phase": args.seconds, "phases": []}
    stop_hls = asyncio.Event()
    try:
        s = await LiveSession(server.ws_url).connect()
        created = await s.create(PROMPT)
        live = server.streams[created["stream"]]
        clock = Clock(live)
        viewer = await s.watch(created["stream"], codec="h264", keep_images=False)
        await viewer.wait_frames(24, 30)
        http = aiohttp.ClientSession()
        whep_arrivals: list = []
        listed: dict[int, float] = {}
        groups = {
            "model": [server.worker._thread.native_id],
            "loop": [threading.main_thread().native_id],
        }
        push = None
        steps = [
            ("websocket viewer", None),
            ("+ WHEP viewer", "whep"),
            ("+ HLS", "hls"),
            ("+ recording", "record"),
            ("+ RTMP push", "push"),
        ]
        for name, add in steps:
            if add == "whep":
                pc = await whep_viewer(http, server, created, whep_arrivals)
            elif add == "hls":
                hls_task = asyncio.ensure_future(
                    hls_reader(http, server, created, listed, stop_hls)
                )
            elif add == "record":
                await s.request(
                    {"type": "record", "stream": live.id, "token": created["control_token"]}
                )
            elif add == "push":
                if nginx is None:
                    report["phases"].append({"phase": name, "skipped": "no nginx-rtmp"})
                    continue
                await s.request(
                    {
                        "type": "push",
                        "stream": live.id,
                        "token": created["control_token"],
                        "url": f"rtmp://127.0.0.1:{nginx[1]}/live/bench",
                    }
                )
                await s.wait_event(
                    lambda e: e["type"] == "push_status" and e["state"] == "live", 20
                )
                push = next(iter(server.outputs.pushes[live.id].values()))
            await asyncio.sleep(1.0)  # settle
            groups["encoder"] = [t.native_id for t in server.encode_pool._threads]
            groups["push"] = [push._thread.native_id] if push else []
            known = {t for ids in groups.values() for t in ids}
            cpu0 = {g: sum(thread_cpu(t) for t in ids) for g, ids in groups.items()}
            other0 = sum(thread_cpu(t) for t in all_threads() if t not in known)
            enc0 = {m: e.encodes for m, e in live.encoders.items()}
            tick0, t0 = live.playout.tick, time.monotonic()
            await asyncio.sleep(args.seconds)
            wall = time.monotonic() - t0
            ticks = live.playout.tick - tick0
            cpu = {
                g: round(100 * (sum(thread_cpu(t) for t in ids) - cpu0[g]) / wall, 1)
                for g, ids in groups.items()
            }
            other = sum(thread_cpu(t) for t in all_threads() if t not in known) - other0
            cpu["clients' decoders and the rest"] = round(100 * other / wall, 1)
            report["phases"].append(
                {
                    "phase": name,
                    "encoders": sorted(live.encoders),
                    "encodes_per_tick": {
                        m: round((e.encodes - enc0.get(m, 0)) / max(ticks, 1), 3)
                        for m, e in live.encoders.items()
                    },
                    "cpu_percent_of_a_core": cpu,
                    "stalls": live.playout.stalls,
                }
            )
            print(json.dumps(report["phases"][-1]), flush=True)

        tpf = live.playout.ticks_per_frame
        ws = latencies(viewer.first_tick, [(f.pts, f.received) for f in viewer.frames], clock, tpf)
        (session,) = server.outputs.whep.sessions.values()
        whep_first = live.viewers[session.viewer_id].track.first_tick
        wh = latencies(whep_first, whep_arrivals, clock, tpf)
        hls = server.outputs.hls[live.id]
        seg_lat = [
            listed[sg.seq] - clock.shown[sg.tick]
            for sg in hls.segments
            if sg.seq in listed and sg.tick in clock.shown
        ]
        seg_len = statistics.mean(sg.seconds for sg in hls.segments)
        report["latency"] = {
            "websocket viewer (shown -> decoded)": summary(ws),
            "WHEP viewer (shown -> decoded)": summary(wh),
            "HLS segment listed (its first frame shown -> listed)": summary(seg_lat),
            "HLS segment seconds": round(seg_len, 3),
            # a player starting 3 segments from the live edge (hls.js's default)
            "HLS player 3 segments behind the edge (estimate, s)": (
                round(statistics.median(seg_lat) + 3 * seg_len, 2) if seg_lat else None
            ),
        }
        stop_hls.set()
        await hls_task
        await pc.close()
        await http.close()
        await s.close()
    finally:
        await server.close()
        if nginx is not None:
            nginx[0].kill()
            nginx[0].wait()
    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=8.0, help="per phase (default 8)")
    p.add_argument("--model", default="tiny")
    p.add_argument("--json", help="write the report here too")
    args = p.parse_args()
    report = asyncio.run(run(args))
    print(json.dumps(report["latency"], indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
