"""Attention layout for chunk-causal teacher forcing, computed block by block.

Training sees a sequence twice, [clean copy | noisy copy], each `chunks` chunks of
`chunk_tokens` tokens:

  * a clean token of chunk c attends to the clean chunks <= c (how the cache was built);
  * a noisy token of chunk c attends to the clean chunks < c (the cached context) and
    to its own noisy chunk, nothing later.

`dense_mask()` states that as a (2N, 2N) boolean mask. Fed to one masked attention call
it wastes most of the work (about two thirds of the pairs are masked) and, on CPU,
takes the slow masked kernel. `attend()` computes the same thing as one unmasked call
per chunk: the clean and the noisy queries of chunk c share the prefix of clean chunks
< c, so they go through together as a batch of 2B with keys [clean < c | own chunk].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class TeacherForcingLayout:
    chunks: int
    chunk_tokens: int

    @property
    def half(self) -> int:
        return self.chunks * self.chunk_tokens

    def dense_mask(self) -> torch.Tensor:
        """(2N, 2N) boolean mask, True where a query may attend to a key."""
        c = torch.arange(self.chunks).repeat_interleave(self.chunk_tokens)
        before_or_same = c[None, :] <= c[:, None]
        before = c[None, :] < c[:, None]
        same = c[None, :] == c[:, None]
        top = torch.cat([before_or_same, torch.zeros_like(same)], dim=1)
        bottom = torch.cat([before, same], dim=1)
        return torch.cat([top, bottom], dim=0)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q, k, v (B, heads, 2N, head_dim) -> attention output of the same shape."""
        b, t, n = q.shape[0], self.chunk_tokens, self.half
        if q.shape[2] != 2 * n or k.shape[2] != 2 * n:
            raise ValueError(f"expected {2 * n} tokens, got q {q.shape[2]}, k {k.shape[2]}")
        clean_out, noisy_out = [], []
        for c in range(self.chunks):
            own = slice(c * t, (c + 1) * t)
            noisy = slice(n + c * t, n + (c + 1) * t)
            out = F.scaled_dot_product_attention(
                torch.cat([q[:, :, own], q[:, :, noisy]]),
                _prefix_plus_own(k, c * t, own, noisy),
                _prefix_plus_own(v, c * t, own, noisy),
            )
            clean_out.append(out[:b])
            noisy_out.append(out[b:])
        return torch.cat(clean_out + noisy_out, dim=2)


def _prefix_plus_own(x: torch.Tensor, prefix: int, own: slice, noisy: slice) -> torch.Tensor:
    """Keys (or values) of chunk c's clean queries, [clean < c | clean c], and of its noisy
    queries, [clean < c | noisy c], stacked on the batch axis."""
    head = x[:, :, :prefix]
    clean = torch.cat([head, x[:, :, own]], dim=2)
    return torch.cat([clean, torch.cat([head, x[:, :, noisy]], dim=2)])
