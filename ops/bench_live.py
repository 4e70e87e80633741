"""Live server benchmark: time to first frame, prompt switch latency, client-side frame
jitter and stalls for N concurrent streams. Clients are aiortc viewers (client/session.py).

    .venv/bin/python ops/bench_live.py                  # in-process server, tiny model
    .venv/bin/python ops/bench_live.py --url ws://HOST:PORT/ws --streams 1 2 3

Time to first frame: websocket connect -> first decoded frame at the client (new stream).
Switch latency: prompt sent -> first decoded frame generated under the new prompt (its
index >= the frame named in prompt_applied); and as a viewer sees it: prompt sent -> first
received frame that the TinyWorld evaluator's frame reader reads as the new prompt (its
colour, shape, size and background; motion needs several frames and is left out). Each
switch changes colour, shape and background, so the old scene never reads as the new.
Jitter: p99 of |frame interval - 1/fps| at the client. Stalls: times the server's
playback ran dry (from its stats).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPTS = [
    "a big red circle bouncing over the ocean",
    "a small blue square moving left in the snow",
    "a big yellow triangle circling in the desert",
    "a small cyan ring moving up in the night",
]


async def time_to_first_frame(url: str) -> float:
    from client.session import LiveSession

    t0 = time.monotonic()
    async with LiveSession(url) as s:
        stream = (await s.create(PROMPTS[0]))["stream"]
        viewer = await s.watch(stream, keep_images=False)
        frames = await viewer.wait_frames(1, timeout=30)
        ttff = frames[0].received - t0
        await s.stop(stream)
    return ttff


def reads_as(prompt: str):
    """A test of one received frame: does the evaluator's reader see `prompt`'s still
    attributes in it?"""
    from model.tinyworld.reading import FrameReader
    from model.tinyworld.spec import (
        BACKGROUND_NAMES,
        COLOUR_NAMES,
        SHAPES,
        SIZE_NAMES,
        parse_prompt,
    )

    asked = parse_prompt(prompt).attributes
    readers: dict[int, FrameReader] = {}

    def test(image: np.ndarray) -> bool:
        reader = readers.setdefault(image.shape[0], FrameReader(image.shape[0]))
        r = reader.read(image)
        seen = {
            "colour": COLOUR_NAMES[r.colour] if r.colour >= 0 else None,
            "shape": SHAPES[r.shape] if r.shape >= 0 else None,
            "size": SIZE_NAMES[r.size] if r.size >= 0 else None,
            "background": BACKGROUND_NAMES[r.background],
        }
        return all(seen[k] == getattr(asked, k) for k in seen if getattr(asked, k))

    return test


async def first_frame_reading(viewer, after: float, test, timeout: float = 10.0):
    """The first frame received after `after` (monotonic) that passes `test`."""
    seen = 0
    async with asyncio.timeout(timeout):
        while True:
            frames = [f for f in list(viewer.frames) if f.received > after]
            for f in frames[seen:]:
                if f.image is not None and test(f.image):
                    return f
            seen = len(frames)
            viewer._new_frame.clear()
            await viewer._new_frame.wait()


async def switch_latencies(
    url: str, switches: int, rng: random.Random
) -> tuple[list[float], list[float | None], list[tuple[float, float]]]:
    """Client-side latencies (to the first frame generated under the new prompt, and to
    the first the evaluator reads as it), and the server's ms for each."""
    from client.session import LiveSession

    out, seen, parts = [], [], []
    async with LiveSession(url) as s:
        stream = (await s.create(PROMPTS[0]))["stream"]
        viewer = await s.watch(stream, keep_images=True, history=96)
        await viewer.wait_frames(24, timeout=30)
        for i in range(switches):
            await asyncio.sleep(rng.uniform(0.7, 1.3))  # land anywhere within a chunk
            prompt = PROMPTS[(i + 1) % len(PROMPTS)]
            sent = time.monotonic()
            applied = await s.prompt(stream, prompt)
            frame = await viewer.wait_index(applied["frame"], timeout=30)
            out.append(frame.received - sent)
            try:
                read = await first_frame_reading(viewer, sent, reads_as(prompt))
                seen.append(read.received - sent)
            except TimeoutError:  # never read as the new prompt within 10 s
                seen.append(None)
            shown = await s.wait_event(
                lambda e, f=applied["frame"]: e["type"] == "prompt_shown" and e["frame"] == f,
                timeout=5,
            )
            parts.append(
                (
                    shown["ready_ms"],
                    shown["shown_ms"],
                    shown["chunk_ms"]["total"],
                    shown["chunk_ms"].get("recache", 0.0),
                )
            )
        await s.stop(stream)
    return out, seen, parts


async def concurrent(url: str, n: int, seconds: float) -> dict:
    from client.session import LiveSession, ServerError

    sessions = [await LiveSession(url).connect() for _ in range(n)]
    refused = 0
    try:
        streams = []
        for i, s in enumerate(list(sessions)):
            try:
                streams.append((await s.create(PROMPTS[i % len(PROMPTS)]))["stream"])
            except ServerError as exc:  # the load policy's admission: a saturated engine
                if exc.code != "busy":
                    raise
                refused += 1
                sessions.remove(s)
                await s.close()
            await asyncio.sleep(0.5)  # as users arrive: the engine measures each new load
        viewers = [
            await s.watch(st, keep_images=False) for s, st in zip(sessions, streams, strict=True)
        ]
        await asyncio.gather(*(v.wait_frames(24, timeout=30) for v in viewers))
        start = [len(v.frames) for v in viewers]
        stalls0 = [(await s.stats(st))["stalls"] for s, st in zip(sessions, streams, strict=True)]
        await asyncio.sleep(seconds)
        stats = [await s.stats(st) for s, st in zip(sessions, streams, strict=True)]
        dev, fps = [], []
        for v, k in zip(viewers, start, strict=True):
            frames = v.frames[k:]
            t = np.array([f.received for f in frames])
            dev.extend(np.abs(np.diff(t) - 1 / 24))
            fps.append((len(t) - 1) / (t[-1] - t[0]))
        for s, st in zip(sessions, streams, strict=True):
            await s.stop(st)
        return {
            "streams": n,
            "refused": refused,
            "jitter_p99_ms": float(np.percentile(dev, 99) * 1e3),
            "jitter_p50_ms": float(np.percentile(dev, 50) * 1e3),
            "fps": float(np.mean(fps)),
            "stalls": sum(x["stalls"] for x in stats) - sum(stalls0),
            "held_frames": sum(x["held_frames"] for x in stats),
            "realtime_factor": float(np.mean([x["realtime_factor"] for x in stats])),
            "steps": [x.get("steps") for x in stats],  # the load policy's, at the end
            "engine_load": stats[0].get("engine_load"),
        }
    finally:
        for s in sessions:
            await s.close()


async def main(args: argparse.Namespace) -> dict:
    server = None
    url = args.url
    sampling = None  # the in-process server's sampler settings
    if url is None:
        import torch

        from model.sampler import sampling_changes
        from server.app import LiveServer, load_model
        from server.config import ServerConfig

        torch.set_num_threads(1)
        model = load_model(args.model)
        config = ServerConfig(
            grace_seconds=1.0,
            codec=args.codec,
            torch_threads=args.threads,
            solo_threads=args.solo_threads,
            max_batch=args.max_batch,
            degrade=args.degrade,
            **sampling_changes(args),
        )
        server = await LiveServer(config, model).start()
        url = server.ws_url
        sampling = server.model.config.sampler.sampling()
        print(f"in-process server, sampling {sampling}")
    rng = random.Random(0)
    results: dict = {
        "url": url,
        "model": args.model if server else "remote",
        "sampling": sampling,
        "loadavg_before": os.getloadavg(),
    }
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    try:
        await time_to_first_frame(url)  # warm-up (imports, first encoder)
        ttff = [await time_to_first_frame(url) for _ in range(args.runs)]
        results["ttff_s"] = ttff
        print(
            f"time to first frame: median {statistics.median(ttff):.3f} s  "
            f"(min {min(ttff):.3f}, max {max(ttff):.3f}, n={len(ttff)}; target <= 0.5 s)"
        )
        sw, seen, parts = await switch_latencies(url, args.switches, rng)
        results["switch_s"] = sw
        results["switch_seen_s"] = seen
        results["switch_server_ms"] = parts
        print(
            f"prompt switch latency: median {statistics.median(sw):.3f} s  "
            f"(p90 {np.percentile(sw, 90):.3f}, max {max(sw):.3f}, n={len(sw)}; "
            f"generated, not yet read as the new prompt)"
        )
        read = [x for x in seen if x is not None]
        if read:
            print(
                f"prompt switch as a viewer sees it (the evaluator reads the new prompt): "
                f"median {statistics.median(read):.3f} s (p90 {np.percentile(read, 90):.3f}, "
                f"max {max(read):.3f}; {len(seen) - len(read)} of {len(seen)} never read; "
                f"target <= 0.4 s with one stream)"
            )
        ready, shown, total, recache = zip(*parts, strict=True)
        print(
            f"  server side (medians): new chunk ready after {statistics.median(ready):.0f} ms "
            f"(generating it: {statistics.median(total):.0f} ms, of which re-cache "
            f"{statistics.median(recache):.0f} ms), first frame sent after "
            f"{statistics.median(shown):.0f} ms"
        )
        results["concurrent"] = []
        for n in args.streams:
            r = await concurrent(url, n, args.seconds)
            results["concurrent"].append(r)
            print(
                f"{n} stream(s) ({r['refused']} refused busy), {args.seconds:.0f} s: "
                f"jitter p99 {r['jitter_p99_ms']:.1f} ms "
                f"(p50 {r['jitter_p50_ms']:.1f}), {r['fps']:.1f} fps, stalls {r['stalls']}, "
                f"realtime factor {r['realtime_factor']:.2f}, steps {r['steps']}, "
                f"engine load {r['engine_load']}"
            )
    finally:
        if server is not None:
            await server.close()
    results["loadavg_after"] = os.getloadavg()
    print(f"load average {os.getloadavg()[0]:.2f} (includes this benchmark)")
    return results


def parse_args(argv=None) -> argparse.Namespace:
    from model.sampler import add_sampling_options
    from server.thread_choice import default_solo_threads

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="benchmark a running server (default: start one in-process)")
    p.add_argument("--model", default="tiny", help="tiny | random | checkpoint path")
    p.add_argument("--codec", default="vp8", choices=["vp8", "h264"])
    p.add_argument("--runs", type=int, default=5, help="time-to-first-frame repetitions")
    p.add_argument("--switches", type=int, default=10, help="prompt switches to time")
    p.add_argument(
        "--streams",
        type=int,
        nargs="+",
        default=[1, 2, 3],
        help="concurrent stream counts to measure jitter and stalls at",
    )
    p.add_argument("--seconds", type=float, default=10.0, help="seconds per concurrency level")
    p.add_argument("--threads", type=int, default=1, help="the engine's torch threads (default 1)")
    p.add_argument(
        "--solo-threads",
        type=int,
        default=default_solo_threads(),
        help="the engine's torch threads while it runs one stream, where faster (default "
        "%(default)s, as `endless serve`)",
    )
    p.add_argument(
        "--max-batch", type=int, default=4, help="streams batched per forward pass (default 4)"
    )
    p.add_argument(
        "--no-degrade",
        dest="degrade",
        action="store_false",
        help="the in-process server keeps the model's steps however loaded",
    )
    add_sampling_options(p)  # for the in-process server
    p.add_argument("--json", type=Path, help="also write the figures here")
    return p.parse_args(argv)


if __name__ == "__main__":
    import uvloop

    args = parse_args()
    results = uvloop.run(main(args))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
