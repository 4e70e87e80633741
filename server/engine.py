"""The engine interface: what the server asks of whatever runs the model, and the
messages that cross it.

The server (one event loop) calls these methods and never waits on them; results come
back through `drain()` after the engine calls the `notify` it was given (from any thread):

    engine = ProcessEngine(model, params, notify)      # or another Engine
    await engine.start()                 # returns when `state` is "ready" (or "failed")
    engine.submit(OpenStream(...))       # False (nothing queued) when its queue is full
    engine.submit(ChangePlan(...))       # a prompt switch / storyboard edit
    engine.set_progress(stream_id, k)    # the chunk being played (latest wins)
    engine.close_stream(stream_id)       # never refused
    engine.drain()                       # -> [StreamOpened | ChunkReady | StreamFailed |
                                         #     EngineRestarted | EngineStateChanged]
    await engine.stop(timeout)           # True if it stopped in time

`state` is one of STATES: "loading" (the model is being loaded), "ready", "degraded" (the
engine died and is being restarted), "failed" (it died too often; no more restarts).
After a restart the engine holds no stream: it says `EngineRestarted`, and the server
submits each of its streams again as an `OpenStream` carrying the stream's last snapshot
(`memory.snapshot`), plan, epoch and play position, so each continues the same scene.
"""

from __future__ import annotations

import queue
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from model.chunk_frames import ChunkFrames
from server.load_policy import EngineLoad
from server.playout import Chunk, PlanChange

STATES = ("loading", "ready", "degraded", "failed")


@dataclass(frozen=True)
class OpenStream:
    stream_id: str
    prompt: str
    seed: int
    # a restore: the stream's snapshot (StreamSnapshot.to_bytes()), or None to start anew
    snapshot: bytes | None = None
    plan: tuple[tuple[int, str], ...] | None = None  # None: (0, prompt) only
    epoch: int = 0
    play_chunk: int = 0
    # a start image, decoded and fitted to the frame by the server (uint8 (H, W, 3)): the
    # engine never reads image files; None to start from nothing (or from the snapshot)
    image: np.ndarray | None = None
    # when the stream was created (unix seconds): its watermark's time field, the same in
    # every engine that ever runs it (None: the engine's first chunk)
    started: float | None = None


@dataclass(frozen=True)
class ChangePlan:
    stream_id: str
    change: PlanChange


@dataclass(frozen=True)
class StreamOpened:
    stream_id: str
    fps: int
    frames_per_chunk: int
    height: int  # of the frames it sends (after any upscaling stage)
    width: int
    chunk: int = 0  # the first chunk it will generate (a restored stream's snapshot chunk)
    first_chunk_frames: int = 0  # chunk 0 (the VAE's first decode: 9 for Wan's; 0: as the rest)

    @property
    def frames(self) -> ChunkFrames:
        return ChunkFrames(self.first_chunk_frames or self.frames_per_chunk, self.frames_per_chunk)


@dataclass(frozen=True)
class ChunkReady:
    stream_id: str
    chunk: Chunk
    ms: dict[str, float]  # stage -> milliseconds (Stream.stats.ms)
    cache_bytes: int
    snapshot: bytes | None = None  # the stream after this chunk (chunk.index + 1)
    load: EngineLoad | None = None  # the engine's load policy, as it stood (None: no policy)


@dataclass(frozen=True)
class StreamFailed:
    stream_id: str
    code: str
    message: str


@dataclass(frozen=True)
class EngineRestarted:
    generation: int  # 1 for the first engine, +1 per restart
    crashed: tuple[str, ...] = ()  # streams whose chunk was under way when it died
    # the streams it lost, to be re-opened from their snapshots; None: every stream (a
    # whole engine restarted), a tuple: one worker of several (server/engine_ray.py) died
    streams: tuple[str, ...] | None = None


@dataclass(frozen=True)
class EngineStateChanged:
    state: str  # one of STATES
    reason: str = ""


Result = StreamOpened | ChunkReady | StreamFailed | EngineRestarted | EngineStateChanged


def drain_queue(q) -> list:
    """Everything waiting in a queue.Queue now, without waiting (the engines' drain)."""
    out = []
    while True:
        try:
            out.append(q.get_nowait())
        except queue.Empty:
            return out


class Engine(ABC):
    """Runs the model for every stream of one server (see the module docstring)."""

    state: str = "loading"
    restarts: int = 0  # engine deaths survived

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def stop(self, timeout: float = 5.0) -> bool: ...

    @abstractmethod
    def can_submit(self) -> bool: ...

    @abstractmethod
    def submit(self, command: OpenStream | ChangePlan) -> bool: ...

    @abstractmethod
    def set_progress(self, stream_id: str, play_chunk: int) -> None: ...

    @abstractmethod
    def close_stream(self, stream_id: str) -> None: ...

    @abstractmethod
    def drain(self) -> list[Result]: ...

    def queue_depths(self) -> dict[str, int]:
        """Items waiting in its bounded queues, by name (for metrics)."""
        return {}
