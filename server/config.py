"""ServerConfig: every knob of the live server, built once and passed explicitly."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from model.config import USER_SAMPLING, SamplerConfig
from model.errors import ConfigError
from model.precision import DTYPE_CHOICES
from server.auth import is_loopback

CODECS = {"vp8": "video/VP8", "h264": "video/H264"}


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 0  # 0: the OS picks a free port; the server reports the one it got
    model: str = "tiny"  # "tiny" (shipped; random init if absent), "random[:PRESET]", a path
    # or a Wan2.1 model (FAMILY:PATH) with its base and LoRA (docs/models.md)
    base: str | None = None  # --base DIR
    lora: str | None = None  # --lora LORA
    size: str | None = None  # --size WxH (None: the model's)
    device: str = "auto"  # where a Wan2.1 model runs ("auto": a CUDA GPU if there is one)
    codec: str = "vp8"  # preferred codec when a viewer offers several ("vp8" | "h264")
    bitrate: int = 500_000  # target bits/s of each encode (aiortc clamps to its codec's range)
    keyframe_seconds: float = 2.0  # a keyframe at least this often (and at each prompt switch)
    ahead_chunks: int = 2  # chunks generated ahead of the one playing
    grace_seconds: float = 10.0  # a stream with no controller and no viewer ends after this
    max_streams: int = 8
    max_streams_per_key: int = 4  # live streams one API key (no keys: one connection) runs
    max_viewers_per_stream: int = 32
    control_viewer_slots: int = 1  # of a stream's viewer slots, kept for control-token holders
    max_viewers_per_connection: int = 8  # so one client cannot take a stream's every slot
    max_message_bytes: int = 64 * 1024  # larger messages get a "too_big" error...
    max_image_bytes: int = 4 * 1024 * 1024  # ...but a `create` may add a start image this big
    hard_message_bytes: int = 8 * 1024 * 1024  # larger ones close the connection (1009)
    upscale: int = 1  # spatial super-resolution after decoding (1: none, 2: the learned 2x)
    max_prompt_chars: int = 500
    prompt_rate: float = 4.0  # prompt/storyboard messages per second per connection...
    prompt_burst: int = 8  # ...with this burst
    message_rate: float = 100.0  # any message, per second per connection...
    message_burst: int = 200  # ...with this burst
    auth_failure_rate: float = 0.5  # requests refused unauthorized, per second per connection...
    auth_failure_burst: int = 20  # ...with this burst; past it the connection is closed (1008)
    # API keys: when any is set, `create` needs one of them as "key" (never logged or shown)
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    insecure: bool = False  # allow binding beyond loopback without an API key
    # addresses whose ICE host candidates the server offers (None: the address it serves on;
    # a wildcard host offers every address the machine has)
    ice_addresses: tuple[str, ...] | None = None
    command_queue: int = 64  # loop -> worker commands; when full a request gets "busy"
    result_queue: int = 16  # worker -> loop chunks; when full the worker waits
    viewer_queue: int = 12  # encoded frames waiting for one viewer; when full it skips to a key
    outbox_queue: int = 256  # events waiting for one websocket; when full stats are dropped
    stats_seconds: float = 1.0  # how often stats events are pushed
    torch_threads: int = 1  # intra-op threads of the one model worker
    solo_threads: int | None = None  # its threads while it runs one stream (None: the same)
    max_batch: int = 4  # streams whose chunks share one forward pass (1: one at a time)
    degrade: bool = True  # overloaded: fewer steps, then new streams refused (load_policy)
    min_steps: int | None = None  # the fewest steps it degrades to (None: half the model's)
    dtype: str = "auto"  # "auto" (bf16 on a GPU or an AMX CPU, else fp32), "bf16" or "fp32"
    connect_timeout: float = 20.0  # a viewer that has not connected by then is dropped
    engine: str = "local"  # "local": one supervised engine process; "ray": Ray actors
    workers: int = 2  # --engine ray: model workers (one model on one GPU each)
    ray_address: str | None = None  # --engine ray: join this cluster (None: start one locally)
    gpus_per_worker: float = 1.0  # --engine ray: (logical) GPUs each worker asks for
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
    # Provenance (docs/provenance.md)
    watermark: bool = True  # the invisible mark in every frame; off only with --no-watermark
    server_name: str = ""  # carried (hashed) in the mark; "" = the host name
    prompt_policy: str | None = None  # file of blocked words/patterns (--prompt-policy)
    c2pa_key: str | None = None  # PEM key and chain that sign recordings' C2PA manifests;
    c2pa_cert: str | None = None  # neither given: a development chain in state_dir
    # Outputs (server/outputs.py)
    record_dir: str = "recordings"  # where `record` writes <id>.mp4 (made when first needed)
    record_max_seconds: float = 6 * 3600.0  # a recording is finished at this length
    hls_segment_seconds: float = 1.0  # HLS segment length (a keyframe is asked for each)
    hls_keep_segments: int = 6  # segments held per stream (the playlist lists all but two)
    hls_idle_seconds: float = 20.0  # segmenting stops when no HLS request came for this long
    max_pushes_per_stream: int = 4  # RTMP destinations at once
    osc_port: int | None = None  # UDP port for OSC control (None: off; 0: any free one)
    osc_host: str = "127.0.0.1"  # interface for OSC (beyond loopback only with osc_key)
    osc_key: str | None = None  # the first argument of every OSC message, when given

    def __post_init__(self) -> None:
        if self.codec not in CODECS:
            raise ConfigError(f"unknown codec {self.codec!r}; known: vp8, h264", value=self.codec)
        if self.ahead_chunks < 1:
            raise ConfigError("ahead_chunks must be at least 1", value=self.ahead_chunks)
        if self.bitrate <= 0 or self.keyframe_seconds <= 0:
            raise ConfigError("bitrate and keyframe_seconds must be positive")
        if self.osc_port is not None and self.osc_key is None and not _loopback(self.osc_host):
            raise ConfigError(
                f"refusing OSC on {self.osc_host} without --osc-key: anyone who reaches it "
                "could steer every stream",
                value=self.osc_host,
            )
        if self.min_steps is not None and self.min_steps < 1:
            raise ConfigError("min_steps must be at least 1", value=self.min_steps)
        if self.max_batch < 1:
            raise ConfigError("max_batch must be at least 1", value=self.max_batch)
        if self.engine not in ("local", "ray"):
            raise ConfigError(f"unknown engine {self.engine!r}; known: local, ray", self.engine)
        if self.workers < 1 or not self.gpus_per_worker > 0:
            raise ConfigError("workers must be at least 1 and gpus_per_worker above 0")
        if self.upscale not in (1, 2):
            raise ConfigError(f"upscale must be 1 or 2, got {self.upscale}", value=self.upscale)
        if self.torch_threads < 1:
            raise ConfigError("torch_threads must be at least 1", value=self.torch_threads)
        if self.solo_threads is not None and self.solo_threads < 1:
            raise ConfigError("solo_threads must be at least 1", value=self.solo_threads)
        if self.dtype not in DTYPE_CHOICES:
            raise ConfigError(
                f"unknown dtype {self.dtype!r}; known: {', '.join(DTYPE_CHOICES)}", value=self.dtype
            )
        if not self.api_keys and not self.insecure and not is_loopback(self.host):
            raise ConfigError(
                f"refusing to serve on {self.host} without an API key: anyone who reaches it "
                "could start streams. Give --api-key KEY (or ENDLESS_API_KEY), or --insecure "
                "to serve without one",
                value=self.host,
            )
        for address in self.ice_addresses or ():
            try:
                ipaddress.ip_address(address)
            except ValueError:
                raise ConfigError(
                    f"--ice-address {address!r} is not an IP address", value=address
                ) from None
        if any(not isinstance(k, str) or not k for k in self.api_keys):
            raise ConfigError("an API key must be a non-empty string")
        if self.max_streams_per_key < 1 or self.control_viewer_slots < 0:
            raise ConfigError("max_streams_per_key must be >= 1, control_viewer_slots >= 0")
        SamplerConfig(**self.sampler_changes())  # ConfigError for bad steps/guidance/interval

    def sampler_changes(self) -> dict:
        """The sampler settings this config overrides (for `VideoModel.with_sampler`)."""
        return {n: getattr(self, n) for n in USER_SAMPLING if getattr(self, n) is not None}

    @property
    def codec_mime(self) -> str:
        return CODECS[self.codec]


def _loopback(host: str) -> bool:
    from server.auth import is_loopback  # the one definition of "loopback"

    return is_loopback(host)
