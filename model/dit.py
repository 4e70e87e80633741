"""Chunk-causal video diffusion transformer following the Wan2.1 block design.

Module and parameter names follow Wan's `WanModel` (patch_embedding, text_embedding,
time_embedding, time_projection, blocks.N.{norm1,self_attn,norm3,cross_attn,norm2,ffn,
modulation}, head.{head,modulation}) so Wan2.1-based causal checkpoints (Self-Forcing,
LongLive) load into this class by renaming a few keys. Differences from the bidirectional
original, as in CausVid / Self-Forcing:
  * the diffusion time is given per latent frame: t is (B, F), modulation is per frame;
  * self-attention is block-causal over chunks: a chunk's tokens see each other and the
    keys/values of the context (cached by memory/), never the future.

Keys are cached *before* rotary embedding; the caller passes the time positions of the
context frames, so a stream can re-index its window and never overflow a position.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from model.attn_context import AttnContext, ContextLayer
from model.config import DiTConfig
from model.rotary import Rope3D, apply_rope
from model.teacher_forcing import TeacherForcingLayout

__all__ = ["AttnContext", "Rope3D", "WanModel", "apply_rope", "block_causal_mask"]


def sinusoidal_embedding_1d(dim: int, position: torch.Tensor) -> torch.Tensor:
    """(N,) -> (N, dim) sinusoidal embedding (cos first, as Wan)."""
    half = dim // 2
    inv = torch.pow(10000, -torch.arange(half, dtype=torch.float64, device=position.device) / half)
    angles = torch.outer(position.double(), inv)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1).float()


class WanRMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return xf.type_as(x) * self.weight.to(x.dtype)


class WanLayerNorm(nn.LayerNorm):
    def __init__(self, dim: int, eps: float = 1e-6, elementwise_affine: bool = False):
        super().__init__(dim, eps=eps, elementwise_affine=elementwise_affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).type_as(x)


def attend(q: torch.Tensor, k: torch.Tensor, values: torch.Tensor, mask) -> torch.Tensor:
    """q, k (B, heads, N, hd) and values (B, Nk, heads, hd) -> (B, N, heads, hd)."""
    values = values.transpose(1, 2)
    if isinstance(mask, TeacherForcingLayout):  # training: same result, far less work
        return mask.attend(q, k, values).transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, values, attn_mask=mask).transpose(1, 2)


class WanSelfAttention(nn.Module):
    """Self-attention with 3D rotary embedding on queries and keys (Wan's).

    relative_values adds a second read of the same attention weights: each value rotated by
    its key's position, the sum rotated back by the query's, so it carries the attended
    tokens' positions relative to the query (sum_j a_ij R(p_j - p_i) v_j). Su Jianlin calls
    this VO-RoPE ("The second type of rotary position encoding", kexue.fm/archives/10862,
    2025); RoVE (arXiv 2606.11275) studies it in language models. Plain RoPE values carry
    no position, so without it a token learns where a moving object was a frame ago only
    through which offsets its heads prefer. Its own projection `o_rel` starts at zero: a
    trained model gains it unchanged.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qk_norm: bool = True,
        eps: float = 1e-6,
        relative_values: bool = False,
    ):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = WanRMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k = WanRMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.o_rel = nn.Linear(dim, dim, bias=False) if relative_values else None

    def project_kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-rotary keys and values of x (B, N, dim) -> 2 x (B, N, heads, hd)."""
        b, n, _ = x.shape
        k = self.norm_k(self.k(x)).view(b, n, self.num_heads, self.head_dim)
        v = self.v(x).view(b, n, self.num_heads, self.head_dim)
        return k, v

    def forward(self, x, angles, ctx_kv=None, ctx_angles=None, mask=None):
        """x (B, N, dim); returns (out (B, N, dim), (k, v) of x pre-rotary)."""
        b, n, _ = x.shape
        q = self.norm_q(self.q(x)).view(b, n, self.num_heads, self.head_dim)
        k_raw, v = self.project_kv(x)
        q = apply_rope(q, angles)
        k = apply_rope(k_raw, angles)
        if ctx_kv is not None:  # one cached context serves a batch (e.g. CFG's pair)
            if not isinstance(ctx_kv, ContextLayer):  # pre-rotary (k, v)
                ctx_kv = ContextLayer(*ctx_kv, ctx_angles)
            k, v_all = ctx_kv.join(k, v)
        else:
            v_all = v
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        y = self.o(attend(q, k, v_all, mask).reshape(b, n, -1))
        if self.o_rel is not None:  # a second call: CPU kernels fuse only equal q/v widths
            key_angles = angles if ctx_kv is None else torch.cat([ctx_kv.angles, angles])
            rel = apply_rope(attend(q, k, apply_rope(v_all, key_angles), mask), -angles)
            y = y + self.o_rel(rel.reshape(b, n, -1))
        return y, (k_raw, v)


class WanCrossAttention(WanSelfAttention):
    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q = self.norm_q(self.q(x)).view(b, n, self.num_heads, self.head_dim)
        k, v = self.project_kv(context)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        )
        return self.o(out.transpose(1, 2).reshape(b, n, -1))


class WanAttentionBlock(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        d = cfg.dim
        self.norm1 = WanLayerNorm(d, cfg.eps)
        self.self_attn = WanSelfAttention(
            d, cfg.num_heads, cfg.qk_norm, cfg.eps, cfg.relative_values
        )
        self.norm3 = WanLayerNorm(d, cfg.eps, True) if cfg.cross_attn_norm else nn.Identity()
        self.cross_attn = WanCrossAttention(d, cfg.num_heads, cfg.qk_norm, cfg.eps)
        self.norm2 = WanLayerNorm(d, cfg.eps)
        self.ffn = nn.Sequential(
            nn.Linear(d, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, d)
        )
        self.modulation = nn.Parameter(torch.randn(1, 6, d) / d**0.5)

    def forward(self, x, e, frames, angles, context, ctx_kv=None, ctx_angles=None, mask=None):
        """x (B, N, dim) frame-major; e (B, F, 6, dim) per-frame modulation."""
        b, n, d = x.shape
        mod = (self.modulation[:, None] + e).to(x.dtype).unbind(2)  # 6 x (B, F, dim)

        def per_frame(y):  # (B, N, dim) -> (B, F, N/F, dim) so modulation broadcasts per frame
            return y.view(b, frames, -1, d)

        h = per_frame(self.norm1(x)) * (1 + mod[1][:, :, None]) + mod[0][:, :, None]
        y, kv = self.self_attn(h.view(b, n, d), angles, ctx_kv, ctx_angles, mask)
        x = x + (per_frame(y) * mod[2][:, :, None]).view(b, n, d)
        if context.dim() == 4:  # per-frame prompts (B, F, L, dim): each frame its own text
            y = self.cross_attn(self.norm3(x).view(b * frames, -1, d), context.flatten(0, 1))
            x = x + y.view(b, n, d)
        else:
            x = x + self.cross_attn(self.norm3(x), context)
        h = per_frame(self.norm2(x)) * (1 + mod[4][:, :, None]) + mod[3][:, :, None]
        y = self.ffn(h.view(b, n, d))
        x = x + (per_frame(y) * mod[5][:, :, None]).view(b, n, d)
        return x, kv


class Head(nn.Module):
    def __init__(self, dim: int, out_dim: int, patch_size, eps: float):
        super().__init__()
        self.norm = WanLayerNorm(dim, eps)
        self.head = nn.Linear(dim, out_dim * math.prod(patch_size))
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor, frames: int) -> torch.Tensor:
        """x (B, N, dim), e (B, F, dim) -> (B, N, out_dim * prod(patch))."""
        b, n, d = x.shape
        shift, scale = (self.modulation[:, None] + e[:, :, None]).to(x.dtype).unbind(2)
        h = self.norm(x).view(b, frames, -1, d) * (1 + scale[:, :, None]) + shift[:, :, None]
        return self.head(h.view(b, n, d))


class WanModel(nn.Module):
    """Denoiser: velocity of flow matching for a chunk of latent frames.

    forward(x (B, C, F, H, W), sigma (B, F), context (B, L, text_dim), ...) -> (B, C, F, H, W)
    """

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.patch_embedding = nn.Conv3d(cfg.in_dim, d, cfg.patch_size, stride=cfg.patch_size)
        if cfg.prev_frames:  # the frames before a chunk, patch by patch (see forward)
            patch_cells = cfg.prev_frames * cfg.in_dim * math.prod(cfg.patch_size)
            self.prev_embedding = nn.Linear(patch_cells, d, bias=False)
        self.text_embedding = nn.Sequential(
            nn.Linear(cfg.text_dim, d), nn.GELU(approximate="tanh"), nn.Linear(d, d)
        )
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(d, d * 6))
        self.blocks = nn.ModuleList([WanAttentionBlock(cfg) for _ in range(cfg.num_layers)])
        self.head = Head(d, cfg.out_dim, cfg.patch_size, cfg.eps)
        self.rope = Rope3D(d // cfg.num_heads)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.patch_embedding.weight.flatten(1))
        for m in self.text_embedding.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
        for m in self.time_embedding.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
        nn.init.normal_(self.head.head.weight, std=0.02)
        for _, p in self.grown_parameters():  # no-ops at first: a trained model gains them
            nn.init.zeros_(p)

    def grown_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The optional inputs' parameters (prev_frames, relative_values): zero at first, so
        a checkpoint trained without them loads with them and means the same."""
        return [(n, p) for n, p in self.named_parameters() if grown_parameter(n)]

    # -- pieces --------------------------------------------------------------------------
    def grid(self, x: torch.Tensor) -> tuple[int, int, int]:
        pt, ph, pw = self.cfg.patch_size
        return x.shape[2] // pt, x.shape[3] // ph, x.shape[4] // pw

    def tokens_per_frame(self, height: int, width: int) -> int:
        _, ph, pw = self.cfg.patch_size
        return (height // ph) * (width // pw)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, F, H, W) -> (B, F*h*w, dim) through patch_embedding (a strided conv)."""
        w = self.patch_embedding.weight.flatten(1).to(x.dtype)
        return F.linear(self.patches(x), w, self.patch_embedding.bias.to(x.dtype))

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, F, H, W) -> (B, F*h*w, C*pt*ph*pw): the cells of each token, frame-major."""
        b, c, f, hh, ww = x.shape
        pt, ph, pw = self.cfg.patch_size
        x = x.reshape(b, c, f // pt, pt, hh // ph, ph, ww // pw, pw)
        return x.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, -1, c * pt * ph * pw)

    def unpatchify(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """(B, N, pt*ph*pw*C) head outputs -> (B, C, F, H, W). A token's outputs are read in
        Wan's order (pt, ph, pw, c): channel fastest, as Wan's and diffusers' unpatchify."""
        f, h, w = grid
        pt, ph, pw = self.cfg.patch_size
        c = self.cfg.out_dim
        b = x.shape[0]
        x = x.view(b, f, h, w, pt, ph, pw, c).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.reshape(b, c, f * pt, h * ph, w * pw)

    def time_embeddings(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """sigma (B, F) in [0, 1] -> (e (B, F, dim), e0 (B, F, 6, dim))."""
        b, f = sigma.shape
        emb = sinusoidal_embedding_1d(self.cfg.freq_dim, sigma.reshape(-1) * 1000.0)
        e = self.time_embedding(emb.to(self.patch_embedding.weight.dtype)).view(b, f, -1)
        e0 = self.time_projection(e).view(b, f, 6, -1)
        return e, e0

    def embed_text(self, context: torch.Tensor) -> torch.Tensor:
        return self.text_embedding(context)

    def frame_angles(self, positions: torch.Tensor, height: int, width: int) -> torch.Tensor:
        _, ph, pw = self.cfg.patch_size
        return self.rope.angles(positions, height // ph, width // pw)

    # -- forward -------------------------------------------------------------------------
    def forward(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        context: torch.Tensor,
        positions: torch.Tensor,
        ctx: AttnContext | None = None,
        mask: torch.Tensor | None = None,
        return_kv: bool = False,
        prev: torch.Tensor | None = None,
    ):
        """Velocity for latent frames x (B, C, F, H, W) at noise levels sigma (B, F).

        positions (F,): time index of each latent frame for rotary embedding.
        ctx: cached keys/values of earlier frames (attended to by every token of x).
        context: (B, L, text_dim), or (B, F, L, text_dim) to give each frame its own prompt.
        mask: optional (N, Nctx + N) boolean attention mask (True = may attend), or a
              TeacherForcingLayout, for training on whole sequences chunk-causally.
        return_kv: also return the per-layer pre-rotary (k, v) of x, for caching.
        prev: with cfg.prev_frames = P, (B, P*C, F, H, W): for each frame of x the P latent
              frames before its chunk (zeros where there are none: a stream's first
              chunk, or frames that are context themselves). Embedded patch by patch and
              added to the tokens, so each token sees where the scene just was at its own
              place, sub-token shifts included (a bounce moves a third of a token a frame).
        """
        dev = x.device  # the inputs a caller builds on the host follow x to its device
        sigma, context, positions = sigma.to(dev), context.to(dev), positions.to(dev)
        if isinstance(mask, torch.Tensor):
            mask = mask.to(dev)
        grid = self.grid(x)
        frames = grid[0]
        tokens = self.patchify(x)  # (B, N, dim)
        if self.cfg.prev_frames and prev is not None:
            tokens = tokens + self.prev_embedding(self.patches(prev.to(tokens.dtype)))
        e, e0 = self.time_embeddings(sigma)
        text = self.embed_text(context)  # (B, L, dim)
        angles = self.frame_angles(positions, x.shape[3], x.shape[4])
        kvs = []
        for i, block in enumerate(self.blocks):
            ctx_kv = ctx.layer(i) if ctx is not None else None  # rotated once per chunk
            ctx_angles = ctx.angles if ctx is not None else None
            tokens, kv = block(tokens, e0, frames, angles, text, ctx_kv, ctx_angles, mask)
            if return_kv:
                kvs.append(kv)
        out = self.unpatchify(self.head(tokens, e, frames), grid)
        return (out, kvs) if return_kv else out


def grown_parameter(name: str) -> bool:
    """Whether a WanModel parameter belongs to an optional input grown on a trained model."""
    return name.startswith("prev_embedding.") or ".self_attn.o_rel." in name


def chunk_prev(before: torch.Tensor | None, frames: int) -> torch.Tensor | None:
    """The `prev` input of a chunk of `frames` latent frames: the latents before it,
    `before` (B, C, P, H, W), folded to (B, P*C, frames, H, W) (the same for every frame)."""
    if before is None:
        return None
    b, c, p, h, w = before.shape
    folded = before.transpose(1, 2).reshape(b, p * c, 1, h, w)
    return folded.expand(b, p * c, frames, h, w)


def prev_of_chunks(x: torch.Tensor, chunk: int, p: int) -> torch.Tensor:
    """The `prev` input for a sequence x (B, C, n, H, W) made chunk by chunk (training's
    teacher forcing): each frame of chunk c gets the p latent frames before chunk c, as
    `chunk_prev` folds them, or zeros where fewer than p come before (a stream's first
    chunk). Returns (B, p*C, n, H, W)."""
    b, c, n, h, w = x.shape
    out = x.new_zeros((b, p * c, n, h, w))
    for start in range(0, n, chunk):
        if start >= p:
            frames = min(chunk, n - start)
            out[:, :, start : start + frames] = chunk_prev(x[:, :, start - p : start], frames)
    return out


def block_causal_mask(
    q_chunks: list[int], k_chunks: list[int], tokens_per_frame: int, device=None
) -> torch.Tensor:
    """Boolean (Nq, Nk) mask on `device`: a token of chunk c may attend to keys of chunks
    <= c (built where it is used: at full size it is hundreds of MB).

    q_chunks / k_chunks give the chunk id of each query / key latent frame.
    """
    q = torch.tensor(q_chunks, device=device).repeat_interleave(tokens_per_frame)
    k = torch.tensor(k_chunks, device=device).repeat_interleave(tokens_per_frame)
    return k[None, :] <= q[:, None]
