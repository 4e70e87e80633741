"""Train the chunk-causal DiT on VAE latents of TinyWorld sequences. Resumable.

    .venv/bin/python ops/train_dit.py --vae runs/vae/last.safetensors --out runs/dit --minutes 60
    .venv/bin/python ops/train_dit.py --init model/weights/tiny.safetensors --out runs/dit2
    .venv/bin/python ops/train_dit.py --device cuda --batch 48 --workers 12 ...  # any CUDA GPU

The run directory (--out) holds the weights, the EMA and the optimizer; running the same
command again resumes from it, on the same device or another.

Training matches inference (memory/stream.py) exactly:
  * a sequence is `chunks` chunks; the first is, half the time, the stream's first chunk
    from far earlier (the attention sink) and the rest are the most recent chunks (the
    rolling window), with positions 0..n-1 as the cache gives them;
  * teacher forcing with a block-causal mask over [clean copy | noisy copy]: the noisy
    chunk c sees the clean chunks < c (as cached context) and itself, nothing later;
  * prompts switch at chunk boundaries (the renderer keeps the object's position), with
    captions that leave attributes out, so the model learns to change what is asked and
    keep the rest; half the switch sequences condition the context on the new prompt, the
    state LongLive's KV re-cache makes, and every sequence trains only the chunks whose
    state inference makes (objective.recache_variant); 10% of sequences drop the noisy copy's
    prompt (classifier-free guidance; the context keeps its prompt, as the cache does);
  * the clean context carries a small random noise level (diffusion forcing), told to the
    model through its per-frame time embedding, for robustness to its own outputs;
  * with --own-context, a share of sequences show the model's own one-step estimate of
    the context instead of the truth (objective.own_context), against exposure bias;
  * with --schedule-prob, a share of chunks train at the default sampler's noise levels;
  * with --decay-minutes, the learning rate anneals over the run's last minutes;
  * with --first-chunk-every, some steps train streams' first chunks alone
    (pool.first_chunks);
  * with --focus-motion and --focus-prob, a share of sequences open with the named motions;
  * with --velocity-weight, a probe on one block's output learns the object's velocity
    (training/velocity.py), so the blocks below learn to read it from the context.
A pool of encoded sequences is refreshed a little every step, so the VAE encoder costs
little; on a GPU (`--device cuda`) `--workers` processes render the new sequences ahead
and the pool encodes them in batches. The pieces live in model/training/ (objective.py,
pool.py, step.py); what the run directory (--out) holds and how a run resumes from it is
in run_dir.py.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import numpy as np
import torch

from model.bundle import VideoModel
from model.config import preset
from model.precision import add_dtype_option
from model.tinyworld.sequences import SequenceParams, SequenceSource
from model.tinyworld.spec import VOCAB
from model.training.objective import training_loss
from model.training.pool import LatentPool, draw
from model.training.run_dir import RunDir
from model.training.step import accumulated_backward, lr_factor, update_ema
from model.training.velocity import VelocityProbe


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--vae", default="runs/vae/last.safetensors")
    ap.add_argument("--init", help="start from a full model checkpoint (VAE, text, DiT)")
    ap.add_argument("--out", default="runs/dit")
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--batch", type=int, default=6)
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--lr", type=float, default=4e-4)
    ap.add_argument(
        "--decay-minutes",
        type=float,
        default=0.0,
        help="anneal the learning rate linearly to 10%% over this run's last N minutes "
        "(warmup-stable-decay); a later run warms back up",
    )
    ap.add_argument("--ema", type=float, default=0.998)
    ap.add_argument("--pool", type=int, default=400)
    ap.add_argument("--refresh", type=int, default=2)
    ap.add_argument("--switch-prob", type=float, default=0.3)
    ap.add_argument("--far-sink-prob", type=float, default=0.5)
    ap.add_argument("--text-drop", type=float, default=0.1)
    ap.add_argument("--recache-prob", type=float, default=0.5)
    ap.add_argument("--object-weight", type=float, default=4.0)
    ap.add_argument(
        "--schedule-prob",
        type=float,
        default=0.0,
        help="fraction of chunks trained at the default sampler's own noise levels",
    )
    ap.add_argument("--context-noise-max", type=float, default=0.1)
    ap.add_argument(
        "--own-context",
        type=float,
        default=0.0,
        help="fraction of sequences whose context is the model's own one-step estimate",
    )
    ap.add_argument("--own-lo", type=float, default=0.2)
    ap.add_argument("--own-hi", type=float, default=0.6)
    ap.add_argument(
        "--first-chunk-every",
        type=int,
        default=0,
        help="every k-th step trains first chunks alone (text-to-video); 0: never",
    )
    ap.add_argument("--first-chunk-batch", type=int, default=24)
    ap.add_argument(
        "--accum",
        type=int,
        default=1,
        help="micro-batches of --batch (or --first-chunk-batch) per optimizer step: a step "
        "sees accum times as many sequences, for a large batch in a small memory",
    )
    ap.add_argument(
        "--focus-motion",
        nargs="+",
        default=[],
        choices=VOCAB["motion"],
        metavar="MOTION",
        help="motions to show more often (quote two-word ones: 'moving left')",
    )
    ap.add_argument(
        "--focus-prob",
        type=float,
        default=0.0,
        help="fraction of sequences that open with one of --focus-motion (0: the grammar's "
        "uniform draw)",
    )
    ap.add_argument(
        "--prev-frames",
        type=int,
        default=0,
        help="latent frames before a chunk given to its tokens as extra input (DiTConfig"
        ".prev_frames); from an --init without them the new input starts at zero",
    )
    ap.add_argument(
        "--relative-values",
        action="store_true",
        help="attention also reads where what it attends to lies (DiTConfig.relative_values,"
        " VO-RoPE); from an --init without it the new projections start at zero",
    )
    ap.add_argument(
        "--new-lr-mult",
        "--prev-lr-mult",
        dest="new_lr_mult",
        type=float,
        default=1.0,
        help="learning-rate multiple for the optional inputs' weights (--prev-frames, "
        "--relative-values): grown on a trained model, they learn faster",
    )
    ap.add_argument(
        "--velocity-weight",
        type=float,
        default=0.0,
        help="weight of the velocity probe's loss (model/training/velocity.py): a linear "
        "head on --velocity-layer's output at the object's token learns the renderer's "
        "velocity, and its gradient trains the blocks below (0: off)",
    )
    ap.add_argument("--velocity-layer", type=int, default=3, help="block the probe reads")
    ap.add_argument(
        "--workers",
        type=int,
        default=0,
        help="processes that render sequences ahead (for a GPU); 0: render in the trainer",
    )
    ap.add_argument("--encode-batch", type=int, default=2, help="sequences per VAE encode")
    ap.add_argument("--threads", type=int, default=2)
    add_dtype_option(ap)  # bf16: autocast; fp32: throughout (faster on CPUs without AMX)
    ap.add_argument(
        "--device",
        default="cpu",
        help="torch device to train on: cpu, cuda or cuda:N (default cpu)",
    )
    ap.add_argument("--save-every", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    check_device(ap, args.device)
    if not 0.0 <= args.focus_prob <= 1.0 or (args.focus_prob and not args.focus_motion):
        ap.error("--focus-prob takes a fraction in [0, 1] and needs --focus-motion")
    return args


def check_device(ap: argparse.ArgumentParser, name: str) -> None:
    """A clear error, before anything loads, for a device this machine does not have."""
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        ap.error(f"--device {name}: {exc}")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            ap.error(f"--device {name}: this machine has {count} CUDA device(s)")
    elif device.type != "cpu":
        ap.error(f"--device {name}: only cpu and cuda are supported")


def build_model(args) -> VideoModel:
    """The preset, with the optional inputs --prev-frames and --relative-values."""
    config = preset(args.preset)
    dit_config = replace(
        config.dit, prev_frames=args.prev_frames, relative_values=args.relative_values
    )
    torch.manual_seed(args.seed)
    return VideoModel(replace(config, dit=dit_config))


def fill_latent_stats(model: VideoModel, pool: LatentPool) -> None:
    """A VAE without latent statistics (unit std, zero mean) gets the pool's."""
    vae = model.vae
    if float(vae.latent_std.sum()) == vae.latent_std.numel() and not bool(vae.latent_mean.any()):
        zs = torch.stack(pool.latents).transpose(0, 1).flatten(1)
        vae.latent_mean.copy_(zs.mean(1))
        vae.latent_std.copy_(zs.std(1))
        print("latent stats from pool", zs.mean(1).numpy().round(2), zs.std(1).numpy().round(2))


def optimizer(model: VideoModel, args, probe=None) -> tuple[list, torch.optim.Optimizer]:
    """AdamW over the denoiser, the text encoder and the velocity probe, if any (the VAE
    stays frozen); grown inputs learn at --new-lr-mult times the rate."""
    params = list(model.dit.parameters()) + list(model.text.parameters())
    params += list(probe.parameters()) if probe is not None else []
    for p in params:
        p.requires_grad_(True)
    new = [p for _, p in model.dit.grown_parameters()]
    new_ids = {id(p) for p in new}
    rest = [p for p in params if id(p) not in new_ids]
    groups = [{"params": rest, "lr_mult": 1.0}]
    if new:
        groups.append({"params": new, "lr_mult": args.new_lr_mult})
    opt = torch.optim.AdamW(groups, lr=args.lr, weight_decay=0.01, betas=(0.9, 0.99))
    return params, opt


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    run = RunDir(args.out)
    model = build_model(args)
    step = run.load_model(model, args.init, args.vae)
    rng = np.random.default_rng(args.seed * 7 + step)
    model.to(args.device)
    t0 = time.time()
    chunk_frames = model.config.stream.chunk_latent_frames * model.config.vae.time_stride
    seq_params = SequenceParams(
        args.chunks,
        chunk_frames,
        model.config.stream.height,
        args.switch_prob,
        args.far_sink_prob,
        focus_motions=tuple(args.focus_motion),
        focus_prob=args.focus_prob,
    )
    source = SequenceSource(rng, seq_params, args.workers)
    pool = LatentPool(model, source, rng, args)
    print(f"pool of {len(pool.latents)} sequences in {time.time() - t0:.0f}s", flush=True)
    fill_latent_stats(model, pool)

    probe = None
    if args.velocity_weight:
        probe = VelocityProbe(model.config.dit.dim, args.velocity_layer).to(args.device)
    params, opt = optimizer(model, args, probe)
    model.dit.train()
    ema = run.resume(model, opt, probe)
    start_step = step
    log = open(run.log, "a")
    t_end = time.time() + args.minutes * 60
    losses = []
    while time.time() < t_end:
        first = bool(args.first_chunk_every) and step % args.first_chunk_every == 0
        opt.zero_grad(set_to_none=True)
        loss = accumulated_backward(
            lambda first=first: training_loss(model, *draw(pool, first, args), args, probe),
            args.accum,
        )
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        factor = lr_factor(step - start_step, t_end - time.time(), args.decay_minutes)
        for g in opt.param_groups:
            g["lr"] = args.lr * g["lr_mult"] * factor
        opt.step()
        step += 1
        update_ema(ema, model, step, args.ema)
        losses.append(loss)
        if step % 20 == 0:
            lr = opt.param_groups[0]["lr"]
            msg = {"step": step, "loss": float(np.mean(losses)), "lr": lr, "time": time.time()}
            msg["fresh"], pool.fresh = pool.fresh, 0  # new sequences in these 20 steps
            if probe is not None:  # the last micro-batch's, in units of the straight speed
                msg["velocity_mse"] = probe.last_loss.item()
            print(json.dumps(msg), flush=True)
            log.write(json.dumps(msg) + "\n")
            log.flush()
            losses = []
        if step % args.save_every == 0:
            run.save(model, ema, opt, step, probe)
    run.save(model, ema, opt, step, probe)
    source.close()


if __name__ == "__main__":
    main()
