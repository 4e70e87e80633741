"""Train the 2x upscaler (model/upscale.py) on TinyWorld renders.

    .venv/bin/python ops/train_upscaler.py --minutes 25 --out model/weights/upscale2x.safetensors

Pairs: the input is a 128 x 128 clip as the stream shows it (rendered at 128, then encoded
and decoded by the shipped VAE, so the stage learns to sharpen what the decoder makes); the
target is the same scene rendered at 256 x 256 (the renderer draws any size from the same
seed). Clips are random training clips (never a held-out colour/shape/background triple);
the PSNR printed is on clips of held-out triples, against bicubic upsampling. One thread by
default: the stage is meant to train on a shared CPU in half an hour.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from model.bundle import VideoModel
from model.tinyworld.captions import evaluation_prompts, sample_clip
from model.tinyworld.render import render_clip
from model.upscale import UpscaleNet, UpscalerConfig, bicubic, save_net, to_tensor
from model.vae import frames_to_tensor, tensor_to_frames


@torch.no_grad()
def through_vae(model: VideoModel, frames: np.ndarray) -> np.ndarray:
    """What the stream shows of `frames`: encoded and decoded by the model's VAE."""
    z, _ = model.vae.encode(frames_to_tensor(frames))
    video, _ = model.vae.decode(z)
    return tensor_to_frames(video)


def training_pairs(model: VideoModel, n_clips: int, frames: int, seed: int):
    """(low (N, T, 128, 128, 3), high (N, T, 256, 256, 3)) uint8, random training clips."""
    lows, highs = [], []
    for i in range(n_clips):
        s = seed * 100_003 + i
        low = sample_clip(np.random.default_rng(s), frames, size=128).frames
        high = sample_clip(np.random.default_rng(s), frames, size=256).frames
        lows.append(through_vae(model, low))
        highs.append(high)
    return np.stack(lows), np.stack(highs)


def held_out_pairs(model: VideoModel, n_clips: int, seconds: float, seed: int):
    """The same, on clips of held-out triples (even evaluation prompts)."""
    prompts = evaluation_prompts(2 * n_clips, seed)[::2]
    lows, highs = [], []
    for i, p in enumerate(prompts):
        lows.append(through_vae(model, render_clip(p, seconds, 128, seed=seed + i)))
        highs.append(render_clip(p, seconds, 256, seed=seed + i))
    return lows, highs


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two [-1, 1] tensors (peak-to-peak 2)."""
    mse = F.mse_loss(a.float(), b.float()).item()
    return 10 * math.log10(4.0 / max(mse, 1e-12))


@torch.no_grad()
def validate(net: UpscaleNet, lows, highs) -> tuple[float, float]:
    """(PSNR of the net, PSNR of bicubic) over held-out clips, each upscaled whole."""
    net.eval()
    ours, base = [], []
    for low, high in zip(lows, highs, strict=True):
        x, y = to_tensor(low), to_tensor(high)
        prev = torch.cat([x[:1], x[:-1]])
        ours.append(psnr(net(x, prev).clamp(-1, 1), y))
        base.append(psnr(bicubic(x, 2).clamp(-1, 1), y))
    net.train()
    return float(np.mean(ours)), float(np.mean(base))


def batch(rng, lows, highs, n: int, crop: int):
    """n random (current, previous, target) crops; crop is the input side (even)."""
    cur, prev, tgt = [], [], []
    n_clips, t_len, size = lows.shape[:3]
    for _ in range(n):
        c, t = int(rng.integers(n_clips)), int(rng.integers(t_len))
        y0, x0 = (2 * int(rng.integers((size - crop) // 2 + 1)) for _ in range(2))
        win = np.s_[y0 : y0 + crop, x0 : x0 + crop]
        cur.append(lows[c, t][win])
        prev.append(lows[c, max(t - 1, 0)][win])
        tgt.append(highs[c, t][2 * y0 : 2 * (y0 + crop), 2 * x0 : 2 * (x0 + crop)])
    return (to_tensor(np.stack(a)) for a in (cur, prev, tgt))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="model/weights/upscale2x.safetensors")
    ap.add_argument("--minutes", type=float, default=25.0, help="training time budget")
    ap.add_argument("--clips", type=int, default=240, help="training clips")
    ap.add_argument("--frames", type=int, default=24, help="frames per training clip")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--crop", type=int, default=64, help="input crop side (even)")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--channels", type=int, default=UpscalerConfig.channels)
    ap.add_argument("--blocks", type=int, default=UpscalerConfig.blocks)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    vae_model = VideoModel.load_default(torch.float32)
    t0 = time.time()
    lows, highs = training_pairs(vae_model, args.clips, args.frames, args.seed)
    val_lows, val_highs = held_out_pairs(vae_model, 8, 1.0, 1000 + args.seed)
    print(f"data: {lows.shape[0]} clips x {lows.shape[1]} frames in {time.time() - t0:.0f} s")
    net = UpscaleNet(UpscalerConfig(args.channels, args.blocks, 2))
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    budget = args.minutes * 60
    start, step = time.time(), 0
    while (elapsed := time.time() - start) < budget:
        lr = args.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, elapsed / budget)))
        for group in opt.param_groups:
            group["lr"] = lr
        cur, prev, tgt = batch(rng, lows, highs, args.batch, args.crop)
        loss = F.l1_loss(net(cur, prev), tgt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 500 == 0:
            ours, base = validate(net, val_lows, val_highs)
            print(
                f"step {step} {elapsed / 60:.1f} min loss {loss.item():.4f} lr {lr:.2e} "
                f"held-out PSNR {ours:.2f} dB (bicubic {base:.2f})",
                flush=True,
            )
    ours, base = validate(net, val_lows, val_highs)
    print(f"done: {step} steps, held-out PSNR {ours:.2f} dB (bicubic {base:.2f})")
    save_net(net, args.out, {"steps": str(step), "psnr_held_out": f"{ours:.2f}"})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
