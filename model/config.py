"""Configuration dataclasses and named presets.

A config is built once, passed explicitly, and travels inside every checkpoint (as JSON in
the safetensors metadata) together with FORMAT_VERSION, so a file always says what it is.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields

from model.errors import ConfigError

# 2: the head's outputs are read in Wan's order (model/checkpoint.py upgrades format 1)
FORMAT_VERSION = 2


@dataclass(frozen=True)
class VAEConfig:
    """Causal 3D VAE: `time_stride` frames x `space_stride`^2 pixels -> one latent cell."""

    z_dim: int = 8  # latent channels
    time_stride: int = 4  # frames per latent frame (temporal compression)
    space_stride: int = 8  # pixels per latent cell side (spatial compression)
    hidden_hi: int = 64  # channels at 1/4 resolution (after pixel unshuffle)
    hidden_lo: int = 96  # channels at latent resolution
    blocks_hi: int = 2  # residual blocks at 1/4 resolution
    blocks_lo: int = 2  # causal 3D residual blocks at latent resolution
    time_kernel: int = 2  # causal kernel over latent frames (carry-over = time_kernel - 1)


@dataclass(frozen=True)
class DiTConfig:
    """Wan2.1-style diffusion transformer (names follow Wan's WanModel)."""

    patch_size: tuple[int, int, int] = (1, 2, 2)  # (t, h, w) latent cells per token
    in_dim: int = 8  # latent channels in
    out_dim: int = 8  # latent channels out
    dim: int = 192  # hidden size
    ffn_dim: int = 576  # FFN inner size
    freq_dim: int = 256  # sinusoidal timestep embedding size
    text_dim: int = 64  # text encoder output size
    text_len: int = 5  # text tokens (one per TinyWorld attribute slot)
    num_heads: int = 4
    num_layers: int = 6
    qk_norm: bool = True
    cross_attn_norm: bool = True
    eps: float = 1e-6
    # latent frames just before a chunk, shown to each of its tokens beside its own noisy
    # latents (0: none, as Wan); see WanModel.forward's `prev`
    prev_frames: int = 0
    # attention also returns *where* what each token attended to lies, relative to it:
    # values rotated by their keys' positions and the output back by the query's (VO-RoPE),
    # through a zero-initialised projection of its own; see WanSelfAttention
    relative_values: bool = False


@dataclass(frozen=True)
class TextConfig:
    """TinyWorld slot text encoder: one token per attribute (colour, shape, size, motion, bg)."""

    dim: int = 64


def check_sampling(steps: object, guidance: object) -> None:
    """Raise ConfigError unless steps is a whole number in [1, 1000] and guidance a finite
    number >= 0 (0 steps would decode pure noise; a NaN scale, NaN frames)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 1000:
        raise ConfigError(f"steps must be a whole number from 1 to 1000, got {steps!r}", steps)
    if (
        isinstance(guidance, bool)
        or not isinstance(guidance, (int, float))
        or not math.isfinite(guidance)
        or guidance < 0
    ):
        raise ConfigError(f"guidance must be a finite number >= 0, got {guidance!r}", guidance)


def _check_number(name: str, value: object, lo: float, hi: float) -> None:
    """Raise ConfigError unless value is a number (not a bool) in [lo, hi] (NaN is not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise ConfigError(f"{name} must be a number from {lo} to {hi}, got {value!r}", value)


SAMPLER_MODES = ("euler", "x0_renoise")


def check_schedule(cfg) -> None:
    """Raise ConfigError unless the sampler's mode and timesteps fit together."""
    if cfg.mode not in SAMPLER_MODES:
        raise ConfigError(
            f"sampler mode must be one of {', '.join(SAMPLER_MODES)}, got {cfg.mode!r}", cfg.mode
        )
    if cfg.timesteps is None:
        return
    ts = list(cfg.timesteps)
    if cfg.mode != "x0_renoise":
        raise ConfigError("timesteps are given only to the x0_renoise sampler", ts)
    falling = all(a > b for a, b in zip(ts, ts[1:], strict=False))
    if not ts or not falling or any(not 0 < t <= 1000 for t in ts):
        raise ConfigError(f"timesteps must decrease within (0, 1000], got {ts}", ts)
    if cfg.steps != len(ts):
        raise ConfigError(
            f"this sampler denoises at its own {len(ts)} timesteps {ts}: steps must be "
            f"{len(ts)}, got {cfg.steps}",
            cfg.steps,
        )


MAX_WARMUP_CHUNKS = 16  # each one delays a stream's first frame by a chunk's compute
# The sampler settings a user chooses: the flags every tool shares, `endless serve`'s
# overrides, and what `hello` announces (the rest, e.g. the schedule's shift, is the model's).
USER_SAMPLING = (
    "steps",
    "guidance",
    "guidance_interval",
    "guidance_chunks",
    "warmup_chunks",
    "context_noise",
    "motion_guidance",
    "motion_guidance_from",
)


@dataclass(frozen=True)
class SamplerConfig:
    steps: int = 4  # flow-matching Euler steps per chunk
    shift: float = 3.0  # timestep shift (SD3 / Wan): more steps at high noise
    guidance: float = 1.0  # classifier-free guidance scale (1 = off)
    # CFG only at steps whose noise level lies in [lo, hi]; elsewhere one conditional pass.
    # Guidance in a limited interval (Kynkaanniemi et al., NeurIPS 2024) keeps its effect on
    # layout at high noise, avoids oversaturating details at low noise, and costs less.
    guidance_interval: tuple[float, float] = (0.0, 1.0)
    # CFG only on the first N chunks after the stream starts or its prompt changes (0: on
    # every chunk). Guidance matters most while the context does not yet show the prompt;
    # after that the context carries it, and unguided chunks cost half as much.
    guidance_chunks: int = 0
    # Chunks generated before a stream's first shown chunk, cached as its context and never
    # shown. A stream's very first chunk is made from nothing and is its weakest (the
    # object's path is least settled: TinyWorld's shipped model reads 56% all-attribute on
    # it against 76-90% on the chunks after it), so the shown stream starts once the
    # context holds a path. Paid once per stream, in time to the first frame.
    warmup_chunks: int = 0
    # Noise level (sigma) at which finished chunks are cached as context: the trainer shows
    # half its sequences a context at a random level in [0, 0.1] (diffusion forcing), and
    # a little noise keeps later chunks from copying the context's finest errors.
    context_noise: float = 0.0
    # Extra guidance toward what the prompt says of motion: the prompt's prediction against
    # the same prompt's with its motion left unsaid, added to CFG's (composable guidance,
    # Liu et al., ECCV 2022), on the chunks guidance_chunks guides and at the steps whose
    # noise level is at least motion_guidance_from (a chunk's path is laid out in its
    # noisiest steps; its shape's details later). 0: off. Prompts that say no motion, and
    # text encoders that cannot leave it unsaid, skip it.
    motion_guidance: float = 0.0
    motion_guidance_from: float = 0.75
    # How a step moves from one noise level to the next. "euler": a deterministic Euler
    # step of the velocity (TinyWorld's). "x0_renoise": predict x0 = x - sigma * v, then
    # noise it again with fresh noise to the next level, as Self-Forcing, CausVid and
    # LongLive sample (the fresh noise is fixed by (seed, chunk, step): rewinds repeat).
    mode: str = "euler"
    # The published denoising timesteps (0..1000, decreasing), e.g. Self-Forcing's
    # (1000, 750, 500, 250); None: `steps` levels of the shifted schedule. warp_timesteps
    # reads them as indices into the shifted 1000-step training schedule (their
    # `warp_denoising_step`), so 750 becomes sigma 0.9375 at shift 5.
    timesteps: tuple[float, ...] | None = None
    warp_timesteps: bool = False

    def sampling(self) -> dict:
        """The settings a user chooses (`USER_SAMPLING`), JSON-ready."""
        out = {name: getattr(self, name) for name in USER_SAMPLING}
        return out | {"guidance_interval": list(self.guidance_interval)}

    def __post_init__(self):
        check_sampling(self.steps, self.guidance)
        for name in ("guidance_chunks", "warmup_chunks"):
            n = getattr(self, name)
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise ConfigError(f"{name} must be a whole number >= 0, got {n!r}", n)
        if self.warmup_chunks > MAX_WARMUP_CHUNKS:
            raise ConfigError(
                f"warmup_chunks must be at most {MAX_WARMUP_CHUNKS}, got {self.warmup_chunks}",
                self.warmup_chunks,
            )
        for name, hi in (
            ("context_noise", 0.5),
            ("motion_guidance", 10),
            ("motion_guidance_from", 1),
        ):
            _check_number(name, getattr(self, name), 0, hi)
        check_schedule(self)
        lo, hi = self.guidance_interval
        if not 0.0 <= lo <= hi <= 1.0:
            raise ConfigError(
                f"guidance interval must satisfy 0 <= LO <= HI <= 1, got [{lo}, {hi}]",
                value=list(self.guidance_interval),
            )


@dataclass(frozen=True)
class StreamConfig:
    """Chunking and the context cache policy (sink + rolling window, LongLive)."""

    height: int = 128
    width: int = 128
    fps: int = 24
    chunk_latent_frames: int = 3  # latent frames per generated chunk
    sink_latent_frames: int = 3  # first frames kept for ever (attention sink)
    window_latent_frames: int = 6  # most recent latent frames kept
    rewind_chunks: int = 4  # how many chunks back a stream can rewind
    # A prompt switch re-caches the context under the new prompt (LongLive's KV re-cache);
    # False keeps the sink's keys/values as they were made, as LongLive does
    recache_sink: bool = True


@dataclass(frozen=True)
class ModelConfig:
    name: str = "tiny"
    vae: VAEConfig = field(default_factory=VAEConfig)
    dit: DiTConfig = field(default_factory=DiTConfig)
    text: TextConfig = field(default_factory=TextConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        raw = json.loads(text)
        parts = {
            "vae": VAEConfig,
            "dit": DiTConfig,
            "text": TextConfig,
            "sampler": SamplerConfig,
            "stream": StreamConfig,
        }
        try:
            kwargs = {k: _build(parts[k], v) if k in parts else v for k, v in raw.items()}
            return cls(**kwargs)
        except TypeError as exc:
            raise ConfigError(f"config does not match this version of endless: {exc}") from exc


def _build(kind, values: dict):
    known = {f.name for f in fields(kind)}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"unknown {kind.__name__} fields: {sorted(unknown)}", value=values)
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return kind(**values)


PRESETS: dict[str, ModelConfig] = {
    # The embedded default: trained on TinyWorld, runs in real time on a laptop CPU.
    "tiny": ModelConfig(),
    # Test size: random init, milliseconds per chunk.
    "micro": ModelConfig(
        name="micro",
        vae=VAEConfig(z_dim=4, hidden_hi=16, hidden_lo=16, blocks_hi=1, blocks_lo=1),
        dit=DiTConfig(
            in_dim=4,
            out_dim=4,
            dim=48,
            ffn_dim=96,
            freq_dim=32,
            text_dim=16,
            num_heads=2,
            num_layers=2,
        ),
        text=TextConfig(dim=16),
        stream=StreamConfig(
            height=64,
            width=64,
            chunk_latent_frames=2,
            sink_latent_frames=2,
            window_latent_frames=4,
            rewind_chunks=3,
        ),
    ),
    # Published Wan2.1-T2V-1.3B sizes (Self-Forcing and LongLive build on it). The VAE is
    # Wan's (z_dim 16, 4x8x8); its weights are loaded by a later converter, not trained here.
    "wan-1.3b": ModelConfig(
        name="wan-1.3b",
        vae=VAEConfig(z_dim=16, hidden_hi=96, hidden_lo=384),
        dit=DiTConfig(
            in_dim=16,
            out_dim=16,
            dim=1536,
            ffn_dim=8960,
            freq_dim=256,
            text_dim=4096,
            text_len=512,
            num_heads=12,
            num_layers=30,
        ),
        text=TextConfig(dim=4096),
        stream=StreamConfig(
            height=480,
            width=832,
            fps=16,
            chunk_latent_frames=3,
            sink_latent_frames=3,
            window_latent_frames=9,
        ),
    ),
}


def preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}", value=name)
    return PRESETS[name]
