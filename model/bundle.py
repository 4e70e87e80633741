"""VideoModel: the loaded networks (denoiser, VAE, text encoder) shared by all streams."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from model.checkpoint import load_strict, read_checkpoint, save_checkpoint
from model.config import ModelConfig, preset
from model.dit import WanModel
from model.errors import CheckpointError
from model.precision import resolve_dtype
from model.text import TinyWorldTextEncoder
from model.vae import CausalVAE

WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "tiny.safetensors"
PARTS = ("dit", "vae", "text")


class VideoModel(torch.nn.Module):
    """Everything a stream needs to generate; read-only while streams run."""

    def __init__(self, config: ModelConfig, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.config = config
        self.dit = WanModel(config.dit)
        self.vae = CausalVAE(config.vae)
        self.text = TinyWorldTextEncoder(config.text)
        self.dtype = dtype  # compute dtype of the denoiser and decoder
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
