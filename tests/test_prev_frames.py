"""The DiT's prev-frames input: the latents just before a chunk, given to its tokens.

Training (ops/train_dit.py's teacher forcing) and inference (memory/stream.py) must
give a chunk the same `prev`, and a model that gains the input from a checkpoint
without it must start out exactly as that checkpoint."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from memory.policy import SinkRollingWindow
from memory.stream import Stream, chunk_noise, context_frame_noise
from model.bundle import VideoModel
from model.config import PRESETS
from model.dit import chunk_prev, prev_of_chunks
from model.teacher_forcing import TeacherForcingLayout
from ops.train_dit import noisy_copy_prev

torch.set_num_threads(1)

PROMPT = "a big red circle bouncing over the ocean"


def prev_model(prev_frames: int, seed: int = 0, context_noise: float = 0.0) -> VideoModel:
    """The micro preset at 32x32 with the prev-frames input, its weights not zero."""
    cfg = PRESETS["micro"]
    cfg = replace(
        cfg,
        stream=replace(cfg.stream, height=32, width=32),
        dit=replace(cfg.dit, prev_frames=prev_frames),
        sampler=replace(cfg.sampler, context_noise=context_noise),
    )
    torch.manual_seed(seed)
    model = VideoModel(cfg)
    with torch.no_grad():
        model.dit.prev_embedding.weight.normal_(std=0.2)
    return model


def test_a_new_prev_input_starts_as_a_no_op():
    """Built with prev_frames, the DiT's output equals the same weights without it."""
    cfg = PRESETS["micro"]
    torch.manual_seed(0)
    plain = VideoModel(cfg)
    torch.manual_seed(0)
    gained = VideoModel(replace(cfg, dit=replace(cfg.dit, prev_frames=2)))
    state = {**plain.state_dict(), "dit.prev_embedding.weight": gained.dit.prev_embedding.weight}
    gained.load_state_dict(state)
    x, prev = torch.randn(1, 4, 2, 8, 8), torch.randn(1, 8, 2, 8, 8)
    text = torch.randn(1, cfg.dit.text_len, cfg.dit.text_dim)
    sigma = torch.full((1, 2), 0.5)
    with torch.no_grad():
        before = plain.dit(x, sigma, text, torch.arange(2))
        after = gained.dit(x, sigma, text, torch.arange(2), prev=prev)
    torch.testing.assert_close(after, before)


def test_prev_changes_the_output_once_trained():
    """With non-zero weights the input is used: other prev latents, other velocity."""
    model = prev_model(2)
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


@pytest.mark.parametrize("context_noise", [0.0, 0.05])
def test_a_stream_gives_each_chunk_the_prev_training_gives_it(context_noise):
    """The stream's velocity for chunk k equals the trainer's teacher-forced velocity for
    the noisy copy of chunk k, the clean copy being the chunks the stream made (noised as
    the stream noises its context) and `prev` built by the trainer's noisy_copy_prev."""
    model = prev_model(2, context_noise=context_noise)
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
    model = prev_model(2)
    s = Stream(model, PROMPT, seed=1)
    frames = [s.next_chunk() for _ in range(6)]
    s.rewind(4)
    again = [s.next_chunk() for _ in range(2)]
    for a, b in zip(frames[4:], again, strict=True):
        assert (a == b).all()
