"""A tiny diffusers WanTransformer3DModel with random weights, and helpers to compare it
with our WanModel (shared by the Wan denoiser tests)."""

from __future__ import annotations

import contextlib
import types

import torch
from diffusers import WanTransformer3DModel
from diffusers.models.transformers.transformer_wan import WanAttnProcessor

from model.dit import WanModel
from model.wan.checkpoints import check_fits, dit_config_from_state
from model.wan.keys import DIFFUSERS

HEADS = 2
TINY = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=HEADS,
    attention_head_dim=16,
    in_channels=4,
    out_channels=4,
    text_dim=24,
    freq_dim=32,
    ffn_dim=64,
    num_layers=2,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
)


def tiny_diffusers(seed: int = 0) -> WanTransformer3DModel:
    """The tiny diffusers denoiser, random weights from `seed` (biases too: none is zero)."""
    torch.manual_seed(seed)
    model = WanTransformer3DModel(**TINY).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def ours_from(diff: WanTransformer3DModel) -> WanModel:
    """Our WanModel holding `diff`'s weights, through the diffusers key mapper."""
    state = DIFFUSERS(diff.state_dict())
    model = WanModel(dit_config_from_state(state, heads=HEADS)).eval()
    check_fits(state, model, "tiny diffusers")
    model.load_state_dict(state, strict=True)
    return model


def old_unpatchify(self, x, grid):
    """The reading order before format 2: a token's outputs as (c, pt, ph, pw)."""
    f, h, w = grid
    pt, ph, pw = self.cfg.patch_size
    c = self.cfg.out_dim
    x = x.view(x.shape[0], f, h, w, c, pt, ph, pw).permute(0, 4, 1, 5, 2, 6, 3, 7)
    return x.reshape(x.shape[0], c, f * pt, h * ph, w * pw)


@contextlib.contextmanager
def old_head_order(model: WanModel):
    """Within the block, `model` reads its head in the old (wrong) order."""
    model.unpatchify = types.MethodType(old_unpatchify, model)
    try:
        yield model
    finally:
        del model.unpatchify


class MaskedSelfAttention(WanAttnProcessor):
    """diffusers' Wan attention with a fixed boolean mask (True = may attend): its blocks
    pass no mask to self-attention, so a block-causal run needs this processor."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.mask = mask

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None
    ):
        return super().__call__(attn, hidden_states, encoder_hidden_states, self.mask, rotary_emb)


@contextlib.contextmanager
def masked(diff: WanTransformer3DModel, mask: torch.Tensor):
    """Within the block, every self-attention of `diff` uses `mask`."""
    for block in diff.blocks:
        block.attn1.set_processor(MaskedSelfAttention(mask))
    try:
        yield diff
    finally:
        for block in diff.blocks:
            block.attn1.set_processor(WanAttnProcessor())


def per_token(sigma: torch.Tensor, tokens_per_frame: int) -> torch.Tensor:
    """(B, F) noise levels -> diffusers' 2-D timestep (B, F * tokens), in 0..1000."""
    return (sigma * 1000.0).repeat_interleave(tokens_per_frame, dim=1)
