"""ServerConfig: every knob of the live server, built once and passed explicitly."""

from __future__ import annotations

from dataclasses import dataclass

from model.config import USER_SAMPLING, SamplerConfig
from model.errors import ConfigError
from model.precision import DTYPE_CHOICES

CODECS = {"vp8": "video/VP8", "h264": "video/H264"}


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 0  # 0: the OS picks a free port; the server reports the one it got
    model: str = "tiny"  # "tiny" (shipped; random init if absent), "random[:PRESET]", a path
    codec: str = "vp8"  # preferred codec when a viewer offers several ("vp8" | "h264")
    bitrate: int = 500_000  # target bits/s of each encode (aiortc clamps to its codec's range)
    keyframe_seconds: float = 2.0  # a keyframe at least this often (and at each prompt switch)
    ahead_chunks: int = 2  # chunks generated ahead of the one playing
    grace_seconds: float = 10.0  # a stream with no controller and no viewer ends after this
    max_streams: int = 8
    max_viewers_per_stream: int = 32
    max_viewers_per_connection: int = 8  # so one client cannot take a stream's every slot
    max_message_bytes: int = 64 * 1024  # larger messages get a "too_big" error
    hard_message_bytes: int = 1024 * 1024  # larger ones close the connection (1009)
    max_prompt_chars: int = 500
    prompt_rate: float = 4.0  # prompt/storyboard messages per second per connection...
    prompt_burst: int = 8  # ...with this burst
    message_rate: float = 100.0  # any message, per second per connection...
    message_burst: int = 200  # ...with this burst
    command_queue: int = 64  # loop -> worker commands; when full a request gets "busy"
    result_queue: int = 16  # worker -> loop chunks; when full the worker waits
    viewer_queue: int = 12  # encoded frames waiting for one viewer; when full it skips to a key
    outbox_queue: int = 256  # events waiting for one websocket; when full stats are dropped
    stats_seconds: float = 1.0  # how often stats events are pushed
    torch_threads: int = 1  # intra-op threads of the one model worker
    dtype: str = "auto"  # "auto" (bf16 on a GPU or an AMX CPU, else fp32), "bf16" or "fp32"
    connect_timeout: float = 20.0  # a viewer that has not connected by then is dropped
    engine_max_deaths: int = 5  # deaths in a row, each soon after its start: "failed"
    engine_quick_seconds: float = 10.0  # a death this soon after the start counts as quick
    state_dir: str | None = None  # where each stream's snapshot is kept (None: nowhere)
    state_seconds: float = 3.0  # how often the state directory is written
    resume_grace_seconds: float = 60.0  # a stream resumed from disk waits this for viewers
    shutdown_seconds: float = 3.5  # the whole shutdown, however its clients behave (< 5 s)
    # Sampling of every stream; None keeps the model's own (its checkpoint's) setting.
    steps: int | None = None  # denoising steps per chunk
    guidance: float | None = None  # classifier-free guidance scale (1: off)
    guidance_interval: tuple[float, float] | None = None  # noise levels that get guidance
    guidance_chunks: int | None = None  # guide only N chunks after each start/switch (0: all)
    # Chunks made before a stream's first shown one (None: the model's setting). Live, the
    # default is none: on 2 cores the shipped model's two added 0.55 s to the time to the
    # first frame, past its 1 s target (README, "Warm-up on the live server").
    warmup_chunks: int | None = 0
    context_noise: float | None = None  # the model's unless given
    motion_guidance: float | None = None  # extra guidance toward the prompt's motion
    motion_guidance_from: float | None = None  # lowest noise level it applies at

    def __post_init__(self) -> None:
        if self.codec not in CODECS:
            raise ConfigError(f"unknown codec {self.codec!r}; known: vp8, h264", value=self.codec)
        if self.ahead_chunks < 1:
            raise ConfigError("ahead_chunks must be at least 1", value=self.ahead_chunks)
        if self.bitrate <= 0 or self.keyframe_seconds <= 0:
            raise ConfigError("bitrate and keyframe_seconds must be positive")
        if self.torch_threads < 1:
            raise ConfigError("torch_threads must be at least 1", value=self.torch_threads)
        if self.dtype not in DTYPE_CHOICES:
            raise ConfigError(
                f"unknown dtype {self.dtype!r}; known: {', '.join(DTYPE_CHOICES)}", value=self.dtype
            )
        SamplerConfig(**self.sampler_changes())  # ConfigError for bad steps/guidance/interval

    def sampler_changes(self) -> dict:
        """The sampler settings this config overrides (for `VideoModel.with_sampler`)."""
        return {n: getattr(self, n) for n in USER_SAMPLING if getattr(self, n) is not None}

    @property
    def codec_mime(self) -> str:
        return CODECS[self.codec]
