"""Fine-tune only the VAE decoder of a full model checkpoint, so that generated latents
decode into smooth motion. Resumable; the encoder, its latent statistics and the DiT are
kept as they are, so the DiT's latent space does not move.

    .venv/bin/python ops/experiments/tune_decoder.py --init model/weights/tiny.safetensors \
        --out runs/dec --minutes 40

Why: the VAE packs 4 frames into one latent frame, and its decoder drew the object almost
still within those 4 frames and then jumped at the next latent frame (the object's
frame-to-frame speed across latent-frame boundaries was 3.5x its speed within them on
reconstructions, 4.1x on generated video, 1.0 on rendered truth). The evaluator reads
motion from the object's track, and that staircase made bouncing, circling and the
straight motions hard to tell apart. Two terms aim at it: an L1 loss on frame-to-frame
differences around the object (motion is what changes between frames), and noise on
the latents (the DiT's latents are not the encoder's; a decoder that must not rely on
their finest detail takes the path from its causal context of earlier latent frames).

Writes OUT/last.safetensors (a whole model: drop-in for `--model`, and for
ops/ship_model.py) and OUT/opt.pt every --save-every steps, and resumes from them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from model.bundle import VideoModel  # noqa: E402
from model.checkpoint import read_checkpoint  # noqa: E402
from ops.train_vae import batch, object_weight, psnr  # noqa: E402


def decoder_loss(rec: torch.Tensor, x: torch.Tensor, w: torch.Tensor, motion_weight: float):
    """Object-weighted L1 + MSE on frames, plus `motion_weight` x object-weighted L1 on
    frame-to-frame differences (where the object moves)."""
    l1 = ((rec - x).abs() * w).mean()
    mse = ((rec - x).pow(2) * w).mean()
    if motion_weight <= 0:
        return l1 + mse
    d_rec = rec[:, :, 1:] - rec[:, :, :-1]
    d_x = x[:, :, 1:] - x[:, :, :-1]
    w_d = torch.maximum(w[:, :, 1:], w[:, :, :-1])
    return l1 + mse + motion_weight * ((d_rec - d_x).abs() * w_d).mean()


def noisy_latents(z: torch.Tensor, sigma_max: float, gen: torch.Generator) -> torch.Tensor:
    """z + sigma * noise, sigma uniform in [0, sigma_max] per clip (normalised latents)."""
    if sigma_max <= 0:
        return z
    sigma = torch.rand(z.shape[0], 1, 1, 1, 1, generator=gen) * sigma_max
    return z + sigma * torch.randn(z.shape, generator=gen)


def log_progress(log, msg: dict) -> None:
    """Print a JSON progress line (with the time) and append it to the run's log."""
    line = json.dumps(msg | {"time": time.time()})
    print(line, flush=True)
    log.write(line + "\n")
    log.flush()


def save(model: VideoModel, path: Path, step: int, opt, extra: dict) -> None:
    model.save(path, extra | {"decoder_step": str(step)})
    torch.save(opt.state_dict(), path.parent / "opt.pt")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--init", default="model/weights/tiny.safetensors", help="whole model")
    ap.add_argument("--out", default="runs/dec")
    ap.add_argument("--minutes", type=float, default=30.0, help="wall-clock budget this run")
    ap.add_argument("--max-steps", type=int, help="stop at this decoder step (default: none)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--object-weight", type=float, default=10.0)
    ap.add_argument("--motion-weight", type=float, default=1.0)
    ap.add_argument("--latent-noise", type=float, default=0.2, help="max sigma")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--save-every", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "last.safetensors"
    start = ckpt if ckpt.exists() else Path(args.init)
    model = VideoModel.load(start, torch.float32)
    _, _, meta = read_checkpoint(start)
    step = int(meta.get("decoder_step", 0))
    extra = {k: v for k, v in meta.items() if k not in ("config", "format_version")}
    vae = model.vae  # loaded frozen and in eval mode; only the decoder trains
    vae.decoder.requires_grad_(True)
    opt = torch.optim.AdamW(vae.decoder.parameters(), lr=args.lr, weight_decay=0.0)
    if ckpt.exists() and (out / "opt.pt").exists():
        opt.load_state_dict(torch.load(out / "opt.pt"))
    print(f"from {start} at decoder step {step}", flush=True)
    size = model.config.stream.height
    rng = np.random.default_rng(args.seed + step)
    gen = torch.Generator().manual_seed(args.seed + step)
    log = open(out / "log.jsonl", "a")
    t_end = time.time() + args.minutes * 60
    losses = []
    while time.time() < t_end and (args.max_steps is None or step < args.max_steps):
        x = batch(rng, args.batch, args.frames, size)
        with torch.no_grad():
            z, _ = vae.encode(x)
        rec, _ = vae.decode(noisy_latents(z, args.latent_noise, gen))
        loss = decoder_loss(rec, x, object_weight(x, args.object_weight), args.motion_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.decoder.parameters(), 1.0)
        for g in opt.param_groups:  # short warm-up, then constant
            g["lr"] = args.lr * min(1.0, (step + 1) / 50)
        opt.step()
        step += 1
        losses.append(loss.item())
        if step % 20 == 0:
            psnr_db = psnr(rec, x)
            log_progress(log, {"step": step, "loss": float(np.mean(losses)), "psnr": psnr_db})
            losses = []
        if step % args.save_every == 0:
            save(model, ckpt, step, opt, extra)
    save(model, ckpt, step, opt, extra)
    print(f"saved {ckpt} at decoder step {step}", flush=True)


if __name__ == "__main__":
    main()
