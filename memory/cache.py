"""The context cache of one stream: preallocated keys/values and latents of past frames.

Storage is allocated once, at construction, from the policy's slot count; writing a frame
copies into its slot, so the same buffers (same data pointers, same bytes) serve chunk 10
and chunk 2,000. `nbytes` is the exact size of that storage.

Keys are stored before rotary embedding (see model/dit.py): `attn_context` gives each
context frame a position 0..n-1 in order, and the chunk being generated continues from n,
so positions stay bounded however long the stream runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from memory.policy import CachePolicy
from model.dit import AttnContext, WanModel


@dataclass(frozen=True)
class CacheLayout:
    num_layers: int
    tokens_per_frame: int
    num_heads: int
    head_dim: int
    z_dim: int
    latent_h: int
    latent_w: int
    dtype: torch.dtype
    device: torch.device = torch.device("cpu")  # where the storage lives: the denoiser's

    @classmethod
    def for_model(cls, dit: WanModel, z_dim: int, latent_h: int, latent_w: int, dtype):
        cfg = dit.cfg
        return cls(
            cfg.num_layers,
            dit.tokens_per_frame(latent_h, latent_w),
            cfg.num_heads,
            cfg.dim // cfg.num_heads,
            z_dim,
            latent_h,
            latent_w,
            dtype,
            dit.patch_embedding.weight.device,
        )


class ContextCache:
    """Keys, values and latents of past latent frames in fixed slots."""

    def __init__(self, layout: CacheLayout, policy: CachePolicy):
        self.layout = layout
        self.policy = policy
        n, L = policy.slots, layout
        kv_shape = (L.num_layers, n, L.tokens_per_frame, L.num_heads, L.head_dim)
        self.k = torch.zeros(kv_shape, dtype=L.dtype, device=L.device)
        self.v = torch.zeros(kv_shape, dtype=L.dtype, device=L.device)
        shape = (n, L.z_dim, L.latent_h, L.latent_w)
        self.latents = torch.zeros(shape, dtype=L.dtype, device=L.device)
        self.head = 0  # global index of the next latent frame to be written
        self.prompt_key: object = None  # identity of the prompt the keys/values were made under

    # -- accounting ----------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.k, self.v, self.latents))

    def data_ptrs(self) -> tuple[int, int, int]:
        return self.k.data_ptr(), self.v.data_ptr(), self.latents.data_ptr()

    # -- reading -------------------------------------------------------------------------
    def context_frames(self) -> list[int]:
        return self.policy.context(self.head)

    def context_latents(self) -> torch.Tensor:
        """(1, z, n, h, w) latents of the current context frames."""
        slots = [self.policy.slot_for(g) for g in self.context_frames()]
        return self.latents[slots].permute(1, 0, 2, 3).unsqueeze(0)

    def attn_context(self, model: WanModel) -> AttnContext | None:
        """Gather the context's keys/values (a bounded temporary) with positions 0..n-1."""
        frames = self.context_frames()
        if not frames:
            return None
        slots = torch.tensor([self.policy.slot_for(g) for g in frames], device=self.k.device)
        L = self.layout
        n_tok = len(frames) * L.tokens_per_frame
        kv = [
            (
                self.k[i, slots].reshape(1, n_tok, L.num_heads, L.head_dim),
                self.v[i, slots].reshape(1, n_tok, L.num_heads, L.head_dim),
            )
            for i in range(L.num_layers)
        ]
        positions = torch.arange(len(frames), device=self.k.device)
        angles = model.frame_angles(positions, L.latent_h, L.latent_w)
        return AttnContext(kv, angles)

    # -- writing -------------------------------------------------------------------------
    def write(self, frames: list[int], latents: torch.Tensor, kvs, skip=frozenset()) -> None:
        """Store latents (1, z, F, h, w) and per-layer (k, v) (1, F*tokens, heads, hd) of
        `frames`, except those in `skip` (kept as they are)."""
        L = self.layout
        slots = [self.policy.slot_for(g) for g in frames]
        keep = [(j, s) for j, s in enumerate(slots) if s is not None and frames[j] not in skip]
        for j, s in keep:
            self.latents[s].copy_(latents[0, :, j])
        for i, (k, v) in enumerate(kvs):
            k = k.view(len(frames), L.tokens_per_frame, L.num_heads, L.head_dim)
            v = v.view(len(frames), L.tokens_per_frame, L.num_heads, L.head_dim)
            for j, s in keep:
                self.k[i, s].copy_(k[j])
                self.v[i, s].copy_(v[j])

    def advance(self, n: int) -> None:
        self.head += n

    def rewind(self, head: int) -> None:
        """Forget frames >= head (their slots are overwritten when regenerated)."""
        if not self.policy.min_rewind(self.head) <= head <= self.head:
            raise ValueError(f"cannot rewind cache from frame {self.head} to {head}")
        self.head = head
