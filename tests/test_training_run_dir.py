"""A training run resumes from its directory where it stopped: train state, EMA weights,
optimizer moments and step, in preference to the weights it was first initialised from."""

from __future__ import annotations

import torch

from model.bundle import VideoModel
from model.training.run_dir import RunDir
from model.training.step import update_ema


def trained_a_step(model: VideoModel) -> torch.optim.Optimizer:
    model.dit.requires_grad_(True)
    opt = torch.optim.AdamW(model.dit.parameters(), lr=1e-2)
    loss = sum(p.pow(2).sum() for p in model.dit.parameters())
    loss.backward()
    opt.step()
    return opt


def test_a_resumed_run_gets_its_state_ema_moments_and_step_back(tmp_path):
    init = tmp_path / "init.safetensors"
    VideoModel.from_seed(1, "micro").save(init, {"step": "7"})
    run = RunDir(tmp_path / "run")
    model = VideoModel.from_seed(0, "micro")
    assert run.load_model(model, str(init), vae="unused") == 7  # a new run: from init
    opt = trained_a_step(model)
    ema = run.resume(model, opt)
    update_ema(ema, model, 50, 0.9)
    run.save(model, ema, opt, 8)

    again = RunDir(tmp_path / "run")
    model2 = VideoModel.from_seed(2, "micro")
    assert again.load_model(model2, str(init), vae="unused") == 8  # its own state wins
    opt2 = torch.optim.AdamW(model2.dit.parameters(), lr=1e-2)
    ema2 = again.resume(model2, opt2)
    for a, b in zip(model.state_dict().values(), model2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(ema.state_dict().values(), ema2.state_dict().values(), strict=True):
        assert torch.equal(a.float(), b.float())
    moments = [s["exp_avg_sq"] for s in opt.state_dict()["state"].values()]
    moments2 = [s["exp_avg_sq"] for s in opt2.state_dict()["state"].values()]
    assert len(moments) == len(moments2) > 0
    assert all(torch.equal(a, b) for a, b in zip(moments, moments2, strict=True))


def test_the_ema_follows_the_model_at_its_rate_and_copies_buffers():
    model, ema = VideoModel.from_seed(0, "micro"), VideoModel.from_seed(1, "micro")
    model.vae.latent_std.fill_(3.0)
    before = [p.clone() for p in ema.parameters()]
    update_ema(ema, model, step=10_000, rate=0.9)
    for e0, e1, m in zip(before, ema.parameters(), model.parameters(), strict=True):
        assert torch.allclose(e1, 0.9 * e0 + 0.1 * m, atol=1e-6)
    assert torch.equal(ema.vae.latent_std, model.vae.latent_std)
