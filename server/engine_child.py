"""The engine process: loads the model, runs the GenerationWorker, and speaks to the server
over one duplex pipe (small messages) and a FrameRing (the frames).

    server -> engine   ("cmd", OpenStream | ChangePlan)   ("progress", {stream: chunk})
                       ("close", [stream, ...])           ("fault", kind)   ("stop",)
    engine -> server   ("ready", pid)   ("result", Result, slot, shape)   ("held", [stream])
                       ("crash", stream, message)   ("fatal", message)

A ChunkReady travels without its frames: they are in ring slot `slot` (or, if they do not
fit, in the message itself, with slot None). The process ignores SIGINT (the server
handles Ctrl-C and stops it) and exits when the server's end of the pipe closes.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import queue
import signal
import threading
from dataclasses import dataclass, field, replace

import torch

from memory.stream import chunk_frames_of
from model.sampler import full_steps
from server.frame_ring import FrameRing
from server.load_policy import StepGovernor
from server.worker import ChunkReady, GenerationWorker

log = logging.getLogger(__name__)
EXIT_CRASH = 70  # the worker thread died of an exception (restart from snapshots)
EXIT_FATAL = 71  # the model could not be loaded (restarting will not help)


@dataclass(frozen=True)
class ModelSource:
    """How the engine process gets its model: a spec for server.app.load_model, or a
    model already built in the server (pickled once, e.g. a test's random-init model)."""

    spec: str = "tiny"
    dtype: str = "auto"
    base: str | None = None  # a Wan2.1 model's base directory (docs/models.md)
    lora: str | None = None
    size: str | None = None  # "WxH"
    device: str = "auto"
    pickled: bytes | None = None

    @classmethod
    def of(cls, model) -> ModelSource:
        buf = io.BytesIO()
        torch.save(model, buf)
        return cls(pickled=buf.getvalue())

    def load(self):
        if self.pickled is not None:
            return torch.load(io.BytesIO(self.pickled), weights_only=False)
        from server.app import load_model

        return load_model(self.spec, self.dtype, self.base, self.lora, self.size, self.device)


@dataclass(frozen=True)
class EngineParams:
    ahead_chunks: int = 2
    command_queue: int = 64
    result_queue: int = 16
    torch_threads: int = 1
    sampler_changes: dict = field(default_factory=dict)
    log_level: int = logging.WARNING
    max_batch: int = 1  # streams whose chunks share one forward pass
    watermark: str | None = None  # the server name the frames are marked with (None: off)
    degrade: bool = True  # fewer steps when overloaded (server/load_policy.py)
    min_steps: int | None = None  # the fewest it degrades to (None: half the model's)
    upscale: int = 1  # the upscaling stage after the decode (1: none, 2: the learned 2x)
    solo_threads: int | None = None  # torch threads while one stream is on (None: the same)


def engine_model(source: ModelSource, params: EngineParams):
    """The model an engine runs: loaded in its own process, with the server's sampling."""
    torch.set_num_threads(params.torch_threads)
    model = source.load()
    model.with_sampler(**params.sampler_changes)
    return model


def worker_for(model, params: EngineParams) -> GenerationWorker:
    """The GenerationWorker an engine runs its streams on (not started), with the
    upscaling stage `params.upscale` names (built here, in the engine's process)."""
    from model.upscale import resolve_upscaler

    return GenerationWorker(
        model,
        params.ahead_chunks,
        params.command_queue,
        params.result_queue,
        params.torch_threads,
        notify=lambda: None,
        mark=marker_of(params),
        max_batch=params.max_batch,
        governor=governor_for(model, params),
        upscaler=resolve_upscaler(params.upscale),
        solo_threads=params.solo_threads,
    )


def governor_for(model, params: EngineParams) -> StepGovernor:
    """The load policy of an engine running `model` (it only measures with degrade off)."""
    frames = chunk_frames_of(model)
    return StepGovernor(
        full_steps(model.config.sampler),
        frames.rest / model.config.stream.fps,
        params.min_steps,
        enabled=params.degrade,
    )


def marker_of(params: EngineParams):
    """The watermarking step the engine applies to each chunk (None when unmarked)."""
    if params.watermark is None:
        return None
    from server.provenance.marking import StreamMarker

    return StreamMarker(params.watermark).mark


def main(conn, source: ModelSource, params: EngineParams, ring: tuple, free_slots) -> None:
    """The engine process's entry point (multiprocessing target)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=params.log_level, format="%(asctime)s engine %(message)s")
    try:
        worker = worker_for(engine_model(source, params), params)
    except Exception as exc:
        log.exception("the engine could not load its model")
        conn.send(("fatal", f"cannot load the model: {exc}"))
        os._exit(EXIT_FATAL)
    frames = FrameRing.attach(*ring)
    threading.Thread(target=_read, args=(conn, worker), name="engine-read", daemon=True).start()
    worker.start()
    conn.send(("ready", os.getpid()))
    held: list[str] = []
    while True:
        try:
            result = worker.results.get(timeout=0.2)
        except queue.Empty:
            if not worker.alive:
                break
        else:
            _send(conn, result, frames, free_slots)
        if (now := sorted(worker.stream_ids)) != held:
            held = now
            conn.send(("held", held))
    if worker.crash is not None:
        stream_id, exc = worker.crash
        conn.send(("crash", stream_id, f"{type(exc).__name__}: {exc}"))
        os._exit(EXIT_CRASH)
    os._exit(0)


def _send(conn, result, frames: FrameRing, free_slots) -> None:
    if not isinstance(result, ChunkReady) or not frames.fits(result.chunk.frames):
        conn.send(("result", result, None, None))
        return
    free_slots.acquire()
    data = result.chunk.frames
    slot = frames.write(data)
    bare = replace(result, chunk=replace(result.chunk, frames=None))
    conn.send(("result", bare, slot, data.shape))


def _read(conn, worker: GenerationWorker) -> None:
    """Apply the server's messages; exit when it is gone."""
    try:
        while True:
            msg = conn.recv()
            kind = msg[0]
            if kind == "cmd":
                worker.submit_wait(msg[1])
            elif kind == "progress":
                for stream_id, chunk in msg[1].items():
                    worker.set_progress(stream_id, chunk)
            elif kind == "close":
                for stream_id in msg[1]:
                    worker.close_stream(stream_id)
            elif kind == "fault":
                if msg[1] == "exit":
                    os._exit(1)
                worker.fault = msg[1]
            elif kind == "stop":  # finish the chunk under way, then exit
                worker.stop(timeout=0)
    except (EOFError, OSError, pickle.UnpicklingError):
        os._exit(0)  # the server is gone: nobody to generate for
