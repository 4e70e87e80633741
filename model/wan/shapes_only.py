"""Read a checkpoint's tensors as shapes only (meta tensors): no weight is read or kept.

The server's front end needs a Wan model's configuration, its VAE's frame arithmetic and
its prompt kind, never its weights: those are the engine process's. Within
`shapes_only()`, `read_tensors` gives meta tensors of the right shapes and dtypes, so the
same loading code builds the model on the meta device and checks every key and shape.
"""

from __future__ import annotations

import contextlib
import contextvars

import torch
from safetensors import safe_open

_ACTIVE = contextvars.ContextVar("endless_shapes_only", default=False)


@contextlib.contextmanager
def shapes_only():
    token = _ACTIVE.set(True)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def active() -> bool:
    return _ACTIVE.get()


_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def safetensors_shapes(path: str) -> dict[str, torch.Tensor]:
    """Meta tensors for every entry of a safetensors file, from its header alone."""
    out = {}
    with safe_open(path, framework="pt") as f:
        for key in f.keys():
            part = f.get_slice(key)
            dtype = _SAFETENSORS_DTYPES.get(part.get_dtype(), torch.float32)
            out[key] = torch.empty(part.get_shape(), dtype=dtype, device="meta")
    return out


def to_meta(tree):
    """The same nesting of dicts with each tensor replaced by a meta tensor (a mapped
    pickle's data is never touched)."""
    if isinstance(tree, torch.Tensor):
        return torch.empty(tree.shape, dtype=tree.dtype, device="meta")
    if isinstance(tree, dict):
        return {k: to_meta(v) for k, v in tree.items()}
    return tree
