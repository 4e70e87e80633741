"""Our cached chunk step against what a diffusers user would do, on the CPU.

    .venv/bin/python ops/bench_wan.py                 # tiny random Wan, 10 timed chunks
    .venv/bin/python ops/bench_wan.py --chunks 20 --dim 256 --layers 4

Both run the same tiny random weights (a diffusers `WanTransformer3DModel` built from a
seed, and our WanModel holding its tensors through the diffusers key mapper) and the same
Self-Forcing sampler (4 timesteps, x0 re-noised with fresh noise), chunk by chunk, over a
LongLive-style context of a 3-frame sink and the 6 latest frames:
  * ours: the context's keys/values come from the cache; each step runs the chunk's tokens
    only, and a finished chunk is run once more to cache its keys/values;
  * diffusers: each step re-runs WanTransformer3DModel over the whole window, [sink |
    recent | chunk] (context frames at timestep 0), and keeps the chunk's velocity.
Prints the median milliseconds per chunk of each and their ratio, as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from memory.cache import CacheLayout, ContextCache
from memory.policy import SinkRollingWindow
from model.config import SamplerConfig
from model.dit import WanModel
from model.sampler import FlowSampler
from model.wan.checkpoints import dit_config_from_state
from model.wan.keys import DIFFUSERS

SAMPLER = SamplerConfig(
    mode="x0_renoise", timesteps=(1000, 750, 500, 250), warp_timesteps=True, shift=5.0
)
CHUNK, SINK, WINDOW = 3, 3, 6


def build(args):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(args.seed)
    diff = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=args.heads,
        attention_head_dim=args.dim // args.heads,
        in_channels=16,
        out_channels=16,
        text_dim=args.text_dim,
        freq_dim=64,
        ffn_dim=args.dim * 4,
        num_layers=args.layers,
    ).eval()
    state = DIFFUSERS(diff.state_dict())
    ours = WanModel(dit_config_from_state(state, heads=args.heads)).eval()
    ours.load_state_dict(state, strict=True)
    return diff, ours


def run_ours(ours: WanModel, text, args) -> list[float]:
    h, w = args.latent
    policy = SinkRollingWindow(SINK, WINDOW, margin=0)
    cache = ContextCache(CacheLayout.for_model(ours, 16, h, w, torch.float32), policy)
    sampler = FlowSampler(SAMPLER)
    times = []
    for k in range(args.warmup + args.chunks):
        t0 = time.perf_counter()
        ctx = cache.attn_context(ours)
        n = len(cache.context_frames())
        positions = torch.arange(n, n + CHUNK)

        def velocity(x, sigma, conds, ctx=ctx, positions=positions):
            return ours(x, torch.full((1, CHUNK), sigma), text, positions, ctx=ctx)

        noise = torch.randn(1, 16, CHUNK, h, w, generator=torch.Generator().manual_seed(k))
        latents = sampler.sample(noise, velocity, key=(0, k))
        frames = list(range(cache.head, cache.head + CHUNK))
        _, kvs = ours(latents, torch.zeros(1, CHUNK), text, positions, ctx=ctx, return_kv=True)
        cache.write(frames, latents, kvs)
        cache.advance(CHUNK)
        if k >= args.warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def run_diffusers(diff, text, args) -> list[float]:
    h, w = args.latent
    sampler = FlowSampler(SAMPLER)
    made: list[torch.Tensor] = []  # (1, 16, 1, h, w) per latent frame
    tokens = (h // 2) * (w // 2)
    times = []
    for k in range(args.warmup + args.chunks):
        t0 = time.perf_counter()
        head = len(made)
        keep = sorted(set(range(min(SINK, head))) | set(range(max(0, head - WINDOW), head)))
        context = torch.cat([made[i] for i in keep], dim=2) if keep else None
        n = len(keep)

        def velocity(x, sigma, conds, context=context, n=n):
            window = x if context is None else torch.cat([context, x], dim=2)
            t = torch.cat([torch.zeros(n * tokens), torch.full((CHUNK * tokens,), sigma * 1000)])
            out = diff(window, t[None], text, return_dict=False)[0]
            return out[:, :, n:]

        noise = torch.randn(1, 16, CHUNK, h, w, generator=torch.Generator().manual_seed(k))
        latents = sampler.sample(noise, velocity, key=(0, k))
        made.extend(latents[:, :, i : i + 1] for i in range(CHUNK))
        if k >= args.warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=128, help="denoiser width")
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--text-dim", type=int, default=64)
    p.add_argument("--latent", type=int, nargs=2, default=(16, 16), metavar=("H", "W"))
    p.add_argument("--chunks", type=int, default=10, help="timed chunks (after the warm-up)")
    p.add_argument("--warmup", type=int, default=4, help="untimed chunks first (fill the window)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    diff, ours = build(args)
    text = torch.randn(1, 16, args.text_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ms_ours = round(statistics.median(run_ours(ours, text, args)), 2)
        ms_diff = round(statistics.median(run_diffusers(diff, text, args)), 2)
    out = {
        "ours_ms_per_chunk": ms_ours,
        "diffusers_ms_per_chunk": ms_diff,
        "speedup": round(ms_diff / ms_ours, 2),  # of the figures printed, so they agree
        "chunks": args.chunks,
        "config": {
            "dim": args.dim,
            "layers": args.layers,
            "latent": list(args.latent),
            "chunk": CHUNK,
            "sink": SINK,
            "window": WINDOW,
            "steps": SAMPLER.steps,
        },
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
