"""Wan's 3D rotary position embedding: angles for a grid of frames, and the rotation."""

from __future__ import annotations

import torch


class Rope3D:
    """3D rotary embedding: head_dim split into time / height / width parts (Wan's split)."""

    def __init__(self, head_dim: int, theta: float = 10000.0):
        assert head_dim % 2 == 0
        d = head_dim
        parts = (d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6))  # (t, h, w)
        self.inv_freq = [
            1.0 / theta ** (torch.arange(0, p, 2, dtype=torch.float64) / p) for p in parts
        ]

    def angles(self, t: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Angles (len(t)*h*w, head_dim/2) for frames at time positions t, frame-major,
        computed in float64 on t's device (no copy of t back to the host)."""
        dev = t.device
        inv_t, inv_h, inv_w = (f.to(dev) for f in self.inv_freq)
        grid_t = torch.outer(t.double(), inv_t)  # (F, dt/2)
        grid_h = torch.outer(torch.arange(h, dtype=torch.float64, device=dev), inv_h)
        grid_w = torch.outer(torch.arange(w, dtype=torch.float64, device=dev), inv_w)
        n_t = len(t)
        a = torch.cat(
            [
                grid_t[:, None, None, :].expand(n_t, h, w, -1),
                grid_h[None, :, None, :].expand(n_t, h, w, -1),
                grid_w[None, None, :, :].expand(n_t, h, w, -1),
            ],
            dim=-1,
        )
        return a.reshape(n_t * h * w, -1).float()


def apply_rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs of x (B, N, heads, hd) by angles (N, hd/2)."""
    cos = torch.cos(angles)[None, :, None, :].to(x.dtype)
    sin = torch.sin(angles)[None, :, None, :].to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.flatten(-2)
