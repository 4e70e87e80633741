"""The published inference settings of each Wan2.1-based checkpoint family, as data, with
the memory each needs so a loader can refuse before it loads anything
(model/wan/memory.py adds the VAE's and text encoder's weights and compares).

Sources (settings as their inference configs publish them):
  self-forcing  Huang et al., "Self Forcing", arXiv 2506.08009; configs/self_forcing_dmd.yaml:
                denoising_step_list [1000, 750, 500, 250], warp_denoising_step, shift 5,
                num_frame_per_block 3, context_noise 0; trained on 21 latent frames.
  causvid       Yin et al., "From Slow Bidirectional to Fast Autoregressive Video Diffusion
                Models" (CVPR 2025); configs/wan_causal_dmd.yaml: denoising_step_list
                [1000, 757, 522] (the trailing 0 ends the list), not warped, shift 8, 3 latent
                frames per block, 21 latent frames.
  longlive      Yang et al., "LongLive", arXiv 2509.22622; configs/longlive_inference.yaml:
                [1000, 750, 500, 250] warped, shift 5, local_attn_size 12 with sink_size 3
                (the span includes the chunk being made: 3 sink + 6 recent + 3 new), global
                sink kept through the KV re-cache on a prompt switch, LoRA rank 256 alpha 256.
  wan           Wan2.1-T2V (Wan team, arXiv 2503.20314): sample_shift 5, guide scale 5; its
                bidirectional sampler takes 50 steps, this streaming preset 8 (--steps).
All at Wan's 16 fps and 832x480.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from model.config import PRESETS, DiTConfig, SamplerConfig, StreamConfig
from model.dit import WanModel
from model.errors import ConfigError

WAN_SIZE = (832, 480)  # width, height
WAN_FPS = 16
SPACE_STRIDE = 8  # Wan VAE: 8 x 8 pixels per latent cell, 4 frames per latent frame
WARPED = (1000, 750, 500, 250)


def wan_stream(sink: int, window: int, recache_sink: bool = True) -> StreamConfig:
    return StreamConfig(
        height=WAN_SIZE[1],
        width=WAN_SIZE[0],
        fps=WAN_FPS,
        chunk_latent_frames=3,
        sink_latent_frames=sink,
        window_latent_frames=window,
        rewind_chunks=3,  # the live server plays 2 chunks behind; a full-size frame is 287 MB
        recache_sink=recache_sink,
    )


def x0_sampler(timesteps: tuple[int, ...], shift: float, warp: bool) -> SamplerConfig:
    return SamplerConfig(
        mode="x0_renoise",
        steps=len(timesteps),
        timesteps=timesteps,
        warp_timesteps=warp,
        shift=shift,
        guidance=1.0,  # distilled: no classifier-free guidance
        context_noise=0.0,
    )


@dataclass(frozen=True)
class WanFamily:
    """A checkpoint family: its sampler and stream settings at the default size, the
    denoiser it is published for, and its LoRA (rank, alpha) where it has one."""

    name: str
    sampler: SamplerConfig
    stream: StreamConfig
    dit: DiTConfig
    lora: tuple[int, float] | None = None
    source: str = ""

    def weight_bytes(self, dit: DiTConfig, dtype: torch.dtype) -> int:
        return denoiser_parameters(dit) * dtype_size(dtype)

    def cache_bytes(self, dit: DiTConfig, dtype: torch.dtype, height: int, width: int) -> int:
        """The stream's preallocated context cache (memory/cache.py): keys and values of
        every layer and latents, for sink + window + rewind margin latent frames."""
        s = self.stream
        slots = (
            s.sink_latent_frames + s.window_latent_frames + s.rewind_chunks * s.chunk_latent_frames
        )
        lh, lw = height // SPACE_STRIDE, width // SPACE_STRIDE
        tokens = tokens_per_frame(dit, height, width)
        kv = 2 * dit.num_layers * slots * tokens * dit.dim
        return (kv + slots * dit.in_dim * lh * lw) * dtype_size(dtype)

    def work_bytes(self, dit: DiTConfig, dtype: torch.dtype, height: int, width: int) -> int:
        """Working memory of one chunk (an estimate): the gathered context's keys and values
        (all layers), and the larger of a denoise step (one layer's activations for the
        chunk's tokens, CFG's second pass included when the family guides) and a switch's
        re-cache (one layer's activations for the context's tokens, and its block-causal
        mask: booleans, and the additive mask attention makes of them)."""
        s = self.stream
        el = dtype_size(dtype)
        tokens = tokens_per_frame(dit, height, width)
        context = (s.sink_latent_frames + s.window_latent_frames) * tokens
        gathered = 2 * dit.num_layers * context * dit.dim * el
        batch = 1 if self.sampler.guidance == 1.0 else 2
        chunk = s.chunk_latent_frames * tokens
        per_token = (dit.ffn_dim + 8 * dit.dim) * el
        step = batch * (chunk * per_token + 2 * (context + chunk) * dit.dim * el)
        recache = context * per_token + context * context * (1 + el)
        return gathered + max(step, recache)

    def memory_bytes(self, dit: DiTConfig, dtype: torch.dtype, height: int, width: int) -> int:
        """Bytes the denoiser needs on its device for one stream at (height, width):
        weights, the context cache and a chunk step's working memory (the VAE and text
        encoder are counted by their own loaders)."""
        check_size(dit, height, width)
        return (
            self.weight_bytes(dit, dtype)
            + self.cache_bytes(dit, dtype, height, width)
            + self.work_bytes(dit, dtype, height, width)
        )


def dtype_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def tokens_per_frame(dit: DiTConfig, height: int, width: int) -> int:
    _, ph, pw = dit.patch_size
    return (height // SPACE_STRIDE // ph) * (width // SPACE_STRIDE // pw)


def check_size(dit: DiTConfig, height: int, width: int) -> None:
    """Raise ConfigError unless height and width are positive multiples of the VAE stride x
    patch (16 pixels for Wan)."""
    _, ph, pw = dit.patch_size
    step_h, step_w = SPACE_STRIDE * ph, SPACE_STRIDE * pw
    if height <= 0 or width <= 0 or height % step_h or width % step_w:
        raise ConfigError(
            f"size {width}x{height} is not a multiple of {step_w}x{step_h} (the VAE's stride "
            "times the patch)",
            value=f"{width}x{height}",
        )


def denoiser_parameters(dit: DiTConfig) -> int:
    """Parameters of a WanModel with `dit`, counted without allocating any."""
    with torch.device("meta"):
        return sum(p.numel() for p in WanModel(dit).parameters())


WAN_13B = PRESETS["wan-1.3b"].dit

FAMILIES: dict[str, WanFamily] = {
    "wan": WanFamily(
        "wan",
        SamplerConfig(steps=8, shift=5.0, guidance=5.0),
        wan_stream(sink=3, window=6),
        WAN_13B,
        source="Wan2.1-T2V-1.3B (arXiv 2503.20314): shift 5, guidance 5",
    ),
    "self-forcing": WanFamily(
        "self-forcing",
        x0_sampler(WARPED, shift=5.0, warp=True),
        wan_stream(sink=0, window=18),  # its 21 trained latent frames, less the chunk
        WAN_13B,
        source="Self Forcing (arXiv 2506.08009), configs/self_forcing_dmd.yaml",
    ),
    "causvid": WanFamily(
        "causvid",
        x0_sampler((1000, 757, 522), shift=8.0, warp=False),
        wan_stream(sink=0, window=18),
        WAN_13B,
        source="CausVid (CVPR 2025), configs/wan_causal_dmd.yaml",
    ),
    "longlive": WanFamily(
        "longlive",
        x0_sampler(WARPED, shift=5.0, warp=True),
        wan_stream(sink=3, window=6, recache_sink=False),
        WAN_13B,
        lora=(256, 256.0),
        source="LongLive (arXiv 2509.22622), configs/longlive_inference.yaml",
    ),
}


def family(name: str) -> WanFamily:
    """The family `name`; ConfigError listing the known ones otherwise."""
    if name not in FAMILIES:
        raise ConfigError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}", name)
    return FAMILIES[name]


__all__ = ["FAMILIES", "WanFamily", "check_size", "family"]
