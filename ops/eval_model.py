"""Quality of a model, measured by the TinyWorld evaluator on generated video.

    .venv/bin/python ops/eval_model.py --model model/weights/tiny.safetensors
    .venv/bin/python ops/eval_model.py --model runs/dit/model.safetensors --prompts 50 --long 10

Prompt set: `--prompts` full prompts, half of them on held-out (colour, shape, background)
triples. Each becomes a clip of `--seconds` with a switch halfway to a prompt that changes
1-3 attributes. Long horizon: one `--long`-minute stream cycling three prompts every 20 s,
scored minute by minute (adherence per attribute, mean brightness); the first and last
minute are compared (the last one may be partial when `--long` is not whole).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np
import torch

from memory.stream import follow_timeline
from model.bundle import VideoModel
from model.precision import add_dtype_option, dtype_name, resolve_dtype
from model.sampler import add_sampling_options, use_sampling_options
from model.tinyworld.captions import evaluation_prompts, random_switch
from model.tinyworld.evaluate import (
    adherence_by_value,
    evaluate_frames,
    merge_confusion,
    misreadings,
    weakest_values,
)
from model.tinyworld.spec import parse_prompt
from model.tinyworld.steadiness import object_track, stutter


def pooled(parts: list[tuple[dict[str, float | None], int]]) -> dict[str, float | None]:
    """Rates of several (rates, chunk count) parts pooled into one, weighted by count."""
    out = {}
    for name in sorted(set().union(*(rates.keys() for rates, _ in parts))):
        pairs = [(rates[name], n) for rates, n in parts if rates.get(name) is not None and n]
        total = sum(n for _, n in pairs)
        out[name] = sum(v * n for v, n in pairs) / total if total else None
    return out


def weighted(reports, key: str, count: str) -> dict[str, float | None]:
    return pooled([(getattr(r, key), getattr(r, count)) for r in reports])


def by_chunks_since_prompt(reports) -> list[dict[str, float | None]]:
    """Adherence of the i-th chunk under a prompt (0: the first after a start or a switch),
    over all reports: where in a prompt's life the model errs."""
    depth = max((len(r.chunks_since_prompt) for r in reports), default=0)
    out = []
    for i in range(depth):
        parts = [
            (r.adherence_since_prompt[i], r.chunks_since_prompt[i])
            for r in reports
            if i < len(r.chunks_since_prompt)
        ]
        out.append(pooled(parts) | {"chunks": sum(n for _, n in parts)})
    return out


def prompt_set(n: int, seconds: float, seed: int):
    rng = np.random.default_rng(seed)
    sets = []
    for p in evaluation_prompts(n, seed):
        new = random_switch(rng, parse_prompt(p).attributes)
        sets.append([(0.0, p), (seconds / 2, new.caption())])
    return sets


def short_clips(model, args) -> dict:
    reports, tracks = [], []
    for i, timeline in enumerate(prompt_set(args.prompts, args.seconds, args.seed)):
        frames = list(follow_timeline(model, timeline, args.seconds, seed=args.seed + i))
        reports.append(evaluate_frames(frames, timeline, fps=24, chunk_frames=12))
        tracks.append(object_track(frames))
    switches = [s for r in reports for s in r.switches]
    confusion = merge_confusion(r.confusion for r in reports)
    visible = [s.chunks_to_visible for s in switches]
    jumps = [s.position_jump for s in switches if s.position_jump is not None]
    return {
        "clips": len(reports),
        "adherence": weighted(reports, "adherence", "chunks_scored"),
        "held_out": weighted(reports, "held_out", "chunks_held_out"),
        "seen": weighted(reports, "seen", "chunks_seen"),
        "switches": len(switches),
        "switch_visible_within_2_chunks": (
            sum(1 for v in visible if v is not None and v <= 2) / max(1, len(visible))
        ),
        "switch_position_jump_median_fw": statistics.median(jumps) if jumps else None,
        "switch_position_jumps_measured": len(jumps),
        "most_misread": misreadings(confusion),
        "confusion": confusion,
        "adherence_by_value": adherence_by_value(confusion),
        "weakest_values": weakest_values(confusion),
        "adherence_since_prompt": by_chunks_since_prompt(reports),
        # the object's step across latent-frame boundaries / within them (truth: 1.0)
        "stutter": stutter(tracks, model.config.vae.time_stride),
    }


def long_horizon(model, args) -> dict:
    prompts = evaluation_prompts(3, args.seed + 100)
    seconds = args.long * 60
    timeline = [(t, prompts[(t // 20) % 3]) for t in range(0, int(seconds), 20)]
    frames = follow_timeline(model, timeline, seconds, seed=args.seed)
    whole = evaluate_frames(frames, timeline, fps=24, chunk_frames=12)
    per_minute = whole.adherence_per_minute
    b = whole.brightness_per_minute
    return {
        "minutes": args.long,
        "adherence_first_minute": per_minute[0]["all"],
        "adherence_last_minute": per_minute[-1]["all"],
        "adherence_whole": whole.adherence.get("all"),
        "per_minute": per_minute,  # every attribute, minute by minute
        "brightness_per_minute": b,
        "brightness_drift": abs(b[-1] - b[0]) / max(b[0], 1e-9) if len(b) > 1 else None,
        "adherence_since_prompt": by_chunks_since_prompt([whole]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="model/weights/tiny.safetensors")
    ap.add_argument("--prompts", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--long", type=float, default=0.0, help="minutes of the long stream (0: skip)")
    add_sampling_options(ap)
    ap.add_argument("--seed", type=int, default=0)
    # bf16 by default, not "auto": figures that do not depend on the machine's CPU
    add_dtype_option(ap, default="bf16")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = VideoModel.load(args.model, resolve_dtype(args.dtype))
    use_sampling_options(model, args)
    t0 = time.time()
    sampler = model.config.sampler
    result = {
        "model": args.model,
        "dtype": dtype_name(model.dtype),
        **sampler.sampling(),
    }
    if args.prompts:
        result["short"] = short_clips(model, args)
    if args.long:
        result["long"] = long_horizon(model, args)
    result["eval_seconds"] = round(time.time() - t0, 1)
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
