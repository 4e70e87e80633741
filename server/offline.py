"""Offline render: a prompt timeline -> an MP4 file, generated and written chunk by chunk."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from memory.stream import Stream, prepare_start_image
from model.bundle import VideoModel
from model.errors import ConfigError, RenderError
from model.storyboard import chunk_at
from model.upscale import Upscaler
from model.wan.load import load_named
from server.video_file import Mp4Writer

MAX_SECONDS = 24 * 3600  # longer renders are almost surely a typo


@dataclass
class RenderProgress:
    chunk: int
    chunks: int
    video_seconds: float
    wall_seconds: float

    @property
    def realtime_factor(self) -> float:
        return self.video_seconds / max(self.wall_seconds, 1e-9)


@dataclass
class RenderResult:
    path: Path
    frames: int
    video_seconds: float
    wall_seconds: float
    realtime_factor: float
    prompt: str = ""  # the first prompt as used (completed from a start image)
    width: int = 0  # of the frames written (after any upscaling)
    height: int = 0


def resolve_model(
    spec: str,
    threads: int | None = None,
    dtype: str = "auto",
    base: str | None = None,
    lora: str | None = None,
    size: str | None = None,
    device: str = "auto",
) -> VideoModel:
    """'tiny' (shipped weights), 'random:PRESET' (random init), a checkpoint path, or a
    Wan2.1 model (FAMILY:PATH with `base` and `lora`, docs/models.md), at `size` ("WxH";
    default the model's), in the compute dtype named by `dtype` ("auto", "bf16" or
    "fp32"; see `resolve_dtype`)."""
    if threads:
        torch.set_num_threads(threads)
    return load_named(spec, base, lora, size, dtype, _builtin, device)


def _builtin(spec: str, compute: torch.dtype) -> VideoModel:
    if spec == "tiny":
        return VideoModel.load_default(compute)
    if spec.startswith("random:"):
        return VideoModel.from_seed(0, spec.split(":", 1)[1], dtype=compute)
    if Path(spec).suffix == ".safetensors" or Path(spec).exists():
        return VideoModel.load(spec, compute)
    raise ConfigError(
        f"unknown model {spec!r}: use 'tiny', 'random:PRESET', a .safetensors path or a "
        "Wan2.1 model (wan:DIR, self-forcing:CKPT, causvid:CKPT, longlive:CKPT)",
        value=spec,
    )


def check_duration(seconds: float) -> None:
    if not isinstance(seconds, int | float) or not math.isfinite(seconds) or seconds <= 0:
        raise RenderError(
            f"duration must be a positive number of seconds, got {seconds}", value=seconds
        )
    if seconds > MAX_SECONDS:
        raise RenderError(
            f"duration {seconds} s is over the limit of {MAX_SECONDS} s", value=seconds
        )


def render_video(
    model: VideoModel,
    timeline: list[tuple[float, str]],
    seconds: float,
    path: str | Path,
    seed: int = 0,
    on_progress: Callable[[RenderProgress], None] | None = None,
    mark: Callable[[np.ndarray], np.ndarray] | None = None,
    image: np.ndarray | None = None,
    upscaler: Upscaler | None = None,
) -> RenderResult:
    """Generate `seconds` of video following `timeline` [(at_seconds, prompt)] into `path`,
    starting from `image` (uint8 (H, W, 3)) if given, through `upscaler` if given.

    All prompts are validated before anything is generated; the file is written while
    generating, so memory stays flat however long the video. `mark` (the watermark) gets
    each chunk's frames (upscaled) before they are encoded.
    """
    check_duration(seconds)
    timeline = sorted(timeline)
    if not timeline:
        raise RenderError("nothing to render: no prompt given")
    first = timeline[0][1]
    if image is not None:
        first, image = prepare_start_image(model, first, image)
    stream = Stream(model, first, seed=seed, image=image, upscaler=upscaler)
    per_chunk = stream.frames  # frames per chunk, as the model's VAE decodes them
    switches = [(chunk_at(at, stream.fps, per_chunk), text) for at, text in timeline[1:]]
    for _, text in switches:  # validate every prompt up front
        model.text.check(text)
    total_frames = round(seconds * stream.fps)
    chunks = per_chunk.chunks_for(total_frames)
    pending = sorted(switches)
    written = 0
    t0 = time.perf_counter()
    with Mp4Writer(path, stream.fps, stream.out_width, stream.out_height) as writer:
        for k in range(chunks):
            while pending and pending[0][0] <= k:
                _, text = pending.pop(0)
                stream.set_prompt(text)
            frames = stream.next_chunk()
            frames = frames[: total_frames - written]
            if mark is not None:
                frames = mark(frames)
            writer.write(frames)
            written += len(frames)
            if on_progress:
                on_progress(
                    RenderProgress(k + 1, chunks, written / stream.fps, time.perf_counter() - t0)
                )
    wall = time.perf_counter() - t0
    video = written / stream.fps
    rate = video / max(wall, 1e-9)
    w, h = stream.out_width, stream.out_height
    return RenderResult(Path(path), written, video, wall, rate, first, w, h)
