"""Key layouts of Wan2.1 denoiser state dicts, and the mappers to ours.

Our WanModel keeps the original Wan2.1 names (`blocks.N.self_attn.q`, `head.head`, ...).
Each source layout is one `KeyMapper`: prefixes to strip, then an ordered table of renames
(regular expressions), then keys to drop. A layout is told from signature keys, never from
file names (as diffusers' `infer_diffusers_model_type` does).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from model.errors import CheckpointError


@dataclass(frozen=True)
class KeyMapper:
    """Renames as data: strip `prefixes` (repeatedly, any order) and `infixes`, apply
    `renames` in order, drop keys matching `drop`."""

    prefixes: tuple[str, ...] = ()
    infixes: tuple[str, ...] = ()
    renames: tuple[tuple[str, str], ...] = ()
    drop: tuple[str, ...] = ()

    def name(self, key: str) -> str | None:
        """The mapped name of `key`, or None when it is dropped."""
        changed = True
        while changed:
            changed = False
            for p in self.prefixes:
                if key.startswith(p):
                    key, changed = key[len(p) :], True
        for infix in self.infixes:
            key = key.replace(infix, "")
        for pattern, repl in self.renames:
            key = re.sub(pattern, repl, key)
        if any(re.search(d, key) for d in self.drop):
            return None
        return key

    def __call__(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for key, value in state.items():
            name = self.name(key)
            if name is None:
                continue
            if name in out:
                raise CheckpointError(f"two keys map to {name!r} (one is {key!r})", value=key)
            out[name] = value
        return out


# What training frameworks wrap a Wan denoiser's keys in: FSDP, activation checkpointing,
# the Self-Forcing / CausVid / LongLive wrappers (`model.`, `generator.`), DDP (`module.`),
# and ComfyUI-style single files (`model.diffusion_model.`).
WRAPPERS = KeyMapper(
    prefixes=("_fsdp_wrapped_module.", "generator.", "model.", "module.", "diffusion_model."),
    infixes=("._fsdp_wrapped_module", "._checkpoint_wrapped_module", "._orig_mod"),
)

# diffusers' WanTransformer3DModel -> original Wan2.1 names: the reverse of diffusers' own
# table (`convert_wan_transformer_to_diffusers`). diffusers' block norm2 is the
# cross-attention norm (Wan's norm3); its norm1/norm3 carry no parameters.
DIFFUSERS = KeyMapper(
    prefixes=WRAPPERS.prefixes,
    infixes=WRAPPERS.infixes,
    renames=(
        (r"^condition_embedder\.time_embedder\.linear_1\.", "time_embedding.0."),
        (r"^condition_embedder\.time_embedder\.linear_2\.", "time_embedding.2."),
        (r"^condition_embedder\.text_embedder\.linear_1\.", "text_embedding.0."),
        (r"^condition_embedder\.text_embedder\.linear_2\.", "text_embedding.2."),
        (r"^condition_embedder\.time_proj\.", "time_projection.1."),
        (r"^scale_shift_table$", "head.modulation"),
        (r"^proj_out\.", "head.head."),
        (r"\.scale_shift_table$", ".modulation"),
        (r"\.attn1\.", ".self_attn."),
        (r"\.attn2\.", ".cross_attn."),
        (r"\.to_out\.0\.", ".o."),
        (r"\.to_([qkv])\.", r".\1."),
        (r"\.ffn\.net\.0\.proj\.", ".ffn.0."),
        (r"\.ffn\.net\.2\.", ".ffn.2."),
        (r"\.norm2\.", ".norm3."),
    ),
)

ORIGINAL = WRAPPERS  # original Wan2.1 names are ours: only wrappers to strip

MAPPERS = {"diffusers": DIFFUSERS, "original": ORIGINAL}

# Keys only one layout has (after the wrappers are stripped).
SIGNATURES = {
    "diffusers": ("condition_embedder.time_proj.weight", "scale_shift_table"),
    "original": ("time_projection.1.weight", "head.modulation"),
}


def detect_layout(state: dict[str, torch.Tensor]) -> str:
    """'diffusers' or 'original', from signature keys; CheckpointError if neither."""
    names = {WRAPPERS.name(k) for k in state}
    for layout, keys in SIGNATURES.items():
        if any(k in names for k in keys):
            return layout
    sample = sorted(state)[:3]
    raise CheckpointError(
        "not a Wan2.1 denoiser: none of its signature keys "
        f"({', '.join(k for keys in SIGNATURES.values() for k in keys)}) is present; "
        f"its first keys are {sample}",
        value=sample,
    )


def to_wan_names(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """(state in original Wan names = ours, the layout it came in)."""
    layout = detect_layout(state)
    return MAPPERS[layout](state), layout
