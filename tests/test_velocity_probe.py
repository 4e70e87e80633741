"""The velocity probe's truth (the renderer's track, carried to the trainer), what it reads
(the token under the object) and what it trains (the blocks below it, not above)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from model.bundle import VideoModel
from model.tinyworld.sequences import SequenceParams, SequenceSource, sample_sequence
from model.tinyworld.steadiness import object_track
from model.training.objective import training_loss
from model.training.pool import LatentPool, latent_track
from model.training.run_dir import RunDir
from model.training.velocity import VELOCITY_SCALE, VelocityProbe


def test_a_sequences_track_is_where_the_evaluator_reads_the_object_and_how_it_moves():
    p = SequenceParams(4, 12, 128, 0.0, 0.0, focus_motions=("moving left",), focus_prob=1.0)
    seq = sample_sequence(np.random.default_rng(5), p)
    read = object_track(seq.frames)
    found = ~np.isnan(read[:, 0])
    assert found.mean() > 0.9
    gap = (read[found] - seq.track[found, :2] + 0.5) % 1.0 - 0.5  # across the wrap
    assert np.abs(gap).max() < 2 / 128  # within 2 pixels
    assert np.allclose(seq.track[:, 2:], [-0.25, 0.0])


def test_a_latent_frame_takes_its_middle_frames_centre_and_its_frames_mean_velocity():
    track = np.zeros((8, 4), np.float32)
    track[:, 0] = np.arange(8) / 10
    track[:, 2] = [0, 0, 0, 4, 1, 1, 1, 1]
    got = latent_track(track, 4)
    assert got.shape == (2, 4)
    assert torch.allclose(got[:, 0], torch.tensor([0.2, 0.6]))
    assert torch.allclose(got[:, 2], torch.tensor([1.0, 1.0]))


def test_the_probe_reads_the_token_under_the_object_in_the_copy_it_is_pointed_at():
    probe = VelocityProbe(dim=3, layer=0)
    with torch.no_grad():
        probe.head.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]))
        probe.head.bias.zero_()
    gh = gw = 4
    frames, offset = 2, 5
    hidden = torch.zeros(1, offset + frames * gh * gw, 3)
    # the object at (x, y) = (0.6, 0.3): column 2, row 1; velocity (0.25, -0.5) fw/s
    track = torch.tensor([[[0.6, 0.3, 0.25, -0.5], [0.6, 0.3, 0.25, -0.5]]])
    for f in range(frames):
        hidden[0, offset + f * gh * gw + 1 * gw + 2, :2] = (
            torch.tensor([0.25, -0.5]) / VELOCITY_SCALE
        )
    probe.hidden = hidden
    assert probe.loss(track, offset, (gh, gw)).item() < 1e-12
    assert probe.loss(track, 0, (gh, gw)).item() > 0.1  # the wrong copy
    moved = track.clone()
    moved[..., 0] = 0.1  # another column: nothing there
    assert probe.loss(moved, offset, (gh, gw)).item() > 0.1


def micro_batch(model: VideoModel, n_chunks: int):
    cfg = model.config
    p = SequenceParams(
        n_chunks, cfg.stream.chunk_latent_frames * cfg.vae.time_stride, cfg.stream.height, 0.3, 0.0
    )
    rng = np.random.default_rng(0)
    pool = LatentPool(model, SequenceSource(rng, p), rng, SimpleNamespace(pool=0, dtype="fp32"))
    items = pool._encode([sample_sequence(rng, p) for _ in range(2)])
    return [torch.stack([torch.as_tensor(item[k]) for item in items]) for k in range(5)]


ARGS = dict(
    schedule_prob=0.5,
    recache_prob=0.5,
    text_drop=0.1,
    object_weight=4.0,
    own_context=0.5,
    own_lo=0.2,
    own_hi=0.6,
    context_noise_max=0.1,
    dtype="fp32",
)


def grads(model: VideoModel, batch, weight: float, probe: VelocityProbe | None):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(3)
    args = SimpleNamespace(**ARGS, velocity_weight=weight)
    loss = training_loss(model, *batch, args, probe)
    loss.backward()
    return loss.item(), [
        None if p.grad is None else p.grad.clone() for p in model.dit.blocks.parameters()
    ]


def test_the_probe_adds_its_loss_and_trains_the_blocks_below_it_only():
    model = VideoModel.from_seed(0, "micro")
    model.dit.requires_grad_(True)
    blocks = len(model.dit.blocks)
    per_block = len(list(model.dit.blocks[0].parameters()))
    for n_chunks in (1, 3):  # a first chunk alone, and a sequence in teacher forcing
        batch = micro_batch(model, n_chunks)
        plain, g0 = grads(model, batch, 0.0, None)
        probe = VelocityProbe(model.config.dit.dim, layer=0)
        with_probe, g1 = grads(model, batch, 2.0, probe)
        assert abs(with_probe - (plain + 2.0 * probe.last_loss.item())) < 1e-5
        assert probe.last_loss.item() > 0
        assert probe.head.weight.grad is not None
        changed = [
            not torch.allclose(a, b, atol=1e-7)
            for a, b in zip(g0, g1, strict=True)
            if a is not None
        ]
        below, above = changed[:per_block], changed[per_block:]
        assert any(below)  # block 0's own weights get the probe's gradient
        assert blocks > 1 and not any(above)  # the blocks after it do not


def test_a_resumed_run_gets_its_probe_back(tmp_path):
    model = VideoModel.from_seed(0, "micro")
    run = RunDir(tmp_path / "run")
    probe = VelocityProbe(model.config.dit.dim, layer=1)
    opt = torch.optim.AdamW(list(probe.parameters()), lr=1e-2)
    ema = run.resume(model, opt, probe)
    run.save(model, ema, opt, 3, probe)
    again = VelocityProbe(model.config.dit.dim, layer=1)
    RunDir(tmp_path / "run").resume(VideoModel.from_seed(0, "micro"), opt, again)
    assert torch.equal(again.head.weight, probe.head.weight)
