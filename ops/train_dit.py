"""Train the chunk-causal DiT on VAE latents of TinyWorld sequences. Resumable.

    .venv/bin/python ops/train_dit.py --vae runs/vae/last.safetensors --out runs/dit --minutes 60
    .venv/bin/python ops/train_dit.py --init model/weights/tiny.safetensors --out runs/dit2

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
    state inference makes (see recache_variant); 10% of sequences drop the noisy copy's
    prompt (classifier-free guidance; the context keeps its prompt, as the cache does);
  * the clean context carries a small random noise level (diffusion forcing), told to the
    model through its per-frame time embedding, for robustness to its own outputs;
  * with --own-context, a share of sequences show the model's own one-step estimate of
    the context instead of the truth (see own_context), against exposure bias;
  * with --schedule-prob, a share of chunks train at the default sampler's noise levels;
  * with --decay-minutes, the learning rate anneals over the run's last minutes;
  * with --first-chunk-every, some steps train streams' first chunks alone (see first_chunks);
  * with --focus-motion and --focus-prob, a share of sequences open with the named motions.
A pool of encoded sequences is refreshed a little every step, so the VAE encoder costs
little; on a GPU (`--device cuda`, see ops/train_on_gpu.sh) `--workers` processes render
the new sequences ahead and the pool encodes them in batches. Writes
runs/dit/last.safetensors (train state) and runs/dit/model.safetensors (the full
VideoModel with EMA weights: what `endless render --model` and the evaluator use).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from model.bundle import VideoModel
from model.checkpoint import load_strict, read_checkpoint, save_checkpoint
from model.config import preset
from model.dit import prev_of_chunks
from model.precision import add_dtype_option, resolve_dtype
from model.sampler import shift_sigma, sigmas
from model.teacher_forcing import TeacherForcingLayout
from model.tinyworld.sequences import Sequence, SequenceParams, SequenceSource
from model.tinyworld.spec import VOCAB, parse_prompt


def object_cells(x: torch.Tensor, time_stride: int, cells: int) -> torch.Tensor:
    """(B, 3, T, H, W) frames in [-1, 1] -> (B, T/ts, cells, cells) bool: latent cells where
    some pixel stands out from its row's median colour (the object; stars and flakes too)."""
    median = x.median(dim=-1, keepdim=True).values
    out = ((x - median).abs().amax(dim=1) > 0.35).float()  # (B, T, H, W)
    b, t, h, w = out.shape
    out = out.view(b, t // time_stride, time_stride, h, w).amax(dim=2)
    return F.adaptive_max_pool2d(out, cells) > 0


class LatentPool:
    """Encoded training sequences, refreshed a few at a time from a SequenceSource."""

    def __init__(self, model: VideoModel, source: SequenceSource, rng, args):
        self.model, self.source, self.rng, self.args = model, source, rng, args
        self.chunk_latent = model.config.stream.chunk_latent_frames
        self.chunk_frames = source.p.chunk_frames
        self.latents: list[torch.Tensor] = []
        self.text_idx: list[torch.Tensor] = []
        self.objects: list[torch.Tensor] = []  # (F, h, w) bool: latent cells the object is in
        self.far: list[bool] = []  # the first chunk is a sink from far earlier (a gap follows)
        self.fresh = 0  # sequences encoded since the trainer last read this
        while len(self.latents) < args.pool:
            need = min(args.encode_batch, args.pool - len(self.latents))
            for z, idx, obj, far in self._encode(source.take(need, wait=True)):
                self.latents.append(z)
                self.text_idx.append(idx)
                self.objects.append(obj)
                self.far.append(far)

    @torch.no_grad()
    def _encode(self, seqs: list[Sequence]) -> list[tuple]:
        """Sequences -> (latents (z, F, h, w) unscaled, prompt indices, object cells, far),
        encoded together on the model's device."""
        if not seqs:
            return []
        vae = self.model.vae
        dev = vae.latent_std.device
        # each sequence to the device, then one stack there (a host-side stack of 48
        # sequences is 113 MB of copying on the trainer's one busy core)
        frames = torch.stack([torch.from_numpy(s.frames).to(dev) for s in seqs])
        x = frames.permute(0, 4, 1, 2, 3).float() / 127.5 - 1  # (B, 3, T, H, W)
        far = torch.tensor([s.far for s in seqs], device=dev)
        z = None
        with mixed_precision(dev.type, self.args):
            for group, split in ((far, True), (~far, False)):
                if not group.any():
                    continue
                xs = x[group]
                if split:  # the sink and the chunks after the gap are separate videos
                    first, _, _ = vae.encode_moments(xs[:, :, : self.chunk_frames])
                    rest, _, _ = vae.encode_moments(xs[:, :, self.chunk_frames :])
                    zg = torch.cat([first, rest], dim=2)
                else:  # one video: later chunks are encoded with the causal state carried on
                    zg, _, _ = vae.encode_moments(xs)
                if z is None:
                    z = torch.empty((len(seqs), *zg.shape[1:]), device=dev)
                z[group] = zg.float()
        obj = object_cells(x, self.model.config.vae.time_stride, z.shape[-1]).cpu()
        z = z.cpu()  # the pool lives in host memory
        enc = self.model.text
        out = []
        for i, s in enumerate(seqs):
            idx = torch.tensor([enc.indices(parse_prompt(c).attributes) for c in s.captions])
            out.append((z[i], idx, obj[i], s.far))
        return out

    def refresh(self, n: int) -> None:
        """Replace up to n random pool entries with new sequences (with render workers, as
        many as are ready)."""
        for item in self._encode(self.source.take(n)):
            i = int(self.rng.integers(len(self.latents)))
            self.latents[i], self.text_idx[i], self.objects[i], self.far[i] = item
            self.fresh += 1

    def batch(self, b: int):
        ids = self.rng.integers(len(self.latents), size=b)
        z = torch.stack([self.latents[i] for i in ids])
        idx = torch.stack([self.text_idx[i] for i in ids])
        obj = torch.stack([self.objects[i] for i in ids])
        far = torch.tensor([self.far[i] for i in ids])
        return z, idx, obj, far


def training_loss(model: VideoModel, z, idx, obj, far, args, rng) -> torch.Tensor:
    """Flow-matching loss of the noisy copy under the block-causal teacher-forcing mask."""
    dit, vae = model.dit, model.vae
    cfg = model.config
    dev = vae.latent_std.device
    z, idx, obj, far = z.to(dev), idx.to(dev), obj.to(dev), far.to(dev)
    b, _, n = z.shape[:3]
    chunk = cfg.stream.chunk_latent_frames
    n_chunks = n // chunk
    z = (z - vae.latent_mean.view(1, -1, 1, 1, 1)) / vae.latent_std.view(1, -1, 1, 1, 1)
    # per-chunk noise levels for the noisy copy
    sigma = chunk_sigmas(b, n_chunks, cfg.sampler, args.schedule_prob).to(dev)
    sigma = sigma.repeat_interleave(chunk, dim=1)  # (B, n)
    noise = torch.randn_like(z)
    x_noisy = noised(z, sigma, noise)
    clean_idx, loss_chunks = recache_variant(idx, far, args.recache_prob)
    prompt_tokens = per_frame_tokens(model, idx, chunk)  # what each chunk was made under
    # prompt dropout (for CFG) empties the noisy copy's prompt alone: at inference the
    # unconditional pass attends to a cache built under the real prompt
    drop = (torch.rand(b) < args.text_drop).to(dev)
    null_tokens = per_frame_tokens(model, torch.zeros_like(idx), chunk)  # trained too
    tokens = torch.where(drop[:, None, None, None], null_tokens, prompt_tokens)
    if n_chunks == 1:  # a stream's first chunk alone: no context, so no clean copy
        with mixed_precision(dev.type, args):
            v = dit(x_noisy, sigma, tokens, torch.arange(n, device=dev))
    else:
        clean_tokens = per_frame_tokens(model, clean_idx, chunk)
        v = teacher_forced_velocity(
            dit, z, x_noisy, sigma, tokens, clean_tokens, prompt_tokens, chunk, args
        )
    target = noise - z
    cell_w = 1.0 + args.object_weight * obj.float()  # (B, n, h, w): the object matters most
    err = ((v.float() - target).pow(2).mean(dim=1) * cell_w).mean(dim=(2, 3))
    weight = loss_chunks.repeat_interleave(chunk, dim=1).float()  # (B, n)
    return (err * weight).sum() / weight.sum()


def teacher_forced_velocity(
    dit, z, x_noisy, sigma, tokens, clean_tokens, prompt_tokens, chunk: int, args
):
    """The DiT's velocity for the noisy copy, each chunk seeing the clean chunks before it.

    The clean copy carries a small random noise level (diffusion forcing) or, for a share
    of the sequences, the model's own estimate (see own_context)."""
    b, _, n, h, w = z.shape
    ctx_sigma = (torch.rand(b, 1) < 0.5) * torch.rand(b, n) * args.context_noise_max
    ctx_sigma = ctx_sigma.to(z.device)
    x_ctx = noised(z, ctx_sigma, torch.randn_like(z))
    positions = torch.cat([torch.arange(n), torch.arange(n)]).to(z.device)
    layout = TeacherForcingLayout(n // chunk, chunk * dit.tokens_per_frame(h, w))
    own = (torch.rand(b) < args.own_context).to(z.device)
    if own.any():  # the extra forward pass only for the sequences that use it
        # the model's own chunks, each made under the prompt it was generated with
        x_ctx[own] = own_context(dit, z[own], prompt_tokens[own], positions, layout, chunk, args)
        ctx_sigma[own] = 0.0
    x = torch.cat([x_ctx, x_noisy], dim=2)  # (B, z, 2n, h, w)
    s = torch.cat([ctx_sigma, sigma], dim=1)
    prev = noisy_copy_prev(dit, x_ctx, chunk)  # what each chunk's context ends with
    with mixed_precision(z.device.type, args):
        text = torch.cat([clean_tokens, tokens], dim=1)
        v = dit(x, s, text, positions, mask=layout, prev=prev)
    return v[:, :, n:]


def noisy_copy_prev(dit, x_ctx: torch.Tensor, chunk: int) -> torch.Tensor | None:
    """The `prev` input over [clean copy | noisy copy]: the noisy chunk c gets the last
    latent frames of the context before it, as the stream gives them at inference (the
    context copy, noised or the model's own); the clean copy, like the cache's keys and
    values at inference, gets none (zeros)."""
    p = dit.cfg.prev_frames
    if not p:
        return None
    prev = prev_of_chunks(x_ctx, chunk, p)
    return torch.cat([torch.zeros_like(prev), prev], dim=2)


@torch.no_grad()
def own_context(dit, z, tokens, positions, layout, chunk: int, args) -> torch.Tensor:
    """The model's own version of the clean sequence, to stand in for the cached context.

    At inference the context is what the model generated, with its errors; teacher
    forcing shows the truth, and the gap (exposure bias) lets errors pile up chunk after
    chunk. As a cheap stand-in for Self-Forcing's rollouts, each chunk is noised to a
    level in [--own-lo, --own-hi] and denoised in one step by the model itself, seeing
    the true chunks before it; the loss still asks for the true next chunk, so the model
    learns to continue from, and correct, context that looks like its own output.
    """
    b, _, n = z.shape[:3]
    level = torch.empty(b, n // chunk, device=z.device).uniform_(args.own_lo, args.own_hi)
    level = level.repeat_interleave(chunk, dim=1)  # (B, n)
    x_noisy = noised(z, level, torch.randn_like(z))
    x = torch.cat([z, x_noisy], dim=2)
    s = torch.cat([torch.zeros_like(level), level], dim=1)
    prev = noisy_copy_prev(dit, z, chunk)  # each chunk is made after the true one before it
    with mixed_precision(z.device.type, args):
        v = dit(x, s, torch.cat([tokens, tokens], dim=1), positions, mask=layout, prev=prev)
    return x_noisy - level[:, None, :, None, None] * v[:, :, n:].float()


def draw(pool: LatentPool, first: bool, args):
    """One micro-batch after a refresh of the pool: first chunks alone, or sequences."""
    pool.refresh(args.refresh)
    return first_chunks(pool, args.first_chunk_batch) if first else pool.batch(args.batch)


def first_chunks(pool: LatentPool, b: int):
    """A batch of streams' first chunks alone (text-to-video, no context).

    Every later chunk copies much of what it shows from the context, so the first chunk
    is where shape and placement are made up from the prompt alone. One chunk without
    its clean copy costs about a twelfth of a 4-chunk sequence (forward and backward on
    2 cores: 0.44 s for 24 first chunks, 1.42 s for 6 sequences), so these steps give
    that case many more examples for the same time."""
    z, idx, obj, _ = pool.batch(b)
    f = pool.chunk_latent
    return z[:, :, :f], idx[:, :1], obj[:, :f], torch.zeros(b, dtype=torch.bool)


def noised(z: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Latents (B, C, F, h, w) at per-frame noise levels sigma (B, F), on the flow path."""
    s = sigma[:, None, :, None, None]
    return (1 - s) * z + s * noise


def chunk_sigmas(b: int, n_chunks: int, sampler, schedule_prob: float) -> torch.Tensor:
    """(B, chunks) training noise levels: the shifted continuum, or with schedule_prob one
    of the levels the default few-step sampler actually visits (inference queries the
    model at those alone, so they get the most practice)."""
    sigma = shift_sigma(torch.rand(b, n_chunks), sampler.shift)
    levels = sigmas(sampler.steps, sampler.shift)[:-1]  # e.g. 1, .9, .75, .5 for 4 steps
    at_level = levels[torch.randint(len(levels), (b, n_chunks))]
    return torch.where(torch.rand(b, n_chunks) < schedule_prob, at_level, sigma)


def per_frame_tokens(model: VideoModel, idx: torch.Tensor, chunk: int) -> torch.Tensor:
    """(B, chunks, slots) value indices -> (B, chunks*chunk, L, D) text tokens per frame."""
    b, n_chunks, _ = idx.shape
    tokens = model.text.tokens_from_indices(idx.flatten(0, 1))
    tokens = tokens.view(b, n_chunks, -1, model.text.text_dim)
    return tokens.repeat_interleave(chunk, dim=1)


def recache_variant(
    idx: torch.Tensor, far: torch.Tensor, prob: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teach the state LongLive's KV re-cache creates at inference, and only states that
    inference makes.

    At a prompt switch the stream recomputes its context's keys/values under the new
    prompt. For a fraction `prob` of the sequences that contain a switch, the clean
    (context) copy is therefore conditioned on the final prompt, and only chunks of that
    final prompt are trained; for the others the context keeps each chunk's own prompt
    and only chunks before the first switch are trained (later ones would see context
    under an older prompt, which a re-caching stream never shows). Chunk 1 of a far-sink
    sequence (`far`: the sink comes from long before) is never trained: its only context
    would be a sink with a gap after it, while at inference chunk 1 follows chunk 0.
    Returns (clean-copy indices, (B, chunks) bool mask of chunks that carry loss).
    """
    b, n_chunks, _ = idx.shape
    same_as_last = (idx == idx[:, -1:]).all(-1)  # (B, chunks)
    order = torch.arange(n_chunks, device=idx.device).expand(b, -1)
    last_diff = torch.where(~same_as_last, order, torch.full_like(order, -1)).amax(dim=1)
    start = last_diff + 1  # first chunk of the final prompt
    use = (start > 0) & (torch.rand(b, device=idx.device) < prob)
    clean = torch.where(use[:, None, None], idx[:, -1:].expand_as(idx), idx)
    # without the re-cache only chunks before the first switch match inference (after a
    # switch inference always re-caches, so no context is under an older prompt)
    same_as_first = (idx == idx[:, :1]).all(-1)
    first_switch = torch.where(same_as_first, torch.full_like(order, n_chunks), order).amin(1)
    loss_chunks = torch.where(use[:, None], order >= start[:, None], order < first_switch[:, None])
    if n_chunks > 1:
        loss_chunks[:, 1] &= ~far
    return clean, loss_chunks


def main() -> None:
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
        "--workers",
        type=int,
        default=0,
        help="processes that render sequences ahead (for a GPU); 0: render in the trainer",
    )
    ap.add_argument("--encode-batch", type=int, default=2, help="sequences per VAE encode")
    ap.add_argument("--threads", type=int, default=2)
    add_dtype_option(ap)  # bf16: autocast; fp32: throughout (faster on CPUs without AMX)
    ap.add_argument("--device", default="cpu", help="cpu, or cuda when a GPU is lent")
    ap.add_argument("--save-every", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not 0.0 <= args.focus_prob <= 1.0 or (args.focus_prob and not args.focus_motion):
        ap.error("--focus-prob takes a fraction in [0, 1] and needs --focus-motion")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "last.safetensors"

    config = preset(args.preset)
    dit_config = replace(
        config.dit, prev_frames=args.prev_frames, relative_values=args.relative_values
    )
    config = replace(config, dit=dit_config)
    torch.manual_seed(args.seed)
    model = VideoModel(config)
    step = 0
    if args.init and not state_path.exists():
        # continue from a full model (e.g. the shipped weights): VAE, text and DiT
        _, tensors, meta = read_checkpoint(args.init)
        for name, p in model.dit.grown_parameters():
            if f"dit.{name}" not in tensors:
                tensors[f"dit.{name}"] = p.detach()
                print(f"{name} is new: it starts at zero", flush=True)
        load_strict(model, tensors, args.init)
        step = int(meta.get("step", 0))
        print(f"initialised from {args.init} (step {step})", flush=True)
    elif not state_path.exists():  # a fresh start: the trained VAE, a new denoiser
        _, vae_tensors, _ = read_checkpoint(args.vae)
        load_strict(model.vae, vae_tensors, args.vae)
    if state_path.exists():
        _, tensors, meta = read_checkpoint(state_path)
        load_strict(model, tensors, str(state_path))
        step = int(meta.get("step", 0))
        print(f"resumed at step {step}", flush=True)
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
    if float(model.vae.latent_std.sum()) == model.vae.latent_std.numel() and not bool(
        model.vae.latent_mean.any()
    ):
        zs = torch.stack(pool.latents).transpose(0, 1).flatten(1)
        model.vae.latent_mean.copy_(zs.mean(1))
        model.vae.latent_std.copy_(zs.std(1))
        print("latent stats from pool", zs.mean(1).numpy().round(2), zs.std(1).numpy().round(2))

    params = list(model.dit.parameters()) + list(model.text.parameters())
    for p in params:
        p.requires_grad_(True)
    model.dit.train()
    new = [p for _, p in model.dit.grown_parameters()]
    new_ids = {id(p) for p in new}
    rest = [p for p in params if id(p) not in new_ids]
    groups = [{"params": rest, "lr_mult": 1.0}]
    if new:
        groups.append({"params": new, "lr_mult": args.new_lr_mult})
    opt = torch.optim.AdamW(groups, lr=args.lr, weight_decay=0.01, betas=(0.9, 0.99))
    opt_path = out / "opt.pt"
    if state_path.exists() and opt_path.exists():
        opt.load_state_dict(torch.load(opt_path, map_location=args.device))
    ema = copy.deepcopy(model)
    ema_path = out / "model.safetensors"
    if state_path.exists() and ema_path.exists():
        _, tensors, _ = read_checkpoint(ema_path)
        load_strict(ema, tensors, str(ema_path))
    ema.requires_grad_(False)
    start_step = step
    log = open(out / "log.jsonl", "a")
    t_end = time.time() + args.minutes * 60
    losses = []
    while time.time() < t_end:
        first = bool(args.first_chunk_every) and step % args.first_chunk_every == 0
        opt.zero_grad(set_to_none=True)
        loss = accumulated_backward(
            lambda first=first: training_loss(model, *draw(pool, first, args), args, rng),
            args.accum,
        )
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        factor = lr_factor(step - start_step, t_end - time.time(), args)
        for g in opt.param_groups:
            g["lr"] = args.lr * g["lr_mult"] * factor
        opt.step()
        step += 1
        with torch.no_grad():
            decay = min(args.ema, (1 + step) / (10 + step))
            for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                pe.lerp_(pm, 1 - decay)
            for be, bm in zip(ema.buffers(), model.buffers(), strict=True):
                be.copy_(bm)
        losses.append(loss)
        if step % 20 == 0:
            lr = opt.param_groups[0]["lr"]
            msg = {"step": step, "loss": float(np.mean(losses)), "lr": lr, "time": time.time()}
            msg["fresh"], pool.fresh = pool.fresh, 0  # new sequences in these 20 steps
            print(json.dumps(msg), flush=True)
            log.write(json.dumps(msg) + "\n")
            log.flush()
            losses = []
        if step % args.save_every == 0:
            save(model, ema, opt, step, out)
    save(model, ema, opt, step, out)
    source.close()


def accumulated_backward(micro_loss, k: int) -> float:
    """Gradients of the mean of k micro-batch losses, drawn and back-propagated one at a
    time so that memory holds one micro-batch (a CPU takes the GPU run's batch this way);
    returns that mean."""
    total = 0.0
    for _ in range(k):
        loss = micro_loss() / k
        loss.backward()
        total += loss.item()
    return total


def mixed_precision(device_type: str, args):
    """bf16 autocast, or fp32 throughout with --dtype fp32; --dtype auto picks bf16 on a GPU
    and on CPUs with AMX, where it runs fastest, and fp32 on other CPUs."""
    dtype = resolve_dtype(args.dtype, device_type)
    return torch.autocast(device_type, dtype=dtype, enabled=dtype != torch.float32)


def lr_factor(run_step: int, seconds_left: float, args) -> float:
    """Warm up over a run's first 100 steps (also when resuming: Adam's moments are
    reloaded, but a jump back to full rate after a decay is rough), then hold, then
    decay linearly to 0.1 over the run's last --decay-minutes."""
    warm = min(1.0, (run_step + 1) / 100)
    if args.decay_minutes <= 0:
        return warm
    return warm * max(0.1, min(1.0, seconds_left / (args.decay_minutes * 60)))


def save(model, ema, opt, step, out: Path) -> None:
    meta = {"step": str(step)}
    save_checkpoint(out / "last.safetensors", model.state_dict(), model.config, meta)
    ema.save(out / "model.safetensors", meta)
    torch.save(opt.state_dict(), out / "opt.pt")


if __name__ == "__main__":
    main()
