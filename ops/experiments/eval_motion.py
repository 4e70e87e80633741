"""How a model draws one motion, chunk by chunk, beside the renderer's truth.

    .venv/bin/python ops/experiments/eval_motion.py --motion bouncing --clips 12
    .venv/bin/python ops/experiments/eval_motion.py --motion circling \
        --model runs/dit/model.safetensors

For `--clips` prompts that say `--motion` (random colour, shape, size and background,
never a held-out triple), it generates a clip of `--seconds` with the model and renders
the same prompt, reads the object's track in both, and prints per chunk the fitted
velocity (fw/s) and the evaluator's reading of the motion. The summary compares the two:
the share of chunks read as asked, the median speed, and the median angle the direction
turns from one chunk to the next (a bounce turns only at an edge, circling 45 degrees per
chunk). The evaluator says how often a motion is misread; this says what is drawn instead.

With `--true-context K` the stream's first K chunks are the renderer's truth (encoded by
the model's VAE and cached as if the model had made them) and the model makes the rest;
only its own chunks are scored, with the angle between their velocity and the truth's.
A motion the model keeps from a true path but loses from its own drifts through exposure
bias (its own errors compound); one it loses from a true path too, it does not know.
With `--unsaid-motion` the model's prompt leaves the motion out (the renderer still draws
it): from a true context, how far the model continues a motion it is shown but not told.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch

from memory.stream import continue_from, follow_timeline
from model.bundle import VideoModel
from model.precision import add_dtype_option, resolve_dtype
from model.sampler import add_sampling_options, use_sampling_options
from model.tinyworld.captions import random_attributes
from model.tinyworld.reading import read_motion
from model.tinyworld.render import render_clip
from model.tinyworld.spec import MOTIONS
from model.tinyworld.steadiness import angles_between, chunk_velocities, object_track, turns

CHUNK_FRAMES, FPS = 12, 24  # the evaluator's chunk


def chunk_reads(track: np.ndarray) -> list[str]:
    """The evaluator's motion reading of each whole chunk of a track ('none' if unread)."""
    t = np.arange(CHUNK_FRAMES) / FPS
    out = []
    for k in range(len(track) // CHUNK_FRAMES):
        seg = track[k * CHUNK_FRAMES : (k + 1) * CHUNK_FRAMES]
        found = ~np.isnan(seg[:, 0])
        m = read_motion(seg[found], t[found]) if found.sum() >= 3 else -1
        out.append(MOTIONS[m] if m >= 0 else "none")
    return out


def describe(
    track: np.ndarray, motion: str, truth: np.ndarray | None = None, skip: int = 0
) -> dict:
    """Per-chunk velocity and reading of a track; the share read as `motion`, speeds,
    turns and (given the truth's track) angles to the truth's velocity, all scored from
    chunk `skip` on (the turn into chunk `skip` included)."""
    v = chunk_velocities(track, CHUNK_FRAMES, FPS)
    reads = chunk_reads(track)
    d = {
        "velocities": [[round(float(a), 3), round(float(b), 3)] for a, b in v],
        "reads": reads,
        "scored_from": skip,
        "read_as_asked": sum(r == motion for r in reads[skip:]) / max(1, len(reads) - skip),
        "speeds": np.hypot(*v[skip:].T).tolist(),
        "turns": turns(v[max(0, skip - 1) :]).tolist(),
    }
    if truth is not None:
        tv = chunk_velocities(truth, CHUNK_FRAMES, FPS)
        d["angles_to_truth"] = angles_between(v[skip:], tv[skip : len(v)]).tolist()
    return d


def median(values: list[float]) -> float | None:
    a = np.asarray(values, float)
    a = a[~np.isnan(a)]
    return float(np.median(a)) if len(a) else None


def summary(clips: list[dict]) -> dict:
    out = {
        "read_as_asked": float(np.mean([c["read_as_asked"] for c in clips])),
        "median_speed_fw_s": median([s for c in clips for s in c["speeds"]]),
        "median_turn_deg": median([t for c in clips for t in c["turns"]]),
    }
    if all("angles_to_truth" in c for c in clips):
        out["median_angle_to_truth_deg"] = median([a for c in clips for a in c["angles_to_truth"]])
    return out


def line(name: str, d: dict) -> str:
    chunks = [
        f"{vx:+.2f},{vy:+.2f}:{r.split()[-1][:5]}"
        for (vx, vy), r in zip(d["velocities"], d["reads"], strict=True)
    ]
    k = d.get("scored_from", 0)
    if k:
        chunks.insert(k, "|")  # the true context before, the model's own chunks after
    return f"  {name:9s} " + " ".join(chunks)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="model/weights/tiny.safetensors")
    ap.add_argument("--motion", default="bouncing", choices=MOTIONS)
    ap.add_argument("--clips", type=int, default=12)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument(
        "--true-context",
        type=int,
        default=0,
        metavar="K",
        help="start each stream from K chunks of the renderer's truth (no warm-up) and "
        "score only the chunks the model makes after them (default 0: it makes all)",
    )
    ap.add_argument(
        "--unsaid-motion",
        action="store_true",
        help="leave the motion out of the model's prompt (with --true-context: does it "
        "continue the motion its context shows?)",
    )
    add_sampling_options(ap)
    ap.add_argument("--seed", type=int, default=0)
    add_dtype_option(ap, default="bf16")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", help="also write every track's figures here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = VideoModel.load(args.model, resolve_dtype(args.dtype))
    use_sampling_options(model, args)
    if args.true_context:
        model.with_sampler(warmup_chunks=0)
    size = model.config.stream.height
    rng = np.random.default_rng(args.seed)
    made, truth = [], []
    for i in range(args.clips):
        attrs = random_attributes(rng)
        prompt = (
            f"a {attrs.size} {attrs.colour} {attrs.shape} {args.motion} over the {attrs.background}"
        )
        rendered = render_clip(prompt, args.seconds, size=size, seed=args.seed + i)
        told = prompt.replace(f" {args.motion}", "") if args.unsaid_motion else prompt
        k = args.true_context
        if k:
            frames = continue_from(model, told, rendered, k, seed=args.seed + i)
        else:
            frames = follow_timeline(model, [(0.0, told)], args.seconds, seed=args.seed + i)
        true_track = object_track(rendered)
        made.append(describe(object_track(frames), args.motion, true_track if k else None, k))
        truth.append(describe(true_track, args.motion, skip=k))
        print(prompt)
        print(line("model", made[-1]))
        print(line("rendered", truth[-1]), flush=True)
    result = {
        "model": args.model,
        "motion": args.motion,
        "clips": args.clips,
        "true_context": args.true_context,
        "unsaid_motion": args.unsaid_motion,
        **model.config.sampler.sampling(),
        "model_summary": summary(made),
        "rendered_summary": summary(truth),
    }
    print(json.dumps({k: result[k] for k in ("motion", "model_summary", "rendered_summary")}))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**result, "model_clips": made, "rendered_clips": truth}, f, indent=2)


if __name__ == "__main__":
    main()
