"""The head's outputs are read in Wan's order, and the shipped weights mean what they meant.

Format 1 read a token's outputs as (c, pt, ph, pw); Wan (and format 2) as (pt, ph, pw, c).
The shipped file is format 1 and is upgraded as it is read; here the pre-change model is
rebuilt explicitly (the file's rows as stored, the old reading order) and compared.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from safetensors import safe_open

from memory.stream import Stream
from model.bundle import DEFAULT_WEIGHTS, VideoModel
from model.checkpoint import head_rows, load_strict, read_checkpoint

torch.set_num_threads(1)

PROMPT = "a big red circle bouncing over the ocean"
SWITCH = "a small cyan square standing still in the night"


def old_unpatchify(self, x, grid):
    """The pre-change reading: a token's outputs as (c, pt, ph, pw)."""
    f, h, w = grid
    pt, ph, pw = self.cfg.patch_size
    c = self.cfg.out_dim
    b = x.shape[0]
    x = x.view(b, f, h, w, c, pt, ph, pw).permute(0, 4, 1, 5, 2, 6, 3, 7)
    return x.reshape(b, c, f * pt, h * ph, w * pw)


def pre_change_model() -> VideoModel:
    """The shipped weights as stored in the file, read the way format 1 read them."""
    config, _, _ = read_checkpoint(DEFAULT_WEIGHTS)
    with safe_open(str(DEFAULT_WEIGHTS), framework="pt") as f:
        assert f.metadata()["format_version"] == "1"
        raw = {k: f.get_tensor(k) for k in f.keys()}
    model = VideoModel(config, dtype=torch.float32)
    load_strict(model, raw, "raw")
    model.dit.unpatchify = types.MethodType(old_unpatchify, model.dit)
    return model


def frames_of(model: VideoModel, chunks: int) -> np.ndarray:
    s = Stream(model, PROMPT, seed=11)
    out = []
    for k in range(chunks):
        if k == 2:
            s.set_prompt(SWITCH)
        out.append(s.next_chunk())
    return np.concatenate(out)


@pytest.fixture(scope="module")
def shipped() -> VideoModel:
    return VideoModel.load_default(dtype=torch.float32)


def test_shipped_weights_render_the_same_frames_as_before(shipped):
    """The upgraded shipped model renders, bit for bit, the frames of the pre-change model
    (3 chunks, seed 11, a prompt switch at chunk 2)."""
    new = frames_of(shipped, 3)
    old = frames_of(pre_change_model(), 3)
    assert new.shape == old.shape and np.array_equal(new, old)


def test_denoiser_output_is_unchanged_and_the_wrong_order_is_not(shipped):
    """The upgraded denoiser's velocity equals the pre-change one (max diff ~0); reading the
    upgraded rows the old way (the wrong order) gives a different field."""
    old = pre_change_model()
    cfg = shipped.config.dit
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, cfg.in_dim, 3, 16, 16, generator=g)
    sigma = torch.tensor([[0.9, 0.5, 0.2]])
    text = torch.randn(1, cfg.text_len, cfg.text_dim, generator=g)
    pos = torch.arange(3)
    with torch.no_grad():
        v_new = shipped.dit(x, sigma, text, pos)
        v_old = old.dit(x, sigma, text, pos)
        assert (v_new - v_old).abs().max().item() < 1e-6
        shipped.dit.unpatchify = types.MethodType(old_unpatchify, shipped.dit)
        try:
            v_wrong = shipped.dit(x, sigma, text, pos)
        finally:
            del shipped.dit.unpatchify
    assert (v_wrong - v_new).abs().max().item() > 0.1


def test_head_rows_round_trip():
    """Reordering head rows (c, p) -> (p, c) and back is the identity, and moves row
    c*P + p to p*C + c."""
    c, p = 3, 4
    t = torch.arange(c * p * 2, dtype=torch.float32).view(c * p, 2)
    wan = head_rows(t, c, p)
    assert torch.equal(head_rows(wan, p, c), t)
    for ci in range(c):
        for pi in range(p):
            assert torch.equal(wan[pi * c + ci], t[ci * p + pi])
