"""Train the causal 3D VAE on TinyWorld clips rendered on the fly. Resumable.

    .venv/bin/python ops/train_vae.py --out runs/vae --minutes 40

Writes runs/vae/last.safetensors (weights + optimizer step in metadata) every
--save-every steps and resumes from it. At the end it measures per-channel latent
statistics (so the DiT sees ~N(0,1) latents) and stores them in the VAE's buffers.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from model.checkpoint import load_strict, read_checkpoint, save_checkpoint
from model.config import preset
from model.tinyworld.captions import sample_clip
from model.vae import CausalVAE


def batch(rng: np.random.Generator, n: int, frames: int, size: int) -> torch.Tensor:
    clips = [sample_clip(rng, frames, size=size, switch_prob=0.5).frames for _ in range(n)]
    x = torch.from_numpy(np.stack(clips))  # (B, T, H, W, 3) uint8
    return x.permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0  # (B, 3, T, H, W)


def object_weight(x: torch.Tensor, weight: float) -> torch.Tensor:
    """Per-pixel loss weight: 1 on background, 1 + weight on and around pixels that stand
    out from their row's median colour (the object, a few % of the frame, decides every
    evaluator read: its colour, its outline, a ring's hole)."""
    median = x.median(dim=-1, keepdim=True).values  # (B, 3, T, H, 1)
    stands_out = ((x - median).abs().amax(dim=1) > 0.35).float()  # (B, T, H, W)
    # dilate, so the pixels around and inside the object (a ring's hole) count as much
    near = F.max_pool2d(stands_out, kernel_size=9, stride=1, padding=4)
    return 1.0 + weight * near.unsqueeze(1)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = F.mse_loss(a.float().clamp(-1, 1), b.float()).item()
    return 10 * math.log10(4.0 / max(mse, 1e-10))


@torch.no_grad()
def latent_stats(vae: CausalVAE, rng, size: int, n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    zs = []
    for _ in range(n // 4):
        mean, _, _ = vae.encode_moments(batch(rng, 4, 24, size))
        zs.append(mean.transpose(0, 1).reshape(mean.shape[1], -1))
    z = torch.cat(zs, dim=1)
    return z.mean(dim=1), z.std(dim=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--out", default="runs/vae")
    ap.add_argument("--minutes", type=float, default=30.0, help="wall-clock budget this run")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--kl", type=float, default=1e-6)
    ap.add_argument("--object-weight", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--save-every", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = preset(args.preset)
    size = cfg.stream.height
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "last.safetensors"

    torch.manual_seed(args.seed)
    vae = CausalVAE(cfg.vae)
    opt = torch.optim.AdamW(vae.parameters(), lr=args.lr, weight_decay=0.0, betas=(0.9, 0.99))
    step = 0
    if ckpt.exists():
        _, tensors, meta = read_checkpoint(ckpt)
        load_strict(vae, {k: v for k, v in tensors.items() if not k.startswith("opt.")}, str(ckpt))
        step = int(meta.get("step", 0))
        opt_path = out / "opt.pt"
        if opt_path.exists():
            opt.load_state_dict(torch.load(opt_path))
        print(f"resumed at step {step}")
    rng = np.random.default_rng(args.seed + step)
    log = open(out / "log.jsonl", "a")
    t_end = time.time() + args.minutes * 60
    losses = []
    while time.time() < t_end:
        x = batch(rng, args.batch, args.frames, size)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mean, logvar, _ = vae.encode_moments(x)
            z = mean + torch.randn_like(mean) * torch.exp(0.5 * logvar)
            rec, _ = vae.decode_raw(z)
        rec = rec.float()
        w = object_weight(x, args.object_weight)
        l1 = ((rec - x).abs() * w).mean()
        mse = ((rec - x).pow(2) * w).mean()
        kl = 0.5 * (mean.float().pow(2) + logvar.float().exp() - 1 - logvar.float()).mean()
        loss = l1 + mse + args.kl * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        for g in opt.param_groups:  # short warmup, then constant
            g["lr"] = args.lr * min(1.0, (step + 1) / 100)
        opt.step()
        step += 1
        losses.append(loss.item())
        if step % 20 == 0:
            rec_psnr = psnr(rec.detach(), x)
            rec_msg = {
                "step": step,
                "loss": float(np.mean(losses)),
                "psnr": rec_psnr,
                "kl": kl.item(),
                "time": time.time(),
            }
            print(json.dumps(rec_msg), flush=True)
            log.write(json.dumps(rec_msg) + "\n")
            log.flush()
            losses = []
        if step % args.save_every == 0:
            save(vae, cfg, ckpt, step, opt, out)
    vae.latent_mean.zero_()
    vae.latent_std.fill_(1.0)
    mean, std = latent_stats(vae, np.random.default_rng(1234), size)
    vae.latent_mean.copy_(mean)
    vae.latent_std.copy_(std)
    print("latent mean", mean.numpy().round(3), "std", std.numpy().round(3))
    save(vae, cfg, ckpt, step, opt, out)


def save(vae, cfg, path, step, opt, out) -> None:
    save_checkpoint(path, vae.state_dict(), cfg, {"step": str(step), "part": "vae"})
    torch.save(opt.state_dict(), out / "opt.pt")


if __name__ == "__main__":
    main()
