"""Spatial super-resolution, a cascade stage after the VAE decode (Imagen Video's idea).

An `Upscaler` turns a chunk of decoded frames into frames `scale` times larger, chunk by
chunk, carrying a small state from one chunk to the next:

    upscale(frames (T, H, W, 3) uint8, state) -> (frames (T, sH, sW, 3) uint8, state)

`state` is None before a stream's first chunk. Any implementation (a bigger network on a
GPU, a real model's own upsampler) that keeps this contract can take the stage's place.

`LearnedUpscaler2x` is the shipped one (model/weights/upscale2x.safetensors, trained by
ops/train_upscaler.py on TinyWorld renders): frame t is made from frames t and t-1 at the
low resolution, so the state is the chunk's last low-resolution frame and upscaling a video
chunk by chunk gives exactly the frames of upscaling it whole (no seams). The network works
at half the input size (pixel unshuffle, lossless) and predicts a residual over bicubic
upsampling, so an untrained network is bicubic.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from model.errors import CheckpointError, ConfigError

UPSCALE_WEIGHTS = Path(__file__).parent / "weights" / "upscale2x.safetensors"
FORMAT = "endless-upscaler-1"


class Upscaler(Protocol):
    scale: int

    def upscale(self, frames: np.ndarray, state: object | None) -> tuple[np.ndarray, object]:
        """uint8 (T, H, W, 3) -> (uint8 (T, scale*H, scale*W, 3), state for the next chunk)."""
        ...


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float (T, 3, H, W) in [-1, 1], contiguous: the convolutions
    take the same path whatever the frames' source (and are faster than channels-last
    here), so a carry restored from a snapshot gives the same frames as the original."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    return (x / 127.5 - 1).contiguous()


def to_frames(x: torch.Tensor) -> np.ndarray:
    """float (T, 3, H, W) in [-1, 1] -> uint8 (T, H, W, 3)."""
    y = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return y.permute(0, 2, 3, 1).contiguous().numpy()


def bicubic(x: torch.Tensor, scale: int) -> torch.Tensor:
    """(T, 3, H, W) -> (T, 3, sH, sW), bicubic (the baseline every learned stage beats)."""
    return F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)


class BicubicUpscaler:
    """Bicubic interpolation: stateless, the baseline of the stage."""

    def __init__(self, scale: int = 2):
        self.scale = scale

    def upscale(self, frames: np.ndarray, state: object | None) -> tuple[np.ndarray, None]:
        return to_frames(bicubic(to_tensor(frames), self.scale)), None


@dataclass(frozen=True)
class UpscalerConfig:
    channels: int = 32  # width of the network at half the input resolution
    blocks: int = 2  # residual blocks
    scale: int = 2  # output / input side


class _Block(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


class UpscaleNet(nn.Module):
    """(current (N, 3, H, W), previous (N, 3, H, W)) -> (N, 3, sH, sW), all in [-1, 1]."""

    def __init__(self, cfg: UpscalerConfig):
        super().__init__()
        self.cfg = cfg
        c, s = cfg.channels, cfg.scale
        self.conv_in = nn.Conv2d(2 * 3 * 4, c, 3, padding=1)  # two frames, unshuffled 2x2
        self.blocks = nn.ModuleList([_Block(c) for _ in range(cfg.blocks)])
        self.conv_out = nn.Conv2d(c, 3 * (2 * s) ** 2, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)  # untrained: exactly bicubic
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, cur: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        s = self.cfg.scale
        x = torch.cat([F.pixel_unshuffle(cur, 2), F.pixel_unshuffle(prev, 2)], dim=1)
        h = F.relu(self.conv_in(x))  # (N, C, H/2, W/2)
        for blk in self.blocks:
            h = blk(h)
        residual = F.pixel_shuffle(self.conv_out(h), 2 * s)  # (N, 3, sH, sW)
        return bicubic(cur, s) + residual


def previous_frames(x: torch.Tensor, carry: torch.Tensor | None) -> torch.Tensor:
    """Frame t-1 for every frame t of x (T, 3, H, W): the carry (the last frame before x,
    (1, 3, H, W)) for the first, the first frame itself at a stream's start."""
    first = x[:1] if carry is None else carry.to(x.dtype).contiguous()
    return torch.cat([first, x[:-1]], dim=0)


class LearnedUpscaler2x:
    """The shipped learned stage: `UpscaleNet` over frames (t, t-1), state = the last
    low-resolution frame (1, 3, H, W)."""

    def __init__(self, net: UpscaleNet, batch: int = 12):
        self.net = net.eval().requires_grad_(False)
        self.scale = net.cfg.scale
        self.batch = batch  # frames per forward pass (bounds memory on long chunks)

    @torch.no_grad()
    def upscale(self, frames: np.ndarray, state: torch.Tensor | None):
        if len(frames) == 0:
            return frames, state
        x = to_tensor(frames)  # (T, 3, H, W)
        prev = previous_frames(x, state)
        out = [
            self.net(x[i : i + self.batch], prev[i : i + self.batch])
            for i in range(0, len(x), self.batch)
        ]
        return to_frames(torch.cat(out)), x[-1:].clone()

    @classmethod
    def load(cls, path: str | Path = UPSCALE_WEIGHTS) -> LearnedUpscaler2x:
        return cls(load_net(path))


def save_net(net: UpscaleNet, path: str | Path, extra: dict[str, str] | None = None) -> None:
    """Weights as fp16 safetensors (the file stays small), config in the metadata."""
    meta = {"format": FORMAT, "config": json.dumps(asdict(net.cfg)), **(extra or {})}
    state = {k: v.detach().half().contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(path), metadata=meta)


def load_net(path: str | Path) -> UpscaleNet:
    """Strictly load an upscaler written by `save_net`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"upscaler weights missing ({path}); train them with ops/train_upscaler.py",
            value=str(path),
        )
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an endless upscaler", value=str(path))
    net = UpscaleNet(UpscalerConfig(**json.loads(meta["config"])))
    tensors = {k: v.float() for k, v in load_file(str(path)).items()}
    missing, unexpected = net.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: missing {sorted(missing)}, unexpected {sorted(unexpected)}", value=str(path)
        )
    return net


def add_upscale_option(p, default: int = 1) -> None:
    """`--upscale 1|2` on a command line (render, serve, ops/bench.py)."""
    p.add_argument(
        "--upscale",
        type=int,
        choices=(1, 2),
        default=default,
        help="spatial super-resolution after decoding: 2 doubles width and height with the "
        "learned 2x stage (default %(default)s)",
    )


def resolve_upscaler(factor: int, kind: str = "learned") -> Upscaler | None:
    """The stage for `--upscale FACTOR`: None for 1, the shipped learned 2x stage for 2
    (or bicubic with kind="bicubic"); other factors are refused."""
    if factor == 1:
        return None
    if factor != 2:
        raise ConfigError(f"upscale factor must be 1 or 2, got {factor}", value=factor)
    if kind == "bicubic":
        return BicubicUpscaler(2)
    if kind != "learned":
        raise ConfigError(f"unknown upscaler {kind!r}; known: learned, bicubic", value=kind)
    return LearnedUpscaler2x.load()
