"""The denoiser keeps Wan2.1's parameter names and shapes, so real checkpoints load."""

from __future__ import annotations

import pytest
import torch

from model.config import PRESETS
from model.dit import WanModel
from model.errors import CheckpointError
from model.wan.checkpoints import check_fits
from model.wan.keys import WRAPPERS

# Published Wan2.1-T2V-1.3B tensors (dim 1536, ffn 8960, 12 heads, 30 layers, text 4096).
WAN_13B_SHAPES = {
    "patch_embedding.weight": (1536, 16, 1, 2, 2),
    "text_embedding.0.weight": (1536, 4096),
    "text_embedding.2.weight": (1536, 1536),
    "time_embedding.0.weight": (1536, 256),
    "time_projection.1.weight": (9216, 1536),
    "blocks.0.self_attn.q.weight": (1536, 1536),
    "blocks.0.self_attn.norm_q.weight": (1536,),
    "blocks.0.self_attn.norm_k.weight": (1536,),
    "blocks.0.norm3.weight": (1536,),
    "blocks.0.cross_attn.k.weight": (1536, 1536),
    "blocks.0.cross_attn.norm_k.weight": (1536,),
    "blocks.0.ffn.0.weight": (8960, 1536),
    "blocks.0.ffn.2.weight": (1536, 8960),
    "blocks.0.modulation": (1, 6, 1536),
    "blocks.29.self_attn.o.weight": (1536, 1536),
    "head.head.weight": (64, 1536),
    "head.modulation": (1, 2, 1536),
}


@pytest.fixture(scope="module")
def wan13b() -> WanModel:
    with torch.device("meta"):  # shapes only: no memory for 1.3 B parameters
        return WanModel(PRESETS["wan-1.3b"].dit)


def test_wan_1_3b_preset_has_the_published_names_and_shapes(wan13b):
    """Every listed Wan2.1-T2V-1.3B tensor exists here under its Wan name and shape."""
    state = wan13b.state_dict()
    for name, shape in WAN_13B_SHAPES.items():
        assert tuple(state[name].shape) == shape, name
    n = sum(p.numel() for p in wan13b.parameters())
    assert 1.2e9 < n < 1.6e9


def test_self_forcing_style_prefixes_are_stripped():
    """A state dict saved with wrapper prefixes (generator.model.*, FSDP) maps onto the
    model; an extra or a missing key is named."""
    m = WanModel(PRESETS["micro"].dit)
    wrapped = {f"generator.model._fsdp_wrapped_module.{k}": v for k, v in m.state_dict().items()}
    renamed = WRAPPERS(wrapped)
    check_fits(renamed, m, "ckpt")
    m.load_state_dict(renamed, strict=True)
    extra = WRAPPERS({**wrapped, "model.img_emb.proj.0.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"unexpected 1 key.*img_emb"):
        check_fits(extra, m, "ckpt")
    wrapped.pop("generator.model._fsdp_wrapped_module.head.head.weight")
    with pytest.raises(CheckpointError, match=r"missing 1 key.*head\.head\.weight"):
        check_fits(WRAPPERS(wrapped), m, "ckpt")
