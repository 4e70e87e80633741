"""Compute precision: which dtype the engine runs in, chosen by name on every tool."""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

import torch

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}  # compute dtypes, by CLI name
DTYPE_CHOICES = ("auto", *sorted(DTYPES))  # what every tool's --dtype accepts


@functools.cache
def cpu_has_amx(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU has AMX bf16 tiles (Linux's `amx_bf16` flag; False elsewhere)."""
    try:
        lines = cpuinfo.read_text().splitlines()
    except OSError:
        return False
    flags = (line.partition(":")[2].split() for line in lines if line.startswith("flags"))
    return any("amx_bf16" in f for f in flags)


def resolve_dtype(name: str, device: str = "cpu") -> torch.dtype:
    """The compute dtype a --dtype name stands for. "auto" is bf16 where bf16 matrix
    products are the fast path (a CUDA GPU, a CPU with AMX) and fp32 on other CPUs, where
    bf16 ran at about half fp32's speed (README, Engine: "dtype follows the CPU")."""
    if name != "auto":
        return DTYPES[name]
    fast_bf16 = torch.device(device).type == "cuda" or cpu_has_amx()
    return torch.bfloat16 if fast_bf16 else torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    """ "float32" or "bfloat16": how reports and `hello` name a compute dtype."""
    return str(dtype).removeprefix("torch.")


def add_dtype_option(parser: argparse.ArgumentParser, default: str = "auto") -> None:
    """`--dtype {auto,bf16,fp32}`, the same on every command-line tool."""
    parser.add_argument(
        "--dtype",
        choices=DTYPE_CHOICES,
        default=default,
        help="compute dtype; auto: bf16 on a GPU or a CPU with AMX, fp32 on other CPUs "
        "(default %(default)s)",
    )


def mixed_precision(device_type: str, name: str):
    """The autocast context for a --dtype name: bf16 autocast, or fp32 throughout (a
    disabled autocast) where the name resolves to fp32."""
    dtype = resolve_dtype(name, device_type)
    return torch.autocast(device_type, dtype=dtype, enabled=dtype != torch.float32)
