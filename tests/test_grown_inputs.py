"""The DiT's optional inputs, grown on a trained model: the prev-frames input (the latents
just before a chunk, given to its tokens) and relative values (attention also reads where
what it attends to lies).

Training (model/training/objective.py, teacher forcing) and inference (memory/stream.py) must
compute a chunk the same way, and a model that gains an input from a checkpoint without
it must start out exactly as that checkpoint."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from memory.policy import SinkRollingWindow
from memory.stream import Stream, chunk_noise, context_frame_noise
from model.bundle import VideoModel
from model.config import PRESETS
from model.dit import WanSelfAttention, apply_rope, chunk_prev, prev_of_chunks
from model.teacher_forcing import TeacherForcingLayout
from model.training.objective import noisy_copy_prev

torch.set_num_threads(1)

PROMPT = "a big red circle bouncing over the ocean"


def grown_model(
    prev_frames: int, relative_values: bool = False, seed: int = 0, context_noise: float = 0.0
) -> VideoModel:
    """The micro preset at 32x32 with optional inputs, their weights not zero."""
    cfg = PRESETS["micro"]
    cfg = replace(
        cfg,
        stream=replace(cfg.stream, height=32, width=32),
        dit=replace(cfg.dit, prev_frames=prev_frames, relative_values=relative_values),
        sampler=replace(cfg.sampler, context_noise=context_noise),
    )
    torch.manual_seed(seed)
    model = VideoModel(cfg)
    with torch.no_grad():
        for _, p in model.dit.grown_parameters():
            p.normal_(std=0.2)
    return model


@pytest.mark.parametrize("prev_frames, relative_values", [(2, False), (0, True)])
def test_a_new_input_starts_as_a_no_op(prev_frames, relative_values):
    """Built with an optional input, the DiT's output equals the same weights without it."""
    cfg = PRESETS["micro"]
    torch.manual_seed(0)
    plain = VideoModel(cfg)
    gained = VideoModel(
        replace(cfg, dit=replace(cfg.dit, prev_frames=prev_frames, relative_values=relative_values))
    )
    grown = {f"dit.{n}": p for n, p in gained.dit.grown_parameters()}
    assert grown and all(not p.any() for p in grown.values())
    gained.load_state_dict({**plain.state_dict(), **grown})
    x = torch.randn(1, 4, 2, 8, 8)
    prev = torch.randn(1, 4 * prev_frames, 2, 8, 8) if prev_frames else None
    text = torch.randn(1, cfg.dit.text_len, cfg.dit.text_dim)
    sigma = torch.full((1, 2), 0.5)
    with torch.no_grad():
        before = plain.dit(x, sigma, text, torch.arange(2))
        after = gained.dit(x, sigma, text, torch.arange(2), prev=prev)
    torch.testing.assert_close(after, before)


def test_prev_changes_the_output_once_trained():
    """With non-zero weights the input is used: other prev latents, other velocity."""
    model = grown_model(2)
    x = torch.randn(1, 4, 2, 4, 4)
    text = torch.randn(1, model.config.dit.text_len, model.config.dit.text_dim)
    s = torch.full((1, 2), 0.5)
    with torch.no_grad():
        a = model.dit(x, s, text, torch.arange(2), prev=torch.randn(1, 8, 2, 4, 4))
        b = model.dit(x, s, text, torch.arange(2), prev=torch.randn(1, 8, 2, 4, 4))
    assert (a - b).abs().max() > 1e-3


def test_prev_of_chunks_gives_each_chunk_the_frames_before_it():
    x = torch.arange(2 * 3 * 6 * 1 * 1, dtype=torch.float32).view(2, 3, 6, 1, 1)
    out = prev_of_chunks(x, chunk=2, p=2)  # chunks [0,1] [2,3] [4,5]
    assert out.shape == (2, 6, 6, 1, 1)
    assert not out[:, :, :2].any()  # the first chunk has nothing before it
    for start in (2, 4):
        for f in range(start, start + 2):
            torch.testing.assert_close(
                out[:, :, f], chunk_prev(x[:, :, start - 2 : start], 1)[:, :, 0]
            )
    # folded frame-major: channels of the earlier frame first
    torch.testing.assert_close(out[:, :3, 2], x[:, :, 0])
    torch.testing.assert_close(out[:, 3:, 2], x[:, :, 1])


@pytest.mark.parametrize(
    "prev_frames, relative_values, context_noise",
    [(2, False, 0.0), (2, False, 0.05), (0, True, 0.05), (2, True, 0.0)],
)
def test_a_stream_computes_each_chunk_as_training_does(prev_frames, relative_values, context_noise):
    """The stream's velocity for chunk k equals the trainer's teacher-forced velocity for
    the noisy copy of chunk k, the clean copy being the chunks the stream made (noised as
    the stream noises its context) and `prev` built by the trainer's noisy_copy_prev."""
    model = grown_model(prev_frames, relative_values, context_noise=context_noise)
    dit, cfg = model.dit, model.config
    chunk, n_chunks = cfg.stream.chunk_latent_frames, 4
    policy = SinkRollingWindow(sink=chunk, window=n_chunks * chunk, margin=0)
    s = Stream(model, PROMPT, seed=5, policy=policy)
    text = s._text(s._prompt_at(0))
    made, seen = [], []
    for _ in range(n_chunks):
        plan = s.plan()
        with torch.no_grad():
            v = dit(
                plan.noise,
                torch.ones(1, chunk),
                text,
                s._positions(plan.n_context),
                ctx=plan.context,
                prev=plan.prev,
            )
        seen.append(v)
        lat = s.denoise(plan)
        s.commit(plan, lat)
        made.append(lat)
    z = torch.cat(made, dim=2)
    n = z.shape[2]
    x_ctx = z
    if context_noise:
        x_ctx = (1 - context_noise) * z + context_noise * context_frame_noise(5, list(range(n)), z)
    noisy = torch.cat([chunk_noise_of(s, k) for k in range(n_chunks)], dim=2)
    h = cfg.stream.height // cfg.vae.space_stride
    layout = TeacherForcingLayout(n_chunks, chunk * dit.tokens_per_frame(h, h))
    sig = torch.cat([torch.full((1, n), context_noise), torch.ones(1, n)], dim=1)
    tokens = text[:, None].expand(1, 2 * n, -1, -1)
    with torch.no_grad():
        v = dit(
            torch.cat([x_ctx, noisy], dim=2),
            sig,
            tokens,
            torch.cat([torch.arange(n), torch.arange(n)]),
            mask=layout,
            prev=noisy_copy_prev(dit, x_ctx, chunk),
        )[:, :, n:]
    for k in range(n_chunks):
        torch.testing.assert_close(
            v[:, :, k * chunk : (k + 1) * chunk], seen[k], atol=1e-4, rtol=1e-4
        )


def chunk_noise_of(s: Stream, k: int) -> torch.Tensor:
    cfg = s.model.config
    shape = (1, cfg.vae.z_dim, s.chunk_frames, s.latent_h, s.latent_w)
    return chunk_noise(s.seed, k, shape, s.model.dtype)


def test_a_stream_keeps_the_prev_input_through_rewinds():
    """A rewound chunk gets the same prev, so it regenerates identically."""
    model = grown_model(2)
    s = Stream(model, PROMPT, seed=1)
    frames = [s.next_chunk() for _ in range(6)]
    s.rewind(4)
    again = [s.next_chunk() for _ in range(2)]
    for a, b in zip(frames[4:], again, strict=True):
        assert (a == b).all()


def relative_attention() -> WanSelfAttention:
    torch.manual_seed(3)
    attn = WanSelfAttention(24, 2, relative_values=True)
    with torch.no_grad():
        attn.o_rel.weight.normal_(std=0.3)
    return attn


def test_relative_values_read_positions_relative_to_the_query():
    """The extra read is sum_j a_ij R(p_j - p_i) v_j, checked against a loop over pairs."""
    attn = relative_attention()
    n, heads, hd = 6, 2, 12
    x = torch.randn(1, n, 24)
    angles = torch.randn(n, hd // 2)
    with torch.no_grad():
        out, (k_raw, v) = attn(x, angles)
        q = apply_rope(attn.norm_q(attn.q(x)).view(1, n, heads, hd), angles)
        k = apply_rope(k_raw, angles)
        a = torch.softmax(torch.einsum("bihd,bjhd->bhij", q, k) / hd**0.5, dim=-1)
        rel = torch.zeros(1, n, heads, hd)
        for i in range(n):
            for j in range(n):
                rotated = apply_rope(v[:, j : j + 1], (angles[j] - angles[i])[None])
                rel[:, i] += a[:, :, i, j, None] * rotated[:, 0]
        plain = torch.einsum("bhij,bjhd->bihd", a, v)
        want = attn.o(plain.reshape(1, n, -1)) + attn.o_rel(rel.reshape(1, n, -1))
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)


def test_relative_values_do_not_see_absolute_positions():
    """Shifting every token's place by the same amount leaves the output unchanged (as
    RoPE's scores are): the read is relative, not where the tokens are."""
    attn = relative_attention()
    x, angles = torch.randn(1, 6, 24), torch.randn(6, 6)
    shift = torch.randn(1, 6)
    with torch.no_grad():
        a, _ = attn(x, angles)
        b, _ = attn(x, angles + shift)
        ctx_kv = attn.project_kv(torch.randn(1, 4, 24))
        ctx_angles = torch.randn(4, 6)
        c, _ = attn(x, angles, ctx_kv, ctx_angles)
        d, _ = attn(x, angles + shift, ctx_kv, ctx_angles + shift)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(c, d, atol=1e-5, rtol=1e-5)
