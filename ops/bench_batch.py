"""Batched engine benchmark: N streams' chunks one after another vs denoised together.

    .venv/bin/python ops/bench_batch.py                       # shipped weights, 1-4 streams
    .venv/bin/python ops/bench_batch.py --streams 1 4 --threads 1 2 --rounds 8

For each thread count and stream count: the median time of one round (every stream makes
one chunk) made stream by stream (`Stream.next_chunk`) and with the batched executor
(`memory.batch`), the ratio of the two measured in the same run, and the realtime factor
of a round (seconds of video made per second: N streams x a chunk's duration / round time).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from memory.batch import commit_together, denoise_together
from memory.stream import Stream
from model.bundle import DEFAULT_WEIGHTS, VideoModel
from model.precision import add_dtype_option, resolve_dtype
from model.sampler import add_sampling_options, use_sampling_options

PROMPTS = [
    "a big red circle bouncing over the ocean",
    "a small cyan ring moving left in the night",
    "a big yellow triangle circling in the desert",
    "a small green square standing still over the snow",
    "a big blue ring moving right in the snow",
]


def one_by_one(streams: list[Stream]) -> None:
    for s in streams:
        s.next_chunk()


def batched(streams: list[Stream]) -> None:
    plans = [s.plan() for s in streams]
    jobs = list(zip(streams, plans, strict=True))
    commit_together(jobs, denoise_together(jobs))


def round_times(model, n: int, run, rounds: int, warm: int) -> list[float]:
    streams = [Stream(model, PROMPTS[i % len(PROMPTS)], seed=i) for i in range(n)]
    times = []
    for r in range(warm + rounds):
        t = time.perf_counter()
        run(streams)
        if r >= warm:
            times.append(time.perf_counter() - t)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", type=int, nargs="+", default=[1, 2, 3, 4])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--warm", type=int, default=4, help="rounds not timed (the window fills)")
    add_dtype_option(p)
    add_sampling_options(p)
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args()
    dtype = resolve_dtype(args.dtype)
    if DEFAULT_WEIGHTS.is_file():
        model = VideoModel.load_default(dtype)
    else:
        model = VideoModel.from_seed(0, "tiny", dtype=dtype)
    use_sampling_options(model, args)
    sc = model.config.stream
    chunk_s = sc.chunk_latent_frames * model.config.vae.time_stride / sc.fps
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; chunk {chunk_s}s")
    rows = []
    with torch.inference_mode():
        for threads in args.threads:
            torch.set_num_threads(threads)
            for n in args.streams:
                seq = statistics.median(round_times(model, n, one_by_one, args.rounds, args.warm))
                bat = statistics.median(round_times(model, n, batched, args.rounds, args.warm))
                row = {
                    "threads": threads,
                    "streams": n,
                    "one_by_one_ms": seq * 1e3,
                    "batched_ms": bat * 1e3,
                    "speedup": seq / bat,
                    "realtime_one_by_one": n * chunk_s / seq,
                    "realtime_batched": n * chunk_s / bat,
                }
                rows.append(row)
                print(
                    f"threads {threads} streams {n}: round {seq * 1e3:.0f} ms one by one, "
                    f"{bat * 1e3:.0f} ms batched (x{seq / bat:.2f}); realtime factor "
                    f"{row['realtime_one_by_one']:.2f} -> {row['realtime_batched']:.2f}",
                    flush=True,
                )
    print(f"load average {os.getloadavg()[0]:.2f} after")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
