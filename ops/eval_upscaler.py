"""The 2x upscaling stage, measured against the renderer's 256 x 256 truth, beside bicubic.

    .venv/bin/python ops/eval_upscaler.py --clips 12 --json runs/upscaler.json

Clips are scenes of held-out colour/shape/background triples (the stage was trained on
the others). For each:
- reconstruction: the scene rendered at 128, through the shipped VAE (what a stream shows
  of it), upscaled chunk by chunk (12 frames, state carried) by the learned stage and by
  bicubic, against the scene rendered at 256: PSNR, and the evaluator's adherence at 256;
- generated: the shipped model's own stream under the scene's prompt at 128, upscaled
  the same way: the evaluator's adherence at 128, at 256 after the learned stage and after
  bicubic (no truth to compare pixels with: the model's scene is its own);
- seams: the mean absolute frame-to-frame difference at chunk boundaries over the same
  within chunks (1.0: no seam), at 128 and after each upscaler, for the generated and the
  reconstructed clips, and for the 256 truth itself.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np
import torch

from memory.stream import Stream
from model.bundle import VideoModel
from model.precision import resolve_dtype
from model.tinyworld.captions import evaluation_prompts
from model.tinyworld.evaluate import evaluate_frames
from model.tinyworld.render import render_clip
from model.upscale import BicubicUpscaler, LearnedUpscaler2x
from ops.train_upscaler import through_vae

CHUNK = 12


def chunked(upscaler, frames: np.ndarray) -> np.ndarray:
    state, out = None, []
    for i in range(0, len(frames), CHUNK):
        part, state = upscaler.upscale(frames[i : i + CHUNK], state)
        out.append(part)
    return np.concatenate(out)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return 10 * math.log10(255.0**2 / max(mse, 1e-12))


def seam_ratio(frames: np.ndarray) -> float:
    """Mean |f_t - f_t-1| where t starts a chunk, over the same where it does not."""
    diff = np.abs(np.diff(frames.astype(np.int16), axis=0)).mean(axis=(1, 2, 3))  # t = 1..
    t = np.arange(1, len(frames))
    at = diff[t % CHUNK == 0]
    within = diff[t % CHUNK != 0]
    return float(at.mean() / max(within.mean(), 1e-9))


def adherence(frames: np.ndarray, prompt: str) -> float | None:
    report = evaluate_frames(list(frames), [(0.0, prompt)], fps=24, chunk_frames=CHUNK)
    return report.adherence["all"]


def mean(values) -> float:
    return float(np.mean([v for v in values if v is not None]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="model/weights/tiny.safetensors")
    ap.add_argument("--upscaler", default="model/weights/upscale2x.safetensors")
    ap.add_argument("--clips", type=int, default=12)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    model = VideoModel.load(args.model, resolve_dtype("bf16"))
    vae = VideoModel.load(args.model, torch.float32)
    stages = {"learned": LearnedUpscaler2x.load(args.upscaler), "bicubic": BicubicUpscaler(2)}
    prompts = evaluation_prompts(2 * args.clips, args.seed)[::2]  # the held-out ones
    rows = []
    for i, p in enumerate(prompts):
        seed = 500 + args.seed + i
        truth = render_clip(p, args.seconds, 256, seed=seed)
        shown = through_vae(vae, render_clip(p, args.seconds, 128, seed=seed))
        stream = Stream(model, p, seed=seed)
        n = round(args.seconds * stream.fps) // stream.frames_per_chunk
        made = np.concatenate([stream.next_chunk() for _ in range(n)])
        row = {
            "prompt": p,
            "truth_256_adherence": adherence(truth, p),
            "generated_128_adherence": adherence(made, p),
            "generated_128_seam_ratio": seam_ratio(made),
            "reconstruction_128_seam_ratio": seam_ratio(shown),
            "truth_256_seam_ratio": seam_ratio(truth),
        }
        for name, stage in stages.items():
            up = chunked(stage, shown)
            gen = chunked(stage, made)
            row[f"{name}_psnr_db"] = psnr(up, truth)
            row[f"{name}_reconstruction_256_adherence"] = adherence(up, p)
            row[f"{name}_generated_256_adherence"] = adherence(gen, p)
            row[f"{name}_generated_256_seam_ratio"] = seam_ratio(gen)
            row[f"{name}_reconstruction_256_seam_ratio"] = seam_ratio(up)
        rows.append(row)
        print(json.dumps(row), flush=True)
    keys = [k for k in rows[0] if k != "prompt"]
    result = {
        "clips": len(rows),
        "seconds": args.seconds,
        **{k: round(mean(r[k] for r in rows), 4) for k in keys},
        "eval_seconds": round(time.time() - t0, 1),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result | {"per_clip": rows}, f, indent=2)


if __name__ == "__main__":
    main()
