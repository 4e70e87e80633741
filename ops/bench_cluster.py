"""Ray engine benchmark: streams served in real time against model workers, and the front
end's cost of moving frames.

    RAY_USAGE_STATS_ENABLED=0 .venv/bin/python ops/bench_cluster.py            # 1 and 2 workers
    .venv/bin/python ops/bench_cluster.py --workers 1 2 --streams 1 2 3 4 --seconds 15

For each worker count, an in-process server with `--engine ray` on a local cluster (bound
to 127.0.0.1; each worker a CPU process standing in for a GPU): for each stream count, N
aiortc viewers for `--seconds` (ops/bench_live.py's measure) give stalls per stream and
fps; "real time" is at most 2 stalls per stream. Then the front end's CPU per frame moved:
the server process's CPU seconds (its own, not the workers') over frames that came back
from the workers, with streams running and no viewer (so no encode is counted).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


async def frames_moved_cost(server, url: str, streams: int, seconds: float) -> dict:
    from bench_live import PROMPTS

    from client.session import LiveSession

    async with LiveSession(url) as s:
        ids = [(await s.create(PROMPTS[i % len(PROMPTS)]))["stream"] for i in range(streams)]
        await asyncio.sleep(3.0)  # every stream past its first chunks
        lives = [server.streams[i] for i in ids]
        frames0 = sum(x.playout.frames_accepted for x in lives)
        cpu0, t0 = time.process_time(), time.monotonic()
        await asyncio.sleep(seconds)
        cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
        frames = sum(x.playout.frames_accepted for x in lives) - frames0
        for i in ids:
            await s.stop(i)
    return {
        "streams": streams,
        "frames_moved": frames,
        "frames_per_s": round(frames / wall, 1),
        "front_end_cpu_ms_per_frame": round(cpu * 1e3 / max(frames, 1), 3),
    }


async def main(args) -> dict:
    import torch
    from bench_live import concurrent

    from server.app import LiveServer, load_model
    from server.config import ServerConfig

    torch.set_num_threads(1)
    model = load_model(args.model)
    out: dict = {"loadavg_before": os.getloadavg(), "runs": []}
    for workers in args.workers:
        config = ServerConfig(engine="ray", workers=workers, grace_seconds=1.0)
        server = await LiveServer(config, model).start()
        try:
            run = {"workers": workers, "levels": []}
            for n in args.streams:
                r = await concurrent(server.ws_url, n, args.seconds)
                r["real_time"] = r["stalls"] <= 2 * n
                run["levels"].append(r)
                print(
                    f"{workers} worker(s), {n} stream(s): {r['fps']:.1f} fps, stalls "
                    f"{r['stalls']} -> {'real time' if r['real_time'] else 'NOT real time'}",
                    flush=True,
                )
            run["streams_in_real_time"] = max(
                [r["streams"] for r in run["levels"] if r["real_time"]], default=0
            )
            run["moving"] = await frames_moved_cost(server, server.ws_url, 2, args.seconds)
            print(f"{workers} worker(s): front end {run['moving']}", flush=True)
            out["runs"].append(run)
        finally:
            await server.close()
            import ray

            if ray.is_initialized():
                ray.shutdown()
    out["loadavg_after"] = os.getloadavg()
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--streams", type=int, nargs="+", default=[1, 2, 3, 4])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--model", default="tiny")
    p.add_argument("--json", type=Path)
    return p.parse_args(argv)


if __name__ == "__main__":
    import uvloop

    args = parse_args()
    result = uvloop.run(main(args))
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
