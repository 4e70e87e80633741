"""A training run resumes from its directory where it stopped: train state, EMA weights,
optimizer moments and step, in preference to the weights it was first initialised from."""

from __future__ import annotations

import math

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from model.bundle import VideoModel
from model.checkpoint import head_rows
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


def test_a_run_saved_before_format_2_resumes_with_its_head_moments_reordered(tmp_path):
    """A run dir whose files are format 1 (head rows in the old order) resumes with the head's
    rows and their Adam moments both in Wan's order, every other moment as saved."""
    model = VideoModel.from_seed(0, "micro")
    opt = trained_a_step(model)
    run = RunDir(tmp_path / "run")
    run.save(model, run.resume(model, opt), opt, 3)
    dit = model.config.dit
    c, p = dit.out_dim, math.prod(dit.patch_size)
    for path in (run.state, run.ema):  # rewrite both as format 1: rows in the old order
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() | {"format_version": "1"}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        old = {k: head_rows(v, p, c) if "head.head" in k else v for k, v in tensors.items()}
        save_file(old, str(path), metadata=meta)
    state = opt.state_dict()
    params = list(model.dit.parameters())
    weight = next(i for i, q in enumerate(params) if q is model.dit.head.head.weight)
    old_moment = state["state"][weight]["exp_avg"].clone()
    state["state"][weight]["exp_avg"] = head_rows(old_moment, p, c)
    torch.save(state, run.opt)

    model2 = VideoModel.from_seed(2, "micro")
    assert RunDir(tmp_path / "run").load_model(model2, None, vae="unused") == 3
    opt2 = torch.optim.AdamW(model2.dit.parameters(), lr=1e-2)
    RunDir(tmp_path / "run").resume(model2, opt2)
    assert torch.equal(model2.dit.head.head.weight, model.dit.head.head.weight)
    assert torch.equal(opt2.state[model2.dit.head.head.weight]["exp_avg"], old_moment)
    assert not torch.equal(head_rows(old_moment, p, c), old_moment)  # the reorder moves rows
