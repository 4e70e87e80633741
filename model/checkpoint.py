"""Safetensors checkpoints that carry their config and a format version; strict loading."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from model.config import FORMAT_VERSION, DiTConfig, ModelConfig
from model.errors import CheckpointError, ConfigError


def save_checkpoint(
    path: str | Path,
    state: dict[str, torch.Tensor],
    config: ModelConfig,
    extra: dict[str, str] | None = None,
) -> None:
    """Write tensors with metadata {format_version, config (JSON), **extra}."""
    meta = {"format_version": str(FORMAT_VERSION), "config": config.to_json(), **(extra or {})}
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(str(path) + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)  # atomic: a crash never leaves half a checkpoint


def read_checkpoint(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor], dict]:
    """Read (config, tensors, metadata); raise CheckpointError with the reason if unusable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}", value=str(path))
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from exc
    version = meta.get("format_version")
    if version not in READABLE_VERSIONS:
        raise CheckpointError(
            f"{path} has checkpoint format version {version!r}; this endless reads "
            f"versions {', '.join(READABLE_VERSIONS)}",
            value=version,
        )
    if "config" not in meta:
        raise CheckpointError(f"{path} carries no config in its metadata")
    try:
        config = ModelConfig.from_json(meta["config"])
    except (ConfigError, ValueError) as exc:
        raise CheckpointError(f"{path}: its config cannot be read: {exc}") from exc
    if version == "1":
        tensors = upgrade_head_order(tensors, config.dit)
    return config, tensors, meta


# Format 1 read a token's head outputs in (c, pt, ph, pw) order; format 2 reads them in
# Wan's (pt, ph, pw, c). A format-1 file is upgraded as it is read, by reordering the rows
# of the head's projection, so it computes exactly what it computed before.
READABLE_VERSIONS = ("1", str(FORMAT_VERSION))
HEAD_KEYS = ("head.head.weight", "head.head.bias")


def head_rows(t: torch.Tensor, first: int, second: int) -> torch.Tensor:
    """Rows of t (first*second, ...) taken as a (first, second) grid, transposed: the rows
    (i, j) -> (j, i). Rows (c, p) -> (p, c) with first=C, second=P, and back with them
    swapped."""
    return t.reshape(first, second, *t.shape[1:]).transpose(0, 1).reshape(t.shape)


def upgrade_head_order(tensors: dict[str, torch.Tensor], dit: DiTConfig) -> dict:
    """A format-1 state dict (any key prefix) with its head rows in Wan's order."""
    c, p = dit.out_dim, math.prod(dit.patch_size)
    return {k: head_rows(v, c, p) if k.endswith(HEAD_KEYS) else v for k, v in tensors.items()}


def load_strict(module: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Load a state dict, failing with the names of missing / unexpected / misshapen keys."""
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    misshapen = [
        f"{k}: file {tuple(tensors[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in tensors and tensors[k].shape != own[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} key(s), e.g. {missing[:3]}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} key(s), e.g. {unexpected[:3]}")
    if misshapen:
        problems.append(f"{len(misshapen)} shape mismatch(es), e.g. {misshapen[:2]}")
    if problems:
        raise CheckpointError(f"{source} does not match the model: " + "; ".join(problems))
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in tensors.items()}, strict=True)
