"""Load Wan2.1-based causal checkpoints (Self-Forcing, LongLive, CausVid) into WanModel.

Our denoiser keeps Wan2.1's module and parameter names, so a Wan state dict maps onto it
by stripping the wrapper prefixes those projects add (`model.`, `generator.`, `module.`,
`_fsdp_wrapped_module.`). Everything else must match exactly: an unknown key or a shape
that differs is an error, never silently skipped. The text encoder (umT5-XXL, 4096-d) and
Wan's VAE are separate files, converted by their own loaders.
"""

from __future__ import annotations

import torch

from model.dit import WanModel
from model.errors import CheckpointError

WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "generator.", "model.", "module.")


def strip_wrappers(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in WRAPPER_PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p) :], True
    return key.replace("._fsdp_wrapped_module", "").replace("._checkpoint_wrapped_module", "")


def wan_to_endless(state: dict[str, torch.Tensor], model: WanModel) -> dict[str, torch.Tensor]:
    """Rename a Wan2.1-style denoiser state dict to this model's keys; check shapes."""
    own = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = strip_wrappers(key)
        if name not in own:
            raise CheckpointError(f"Wan key {key!r} ({name!r}) has no place in this model")
        if tuple(value.shape) != tuple(own[name].shape):
            raise CheckpointError(
                f"Wan key {key!r}: shape {tuple(value.shape)} vs {tuple(own[name].shape)}"
            )
        out[name] = value
    missing = sorted(set(own) - set(out))
    if missing:
        raise CheckpointError(f"the Wan checkpoint lacks {len(missing)} key(s), e.g. {missing[:3]}")
    return out
