"""Safetensors checkpoints that carry their config and a format version; strict loading."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from model.config import FORMAT_VERSION, ModelConfig
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
    if version != str(FORMAT_VERSION):
        raise CheckpointError(
            f"{path} has checkpoint format version {version!r}; this endless reads "
            f"version {FORMAT_VERSION}",
            value=version,
        )
    if "config" not in meta:
        raise CheckpointError(f"{path} carries no config in its metadata")
    try:
        config = ModelConfig.from_json(meta["config"])
    except (ConfigError, ValueError) as exc:
        raise CheckpointError(f"{path}: its config cannot be read: {exc}") from exc
    return config, tensors, meta


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
