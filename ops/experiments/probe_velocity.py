"""Where a model's hidden state knows how the object moves: linear probes, layer by layer.

    .venv/bin/python ops/experiments/probe_velocity.py --motion bouncing --clips 160
    .venv/bin/python ops/experiments/probe_velocity.py --model runs/vel/model.safetensors

For `--clips` rendered 4-chunk clips of `--motion` (random colour, shape, size and
background; no switch), the DiT runs teacher-forced as in training, [true context |
chunks at noise level SIGMA], and each block's output is kept at the token under the
object in every latent frame of chunks 1-3 (those with a context). A ridge regression
per block and copy (fitted on three clips in four, scored on the fourth) reads the
object's mean velocity in that latent frame: R^2 of each component, how often its sign
is right, and the median angle between the read and the true direction. The context copy
tells how well the model reads the motion it is shown; the noisy copy at sigma 1, how well
the chunk it is about to make knows where to go.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch

from model.bundle import VideoModel
from model.teacher_forcing import TeacherForcingLayout
from model.tinyworld.captions import random_attributes
from model.tinyworld.render import World
from model.tinyworld.spec import MOTIONS, parse_prompt
from model.training.objective import per_frame_tokens
from model.training.pool import latent_track
from model.training.velocity import object_tokens
from model.vae import frames_to_tensor


def render(rng, motion: str, frames: int) -> tuple[np.ndarray, np.ndarray, str]:
    a = random_attributes(rng)
    prompt = f"a {a.size} {a.colour} {a.shape} {motion} over the {a.background}"
    world = World(parse_prompt(prompt).attributes, seed=int(rng.integers(2**31)), size=128)
    track = np.empty((frames, 4), np.float32)
    video = []
    for i in range(frames):
        track[i] = np.concatenate(world.state(i))
        video.append(world.advance())
    return np.stack(video), track, prompt


@torch.no_grad()
def hidden_at_object(model: VideoModel, clips, sigmas) -> dict:
    """{(copy, sigma): [per block (samples, dim)]} at the object's token, chunks 1..3."""
    dit, text = model.dit, model.text
    chunk = model.config.stream.chunk_latent_frames
    kept: list[torch.Tensor] = []
    hooks = [b.register_forward_hook(lambda m, i, o: kept.append(o[0])) for b in dit.blocks]
    x = torch.stack([frames_to_tensor(v)[0] for v, _, _ in clips])
    z, _ = model.vae.encode(x)
    b, _, n, h, w = z.shape
    _, gh, gw = dit.grid(z)
    idx = torch.tensor([[text.indices(parse_prompt(p).attributes)] for _, _, p in clips])
    tokens = per_frame_tokens(model, idx.expand(-1, n // chunk, -1), chunk)
    tokens = torch.cat([tokens, tokens], dim=1)  # the same prompt for both copies
    track = torch.stack([latent_track(t, model.config.vae.time_stride) for _, t, _ in clips])
    token = object_tokens(track, (gh, gw))[:, chunk:]  # (B, frames with a context)
    out = {}
    for sigma in sigmas:
        kept.clear()
        noisy = (1 - sigma) * z + sigma * torch.randn_like(z)
        s = torch.cat([torch.zeros(b, n), torch.full((b, n), sigma)], 1)
        layout = TeacherForcingLayout(n // chunk, chunk * gh * gw)
        dit(torch.cat([z, noisy], 2), s, tokens, torch.cat([torch.arange(n)] * 2), mask=layout)
        copies = [("noisy", n * gh * gw)] + ([("context", 0)] if sigma == sigmas[0] else [])
        for name, offset in copies:
            out[(name, sigma)] = [
                torch.stack([hid[i, offset + token[i]] for i in range(b)]).flatten(0, 1).numpy()
                for hid in kept
            ]
    for hook in hooks:
        hook.remove()
    return out, track[:, chunk:, 2:].flatten(0, 1).numpy()


def ridge_read(x: np.ndarray, y: np.ndarray, test: np.ndarray, lam: float = 0.01):
    """Fit on ~test, score on test: (R^2 per component, sign accuracy, median angle)."""
    mu, sd = x[~test].mean(0), x[~test].std(0) + 1e-6
    xs = (x - mu) / sd
    a, ym = xs[~test], y[~test].mean(0)
    weights = np.linalg.solve(a.T @ a + lam * len(a) * np.eye(a.shape[1]), a.T @ (y[~test] - ym))
    pred, truth = xs[test] @ weights + ym, y[test]
    r2 = 1 - ((pred - truth) ** 2).sum(0) / ((truth - truth.mean(0)) ** 2).sum(0)
    sign = (np.sign(pred) == np.sign(truth)).mean(0)
    turn = np.arctan2(pred[:, 1], pred[:, 0]) - np.arctan2(truth[:, 1], truth[:, 0])
    angle = np.degrees(np.abs(np.angle(np.exp(1j * turn))))
    return r2, sign, float(np.median(angle))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="model/weights/tiny.safetensors")
    ap.add_argument("--motion", default="bouncing", choices=MOTIONS)
    ap.add_argument("--clips", type=int, default=160)
    ap.add_argument("--sigmas", type=float, nargs="+", default=[1.0, 0.75])
    ap.add_argument("--seed", type=int, default=123)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = VideoModel.load(args.model, torch.float32)
    rng = np.random.default_rng(args.seed)
    frames = 4 * model.config.stream.chunk_latent_frames * model.config.vae.time_stride
    feats, targets = {}, []
    for start in range(0, args.clips, 8):
        clips = [render(rng, args.motion, frames) for _ in range(min(8, args.clips - start))]
        part, y = hidden_at_object(model, clips, args.sigmas)
        targets.append(y)
        for key, layers in part.items():
            feats.setdefault(key, [[] for _ in layers])
            for store, x in zip(feats[key], layers, strict=True):
                store.append(x)
    y = np.concatenate(targets)
    per_clip = len(y) // args.clips
    test = (np.arange(len(y)) // per_clip) % 4 == 0
    print(f"{args.motion}: {len(y)} latent frames of {args.clips} clips, {test.sum()} held out")
    for (copy, sigma), layers in feats.items():
        for layer, parts in enumerate(layers):
            r2, sign, angle = ridge_read(np.concatenate(parts), y, test)
            print(
                f"{copy:7s} sigma {sigma:.2f} block {layer}: R2 vx {r2[0]:+.2f} vy {r2[1]:+.2f}"
                f"  sign right {sign[0]:.2f} {sign[1]:.2f}  median angle {angle:5.1f} deg"
            )


if __name__ == "__main__":
    main()
