"""VideoModel: the loaded networks (denoiser, VAE, text encoder) shared by all streams."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from model.checkpoint import load_strict, read_checkpoint, save_checkpoint
from model.config import ModelConfig, preset
from model.dit import WanModel
from model.errors import CheckpointError, ConfigError
from model.precision import resolve_dtype
from model.text import TextEncoder, TinyWorldTextEncoder
from model.vae import CausalVAE, VideoVAE

WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "tiny.safetensors"
PARTS = ("dit", "vae", "text")


def parse_size(text: str) -> tuple[int, int]:
    """ "832x480" -> (832, 480): WIDTHxHEIGHT in pixels; ConfigError if malformed."""
    w, sep, h = text.lower().partition("x")
    if not sep or not w.isdigit() or not h.isdigit():
        raise ConfigError(f"size must be WIDTHxHEIGHT, e.g. 832x480, not {text!r}", value=text)
    return int(w), int(h)


def check_size(width: int, height: int, step: int) -> None:
    """ConfigError unless width and height are positive multiples of `step` pixels (the
    VAE's stride times the DiT's patch)."""
    if width <= 0 or height <= 0 or width % step or height % step:
        raise ConfigError(
            f"unsupported size {width}x{height}: width and height must be positive "
            f"multiples of {step} (the VAE's stride x the patch size) for this model",
            value=f"{width}x{height}",
        )


class VideoModel(torch.nn.Module):
    """Everything a stream needs to generate; read-only while streams run.

    Built from `config` (TinyWorld's parts, random init), or from parts loaded elsewhere
    (`dit`, `vae`, `text`: e.g. Wan's VAE and umT5, model/wan/load.py)."""

    def __init__(
        self,
        config: ModelConfig,
        dtype: torch.dtype = torch.float32,
        dit: WanModel | None = None,
        vae: VideoVAE | None = None,
        text: TextEncoder | None = None,
    ):
        super().__init__()
        self.config = config
        self.dit = dit if dit is not None else WanModel(config.dit)
        self.vae = vae if vae is not None else CausalVAE(config.vae)
        self.text = text if text is not None else TinyWorldTextEncoder(config.text)
        self.dtype = dtype  # compute dtype of the denoiser and decoder
        self.description = config.name  # what was loaded, in words (loaders say more)
        self.requires_grad_(False)
        self.eval()
        self.dit.to(dtype)
        self.vae.to(dtype)

    @classmethod
    def from_seed(cls, seed: int = 0, name: str = "tiny", dtype=torch.float32) -> VideoModel:
        """Random init from a seed: deterministic weights for tests and benchmarks."""
        torch.manual_seed(seed)
        return cls(preset(name), dtype=dtype)

    @classmethod
    def load(
        cls, path: str | Path, dtype: torch.dtype | None = None, expect: ModelConfig | None = None
    ) -> VideoModel:
        """Strictly load a checkpoint written by `save` (all parts present, shapes equal),
        in `dtype` (default: this machine's fast one, `resolve_dtype("auto")`)."""
        config, tensors, _ = read_checkpoint(path)
        if expect is not None and config != expect:
            raise CheckpointError(
                f"{path} holds a {config.name!r} model whose config differs from the "
                f"expected {expect.name!r} config",
                value=str(path),
            )
        model = cls(config, dtype=torch.float32)
        load_strict(model, tensors, str(path))
        model.set_dtype(dtype or resolve_dtype("auto"))
        return model

    def set_dtype(self, dtype: torch.dtype) -> VideoModel:
        self.dtype = dtype
        self.dit.to(dtype)
        self.vae.to(dtype)
        return self

    def with_sampler(self, **changes) -> VideoModel:
        """Change sampler settings (steps, shift, guidance, guidance_interval) in place for
        streams made after this call, e.g. `with_sampler(guidance=4, guidance_interval=(.7, 1))`."""
        self.config = replace(self.config, sampler=replace(self.config.sampler, **changes))
        return self

    def with_size(self, width: int, height: int) -> VideoModel:
        """Generate `width` x `height` frames in streams made after this call; both must be
        positive multiples of the VAE's stride times the DiT's patch (16 for Wan and
        TinyWorld). Raises ConfigError otherwise."""
        check_size(width, height, self.vae.space_stride * max(self.config.dit.patch_size[1:]))
        stream = replace(self.config.stream, width=width, height=height)
        self.config = replace(self.config, stream=stream)
        return self

    @classmethod
    def load_default(cls, dtype: torch.dtype | None = None) -> VideoModel:
        if not DEFAULT_WEIGHTS.is_file():
            raise CheckpointError(
                f"the default weights are missing ({DEFAULT_WEIGHTS}); train them with "
                "ops/train_vae.py and ops/train_dit.py",
                value=str(DEFAULT_WEIGHTS),
            )
        return cls.load(DEFAULT_WEIGHTS, dtype=dtype)

    def save(self, path: str | Path, extra: dict[str, str] | None = None) -> None:
        state = {k: v.float() for k, v in self.state_dict().items()}
        save_checkpoint(path, state, self.config, extra)
