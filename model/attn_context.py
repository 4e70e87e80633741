"""The cached context a chunk attends to: its keys rotated once per chunk, not per step.

A chunk's denoising steps all attend to the same context (the sink and window of its
stream), so each layer's context keys are rotated, cast and expanded to the batch once,
on first use, and kept with the context. At inference the step's own keys and values are
written behind them into one buffer per layer, in place of concatenating the whole
context again at every step of every layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from model.rotary import apply_rope


class ContextLayer:
    """One layer's context: pre-rotary keys and values (1 or B, Nctx, heads, hd)."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor, angles: torch.Tensor):
        self.k, self.v, self.angles = k, v, angles
        self._rotated: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self._joined: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def rotated(self, dtype: torch.dtype, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys rotated to their positions and the values, in `dtype`, `batch` rows."""
        key = (dtype, batch)
        if key not in self._rotated:
            ck, cv = (t.to(dtype).expand(batch, -1, -1, -1) for t in (self.k, self.v))
            self._rotated[key] = apply_rope(ck, self.angles), cv
        return self._rotated[key]

    def join(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[context | k] and [context | v] along the tokens, k and v rotated (B, N, heads, hd)."""
        b, n = k.shape[:2]
        ck, cv = self.rotated(k.dtype, b)
        if torch.is_grad_enabled():  # training: autograd needs fresh tensors
            return torch.cat([ck, k], dim=1), torch.cat([cv, v], dim=1)
        key = (k.dtype, b, n)
        if key not in self._joined:
            self._joined[key] = torch.cat([ck, k], dim=1), torch.cat([cv, v], dim=1)
            return self._joined[key]
        keys, values = self._joined[key]
        keys[:, ck.shape[1] :] = k
        values[:, cv.shape[1] :] = v
        return keys, values


@dataclass
class AttnContext:
    """Keys/values a chunk attends to besides itself, one (k, v) per layer, pre-rotary."""

    kv: list[tuple[torch.Tensor, torch.Tensor]]  # each (B, Nctx, heads, head_dim)
    angles: torch.Tensor  # (Nctx, head_dim/2) rotary angles of the context tokens
    _layers: dict[int, ContextLayer] = field(default_factory=dict, repr=False, compare=False)

    def layer(self, i: int) -> ContextLayer:
        if i not in self._layers:
            self._layers[i] = ContextLayer(*self.kv[i], self.angles)
        return self._layers[i]
