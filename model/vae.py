"""Causal 3D VAE that encodes and decodes chunk by chunk with a bounded carry-over state.

Layout (CogVideoX / Wan style compression, shaped for cheap CPU decoding):
    frames (B, 3, T, H, W) in [-1, 1]
      -> group `time_stride` frames and unshuffle 4x4 pixels into channels (lossless)
      -> 2D residual convs at H/4 (per latent frame), strided conv to H/8
      -> causal 3D residual convs over latent frames (kernel `time_kernel` in time)
      -> (mean, logvar) of z (B, z_dim, T/time_stride, H/8, W/8)
The decoder mirrors it. Only the causal 3D convs look across latent frames, and each keeps
its last `time_kernel - 1` input frames as carry-over state: decoding a video chunk by
chunk gives exactly the frames of decoding it whole, so chunk seams do not show, and the
state is a fixed size whatever the length of the stream.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import nn

from model.config import VAEConfig

State = list[torch.Tensor | None]  # one carry-over tensor per causal conv


class VideoVAE(ABC, nn.Module):
    """Interface: frames <-> normalised latents, chunk by chunk, the carry-over between
    chunks an explicit value (a list of tensors) that the caller keeps: decoding chunk by
    chunk with it gives the frames of decoding the whole video, and decoding again from a
    kept state gives the same frames again (a stream's rewind)."""

    z_dim: int  # latent channels
    time_stride: int  # frames per latent frame
    space_stride: int  # pixels per latent cell side

    @abstractmethod
    def encode(self, frames: torch.Tensor, state: State | None = None):
        """frames (B, 3, T, H, W) in [-1, 1] -> (normalised latents, new state)."""

    @abstractmethod
    def decode(self, z: torch.Tensor, state: State | None = None):
        """Normalised latents (B, z, F, h, w) -> (frames (B, 3, T, H, W), new state);
        `state` None starts a video."""

    def frames_for(self, latent_frames: int, first: bool) -> int:
        """Frames that `latent_frames` latent frames decode to, at the start of a video
        (`first`) or after it."""
        return latent_frames * self.time_stride


class CausalConv3d(nn.Conv3d):
    """Conv3d with kernel (kt, 3, 3) that only looks back in time; carries kt-1 frames."""

    def __init__(self, cin: int, cout: int, kt: int):
        super().__init__(cin, cout, (kt, 3, 3), padding=(0, 1, 1))
        self.kt = kt

    def forward(self, x: torch.Tensor, carry: torch.Tensor | None):
        """x (B, C, F, H, W) -> (y (B, Cout, F, H, W), new carry (B, C, kt-1, H, W))."""
        if self.kt == 1:
            return super().forward(x), None
        if carry is None:  # start of a video: repeat the first frame (no "black past")
            carry = x[:, :, :1].expand(-1, -1, self.kt - 1, -1, -1)
        xc = torch.cat([carry.to(x.dtype), x], dim=2)
        return super().forward(xc), xc[:, :, -(self.kt - 1) :].detach()


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, c), c)


class ResBlock2d(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(c), nn.Conv2d(c, c, 3, padding=1)
        self.norm2, self.conv2 = _norm(c), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return x + self.conv2(F.silu(self.norm2(h)))


class ResBlock3d(nn.Module):
    """Residual block whose first conv is causal in time; norms are per frame."""

    def __init__(self, c: int, kt: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(c), CausalConv3d(c, c, kt)
        self.norm2, self.conv2 = _norm(c), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor, carry):
        b, c, f, h, w = x.shape
        y = F.silu(self.norm1(_fold(x))).view(b, f, c, h, w).transpose(1, 2)
        y, carry = self.conv1(y, carry)
        y = self.conv2(F.silu(self.norm2(_fold(y))))
        return x + _unfold(y, b, f), carry


def _fold(x: torch.Tensor) -> torch.Tensor:
    """(B, C, F, H, W) -> (B*F, C, H, W)."""
    b, c, f, h, w = x.shape
    return x.transpose(1, 2).reshape(b * f, c, h, w)


def _unfold(x: torch.Tensor, b: int, f: int) -> torch.Tensor:
    """(B*F, C, H, W) -> (B, C, F, H, W)."""
    return x.view(b, f, *x.shape[1:]).transpose(1, 2)


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        cin = 3 * cfg.time_stride * 16
        self.conv_in = nn.Conv2d(cin, cfg.hidden_hi, 3, padding=1)
        self.hi = nn.ModuleList([ResBlock2d(cfg.hidden_hi) for _ in range(cfg.blocks_hi)])
        self.down = nn.Conv2d(cfg.hidden_hi, cfg.hidden_lo, 3, stride=2, padding=1)
        self.lo = nn.ModuleList(
            [ResBlock3d(cfg.hidden_lo, cfg.time_kernel) for _ in range(cfg.blocks_lo)]
        )
        self.norm_out = _norm(cfg.hidden_lo)
        self.conv_out = nn.Conv2d(cfg.hidden_lo, 2 * cfg.z_dim, 1)

    def forward(self, frames: torch.Tensor, state: State | None):
        b, _, t, _, _ = frames.shape
        f = t // self.cfg.time_stride
        x = self.conv_in(space_time_to_depth(frames, self.cfg.time_stride))
        for blk in self.hi:
            x = blk(x)
        x = _unfold(self.down(x), b, f)
        state = state or [None] * len(self.lo)
        new_state = []
        for blk, carry in zip(self.lo, state, strict=True):
            x, carry = blk(x, carry)
            new_state.append(carry)
        moments = self.conv_out(F.silu(self.norm_out(_fold(x))))
        return _unfold(moments, b, f), new_state


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        self.conv_in = CausalConv3d(cfg.z_dim, cfg.hidden_lo, cfg.time_kernel)
        self.lo = nn.ModuleList(
            [ResBlock3d(cfg.hidden_lo, cfg.time_kernel) for _ in range(cfg.blocks_lo)]
        )
        self.up = nn.Conv2d(cfg.hidden_lo, cfg.hidden_hi, 3, padding=1)
        self.hi = nn.ModuleList([ResBlock2d(cfg.hidden_hi) for _ in range(cfg.blocks_hi)])
        self.norm_out = _norm(cfg.hidden_hi)
        self.conv_out = nn.Conv2d(cfg.hidden_hi, 3 * cfg.time_stride * 16, 3, padding=1)

    def forward(self, z: torch.Tensor, state: State | None):
        b, _, f, _, _ = z.shape
        state = state or [None] * (1 + len(self.lo))
        x, c0 = self.conv_in(z, state[0])
        new_state = [c0]
        for blk, carry in zip(self.lo, state[1:], strict=True):
            x, carry = blk(x, carry)
            new_state.append(carry)
        x = F.interpolate(_fold(x), scale_factor=2.0, mode="nearest")
        x = self.up(x)
        for blk in self.hi:
            x = blk(x)
        x = self.conv_out(F.silu(self.norm_out(x)))
        return depth_to_space_time(x, b, f, self.cfg.time_stride), new_state


def space_time_to_depth(frames: torch.Tensor, ts: int) -> torch.Tensor:
    """(B, 3, T, H, W) -> (B*T/ts, 3*ts*16, H/4, W/4): lossless regrouping."""
    b, c, t, h, w = frames.shape
    x = frames.view(b, c, t // ts, ts, h // 4, 4, w // 4, 4)
    x = x.permute(0, 2, 1, 3, 5, 7, 4, 6)  # (B, F, C, ts, 4, 4, h, w)
    return x.reshape(b * (t // ts), c * ts * 16, h // 4, w // 4)


def depth_to_space_time(x: torch.Tensor, b: int, f: int, ts: int) -> torch.Tensor:
    """Inverse of space_time_to_depth: (B*F, 3*ts*16, h, w) -> (B, 3, F*ts, 4h, 4w)."""
    _, _, h, w = x.shape
    x = x.view(b, f, 3, ts, 4, 4, h, w).permute(0, 2, 1, 3, 6, 4, 7, 5)
    return x.reshape(b, 3, f * ts, h * 4, w * 4)


class CausalVAE(VideoVAE):
    """encode(frames) -> normalised latents; decode(latents) -> frames; both stateful."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        self.z_dim, self.time_stride, self.space_stride = (
            cfg.z_dim,
            cfg.time_stride,
            cfg.space_stride,
        )
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        # Per-channel latent statistics, set after training, so the DiT sees ~N(0, 1).
        self.register_buffer("latent_mean", torch.zeros(cfg.z_dim))
        self.register_buffer("latent_std", torch.ones(cfg.z_dim))

    def _scale(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.latent_mean.view(1, -1, 1, 1, 1)) / self.latent_std.view(1, -1, 1, 1, 1)

    def _unscale(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.latent_std.view(1, -1, 1, 1, 1) + self.latent_mean.view(1, -1, 1, 1, 1)

    def encode_moments(self, frames: torch.Tensor, state: State | None = None):
        """frames (B, 3, T, H, W) in [-1, 1] -> (mean, logvar) unscaled, new state."""
        moments, state = self.encoder(frames, state)
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(-30, 20), state

    def encode(self, frames: torch.Tensor, state: State | None = None):
        """frames (B, 3, T, H, W) in [-1, 1] -> (normalised mean latents, new state)."""
        mean, _, state = self.encode_moments(frames, state)
        return self._scale(mean), state

    def decode(self, z: torch.Tensor, state: State | None = None):
        """Normalised latents (B, z, F, h, w) -> (frames (B, 3, F*ts, H, W), new state)."""
        return self.decoder(self._unscale(z), state)

    def decode_raw(self, z: torch.Tensor, state: State | None = None):
        return self.decoder(z, state)


def frames_to_tensor(frames) -> torch.Tensor:
    """uint8 (T, H, W, 3) numpy/tensor -> float (1, 3, T, H, W) in [-1, 1]."""
    x = torch.as_tensor(frames)
    return (x.permute(3, 0, 1, 2).float().unsqueeze(0) / 127.5) - 1.0


def tensor_to_frames(x: torch.Tensor):
    """float (1, 3, T, H, W) in [-1, 1] -> uint8 numpy (T, H, W, 3)."""
    y = ((x[0].float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return y.permute(1, 2, 3, 0).contiguous().cpu().numpy()
