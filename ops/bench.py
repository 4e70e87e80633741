"""Engine benchmark: per-stage chunk timings, realtime factor, flat memory, achieved GFLOP/s.

    .venv/bin/python ops/bench.py                 # tiny preset, 30 minutes of video
    .venv/bin/python ops/bench.py --minutes 2     # quicker
    .venv/bin/python ops/bench.py --minutes 2 --guidance 3   # the cost of CFG (batch of 2)
    .venv/bin/python ops/bench.py --minutes 1 --batches 1 2 4 8   # batched-step chunks/s
    .venv/bin/python ops/bench.py --minutes 1 --upscale 2 --batches  # with the 2x stage

Prints medians over all chunks, and over the guided chunks after each start and switch
(what a prompt switch waits for) and the others; RSS and cache bytes at minute 1 and at
the last minute of generated video (the memory of an endless stream must not grow); the
denoiser's achieved GFLOP/s (FLOPs counted by torch's FlopCounterMode) next to the bf16
and fp32 matmul peaks measured in this same run. The engine runs in the dtype the
renderer and the server pick on this machine (`--dtype auto`: bf16 on a GPU or a CPU with
AMX, else fp32); `--dtype bf16` or `--dtype fp32` forces one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from memory.stream import Stream
from model.bundle import DEFAULT_WEIGHTS, VideoModel
from model.precision import add_dtype_option, dtype_name, resolve_dtype
from model.sampler import add_sampling_options, use_sampling_options
from model.upscale import add_upscale_option, resolve_upscaler

PROMPTS = [
    "a big red circle bouncing over the ocean",
    "a small cyan ring moving left in the night",
    "a big yellow triangle circling in the desert",
    "a small green square standing still over the snow",
]


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def matmul_peak(dtype=torch.bfloat16, n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e9


def denoise_flops(stream: Stream) -> float:
    plan = stream.plan()
    with FlopCounterMode(display=False) as counter:
        stream.denoise(plan)
    return counter.get_total_flops()


def batched_throughput(model: VideoModel, sizes: list[int], rounds: int = 4) -> dict:
    """Chunks/s of the batched step (memory/batch.py) at each batch size, beside the same
    streams made one at a time, measured in this run (medians of `rounds` rounds)."""
    from bench_batch import batched, one_by_one, round_times

    out = {}
    for n in sizes:
        seq = statistics.median(round_times(model, n, one_by_one, rounds, warm=3))
        bat = statistics.median(round_times(model, n, batched, rounds, warm=3))
        out[n] = {"one_at_a_time": round(n / seq, 2), "batched": round(n / bat, 2)}
        print(f"batch {n}: {n / seq:.2f} chunks/s one at a time, {n / bat:.2f} batched", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0, help="minutes of video to generate")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--model", default=None, help="checkpoint (default: shipped tiny weights)")
    ap.add_argument("--switch-every", type=float, default=20.0, help="seconds between prompts")
    add_sampling_options(ap)
    add_dtype_option(ap)
    ap.add_argument(
        "--batches",
        type=int,
        nargs="*",
        default=[1, 2, 4, 8],
        help="batch sizes whose batched-step throughput is measured beside one-at-a-time "
        "(ops/bench_batch.py; none: skip)",
    )
    add_upscale_option(ap)
    ap.add_argument("--json", help="write the figures here too")
    args = ap.parse_args()
    if args.minutes < 1:
        ap.error("--minutes must be at least 1: memory is sampled once a minute of video")
    torch.set_num_threads(args.threads)
    path = args.model or (DEFAULT_WEIGHTS if DEFAULT_WEIGHTS.exists() else None)
    dtype = resolve_dtype(args.dtype)
    model = VideoModel.load(path, dtype) if path else VideoModel.from_seed(0, "tiny", dtype)
    use_sampling_options(model, args)
    stream = Stream(model, PROMPTS[0], seed=0, upscaler=resolve_upscaler(args.upscale))
    names = ("plan", "recache", "denoise", "cache", "decode", "total")
    names += ("upscale",) if args.upscale > 1 else ()
    fpc, fps = stream.frames_per_chunk, stream.fps
    chunks = int(args.minutes * 60 * fps / fpc)
    minute = 60 * fps // fpc
    switch_every = max(1, int(args.switch_every * fps / fpc))
    stages: dict[str, list[float]] = {}
    by_guidance: dict[bool, list[float]] = {True: [], False: []}  # chunk ms, guided or not
    memory = {}
    t_start = time.perf_counter()
    for k in range(chunks):
        if k and k % switch_every == 0:
            t = time.perf_counter()
            stream.set_prompt(PROMPTS[(k // switch_every) % len(PROMPTS)])
            stages.setdefault("text", []).append((time.perf_counter() - t) * 1e3)
        guided = stream.guided(k)
        stream.next_chunk()
        for name in names:
            stages.setdefault(name, []).append(stream.stats.ms[name])
        if k:  # chunk 0 also pays for the warm-up
            by_guidance[guided].append(stream.stats.ms["total"])
        if (k + 1) % minute == 0:
            m = (k + 1) // minute
            memory[m] = {"rss_mb": rss_mb(), "cache_bytes": stream.cache.nbytes}
            if m == 1 or m % 5 == 0:
                print(
                    f"minute {m}: rss {memory[m]['rss_mb']:.1f} MB, cache "
                    f"{memory[m]['cache_bytes']} B",
                    flush=True,
                )
    wall = time.perf_counter() - t_start
    video = chunks * fpc / fps
    med = {k: statistics.median(v) for k, v in stages.items()}
    flops = denoise_flops(stream)
    peak = matmul_peak()
    peak_fp32 = matmul_peak(torch.float32)
    achieved = flops / (med["denoise"] / 1e3) / 1e9
    first, last = memory[min(memory)], memory[max(memory)]
    result = {
        "model": str(path or "random:tiny"),
        "threads": args.threads,
        "dtype": dtype_name(dtype),
        **model.config.sampler.sampling(),
        "frames_per_chunk": fpc,
        "size": f"{stream.out_width}x{stream.out_height}",
        "upscale": args.upscale,
        "chunks": chunks,
        "median_ms": {k: round(v, 2) for k, v in med.items()},
        # what a switch waits for (the guided chunks after it) against the other chunks
        "median_ms_guided_chunk": round(statistics.median(by_guidance[True] or [0.0]), 2),
        "median_ms_unguided_chunk": round(statistics.median(by_guidance[False] or [0.0]), 2),
        "realtime_factor": round(video / wall, 2),
        "realtime_factor_median_chunk": round(fpc / fps / (med["total"] / 1e3), 2),
        "rss_mb_minute_1": round(first["rss_mb"], 1),
        f"rss_mb_minute_{max(memory)}": round(last["rss_mb"], 1),
        "rss_growth_mb": round(last["rss_mb"] - first["rss_mb"], 2),
        "cache_bytes_minute_1": first["cache_bytes"],
        f"cache_bytes_minute_{max(memory)}": last["cache_bytes"],
        "denoise_gflop_per_chunk": round(flops / 1e9, 2),
        "denoise_gflops_achieved": round(achieved, 1),
        "bf16_matmul_peak_gflops": round(peak, 1),
        "fp32_matmul_peak_gflops": round(peak_fp32, 1),
    }
    if args.batches:
        result["batched_chunks_per_s"] = batched_throughput(model, args.batches)
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
