"""ops/experiments/tune_decoder.py: what its loss measures, and that it trains the VAE decoder alone
(the DiT's latent space, i.e. the encoder and its statistics, must not move)."""

from __future__ import annotations

import torch

from model.bundle import VideoModel
from model.checkpoint import read_checkpoint
from ops.experiments.tune_decoder import decoder_loss, main, noisy_latents


def moving_square(offsets: list[int]) -> torch.Tensor:
    """(1, 3, T, 32, 32) in [-1, 1]: a bright square at x = 4 + offsets[t]."""
    x = -torch.ones(1, 3, len(offsets), 32, 32)
    for t, dx in enumerate(offsets):
        x[:, :, t, 12:20, 4 + dx : 12 + dx] = 1.0
    return x


def test_the_motion_term_scores_what_changes_between_frames():
    x = moving_square([0, 2, 4, 6, 8, 10, 12, 14])
    w = torch.ones_like(x)
    assert decoder_loss(x, x, w, motion_weight=1.0) == 0.0
    # a frame loss alone cannot tell these apart; the motion term can
    stutter = moving_square([0, 0, 0, 0, 8, 8, 8, 8])
    frame_only = decoder_loss(stutter, x, w, motion_weight=0.0)
    assert decoder_loss(stutter, x, w, motion_weight=1.0) > frame_only
    # a constant brightness error changes no frame-to-frame difference
    offset = x + 0.1
    assert torch.isclose(
        decoder_loss(offset, x, w, motion_weight=1.0), decoder_loss(offset, x, w, 0.0)
    )


def test_latent_noise_is_per_clip_and_bounded():
    z = torch.zeros(64, 8, 2, 4, 4)
    gen = torch.Generator().manual_seed(0)
    assert noisy_latents(z, 0.0, gen) is z
    noisy = noisy_latents(z, 0.2, gen)
    per_clip = noisy.flatten(1).std(dim=1)
    assert per_clip.max() < 0.25 and per_clip.min() < 0.1 < per_clip.max()


def test_only_the_decoder_trains_and_a_run_resumes(tmp_path):
    init = tmp_path / "init.safetensors"
    VideoModel.from_seed(0).save(init, {"step": "7"})
    out = tmp_path / "dec"
    common = ["--init", str(init), "--out", str(out), "--batch", "1", "--frames", "8"]
    main([*common, "--max-steps", "2", "--save-every", "1"])
    _, before, _ = read_checkpoint(init)
    _, after, meta = read_checkpoint(out / "last.safetensors")
    assert meta["decoder_step"] == "2" and meta["step"] == "7"
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("vae.decoder.") for k in changed)
    main([*common, "--max-steps", "3"])
    assert read_checkpoint(out / "last.safetensors")[2]["decoder_step"] == "3"
