"""Refuse a model the chosen device cannot hold, before anything is built.

Needed = the family preset's estimate for the denoiser at this size and dtype (weights,
the preallocated sink + window cache, activations: `WanFamily.memory_bytes`) + the VAE's
and the text encoder's weights in that dtype + the decoder states a stream keeps (one per
chunk it can rewind to, and the one being made: Wan's VAE caches two frames of every
causal conv's input, 1.76 GiB at 832x480 in bf16). Available = free memory on a CUDA device
(`torch.cuda.mem_get_info`), or the host's MemAvailable for the CPU.
"""

from __future__ import annotations

from pathlib import Path

import torch

from model.errors import ConfigError

GIB = 1024**3


def available_bytes(device: str) -> int:
    """Free memory on `device` ("cpu", "cuda", "cuda:1", ...)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return int(free)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def weight_bytes(states: list[dict[str, torch.Tensor]], dtype: torch.dtype) -> int:
    """Bytes the tensors of `states` take in `dtype` (tied tensors counted once)."""
    seen, total = set(), 0
    size = torch.empty((), dtype=dtype).element_size()
    for state in states:
        for t in state.values():
            key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
            if key not in seen:
                seen.add(key)
                total += t.numel() * size
    return total


def check_memory(
    family, dit_config, dtype, height, width, other_states, device: str, extra: int = 0
) -> int:
    """Raise ConfigError, saying how much is needed and how much is free, unless `device`
    can hold the model (and `extra` bytes more); returns the bytes needed."""
    needed = int(family.memory_bytes(dit_config, dtype, height, width)) + extra
    needed += weight_bytes(other_states, dtype)
    free = available_bytes(device)
    if needed > free:
        raise ConfigError(
            f"not enough memory on {device}: this model needs about {needed / GIB:.1f} GiB "
            f"at {width}x{height} in {str(dtype).removeprefix('torch.')}, and "
            f"{free / GIB:.1f} GiB is free",
            value=needed,
        )
    return needed
