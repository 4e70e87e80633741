"""The DiT's training objective: flow matching under block-causal teacher forcing, with
the states inference makes (re-cached context, noisy or self-made context, first chunks)."""

from __future__ import annotations

import torch

from model.bundle import VideoModel
from model.dit import prev_of_chunks
from model.precision import mixed_precision
from model.sampler import shift_sigma, sigmas
from model.teacher_forcing import TeacherForcingLayout
from model.training.velocity import VelocityProbe


def training_loss(
    model: VideoModel, z, idx, obj, far, track, args, probe: VelocityProbe | None = None
) -> torch.Tensor:
    """Flow-matching loss of the noisy copy under the block-causal teacher-forcing mask;
    with a velocity probe, plus args.velocity_weight times its loss on both copies."""
    dit, vae = model.dit, model.vae
    cfg = model.config
    dev = vae.latent_std.device
    z, idx, obj, far = z.to(dev), idx.to(dev), obj.to(dev), far.to(dev)
    watch = probe.watch(dit) if probe is not None else None
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
        with mixed_precision(dev.type, args.dtype):
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
    loss = (err * weight).sum() / weight.sum()
    if probe is None:
        return loss
    watch.remove()
    _, gh, gw = dit.grid(z)
    track = track.to(dev)
    copies = [0] if n_chunks == 1 else [0, n * gh * gw]  # [noisy] or [clean | noisy]
    probe.last_loss = sum(probe.loss(track, at, (gh, gw)) for at in copies) / len(copies)
    probe.hidden = None  # the step's graph is not kept past its backward
    return loss + args.velocity_weight * probe.last_loss


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
    with mixed_precision(z.device.type, args.dtype):
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
    with mixed_precision(z.device.type, args.dtype):
        v = dit(x, s, torch.cat([tokens, tokens], dim=1), positions, mask=layout, prev=prev)
    return x_noisy - level[:, None, :, None, None] * v[:, :, n:].float()


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
