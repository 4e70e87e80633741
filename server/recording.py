"""Recordings: the stream's H.264 encode remuxed into an MP4 file (no second encode).

A recording is written to `<record_dir>/<id>.mp4.part` as frames come and renamed to
`<id>.mp4` once finished (on `stop`, at the stream's end, at the size/time limit and at
shutdown): a file under its final name is always complete and playable. Finishing
(writing the index, moved to the front for progressive download) runs in a thread.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from server.fanout import EncodedFrame
from server.packets import H264Remuxer, PacketSink
from server.protocol import request_error

if TYPE_CHECKING:
    from server.live import LiveStream
    from server.output_metrics import OutputMetrics

log = logging.getLogger(__name__)
KEEP_FINISHED = 1000  # finished recordings remembered for download (the files stay)


@dataclass(frozen=True)
class StreamKeys:
    """What a download needs of a stream that may have ended: its id and tokens."""

    id: str
    control_token: str
    view_token: str


class Recording(PacketSink):
    def __init__(self, stream: LiveStream, directory: Path, max_seconds: float, metrics):
        super().__init__()
        self.id = secrets.token_hex(8)
        self.keys = StreamKeys(stream.id, stream.control_token, stream.view_token)
        self.stream = stream
        self.path = directory / f"{self.id}.mp4"
        self.partial = directory / f"{self.id}.mp4.part"
        self.max_ticks = round(max_seconds * 90_000)
        self.metrics = metrics
        self.started_at = time.time()
        self.remux: H264Remuxer | None = None
        self.finished = False
        self.closing = False
        self.frames = 0
        self.last_pts = 0
        self.on_limit = None  # called once when the time limit is reached
        self.sign = None  # called (in a thread) on the finished file: its C2PA manifest

    @property
    def url(self) -> str:
        return f"/recordings/{self.id}.mp4"

    @property
    def seconds(self) -> float:
        return (self.last_pts / 90_000 + 1 / self.stream.fps) if self.frames else 0.0

    def write(self, frame: EncodedFrame) -> None:
        if self.closing:
            return
        if self.remux is None:
            self.remux = H264Remuxer(
                str(self.partial), "mp4", frame.access_unit, {"movflags": "+faststart"}
            )
        pts = self.pts(frame)
        self.remux.write(frame.access_unit, pts, frame.keyframe)
        self.frames += 1
        self.last_pts = pts
        self.metrics.recorded_frames.inc()
        if pts >= self.max_ticks and self.on_limit is not None:
            limit, self.on_limit = self.on_limit, None
            limit(self)

    def finish(self) -> None:
        """Close the file (blocking: call from a thread); idempotent."""
        if self.finished:
            return
        self.closing = True
        if self.remux is not None:
            self.remux.close()
            self.partial.replace(self.path)
            if self.sign is not None:
                try:  # a manifest that cannot be signed never costs the recording
                    self.sign(self)
                except Exception:
                    log.exception("recording %s: no C2PA manifest", self.id)
        self.finished = True

    def describe(self, state: str) -> dict[str, Any]:
        return {
            "type": "recording",
            "stream": self.keys.id,
            "id": self.id,
            "url": self.url,
            "state": state,
            "frames": self.frames,
            "seconds": round(self.seconds, 3),
        }


class Recordings:
    """Every recording of one server: at most one running per stream."""

    def __init__(self, directory: str, max_seconds: float, metrics: OutputMetrics, sign=None):
        self.directory = Path(directory)
        self.sign = sign  # (Recording) -> None: signs a finished file (C2PA), or None
        self.max_seconds = max_seconds
        self.metrics = metrics
        self.running: dict[str, Recording] = {}  # stream id -> its running recording
        self.finished: OrderedDict[str, Recording] = OrderedDict()
        self._tasks: set[asyncio.Task] = set()

    def start(self, stream: LiveStream) -> dict[str, Any]:
        rec = self.running.get(stream.id)
        if rec is not None:  # already recording: the same answer again
            return rec.describe("recording")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise request_error(
                "record_failed", f"cannot write to {self.directory}: {exc}"
            ) from None
        rec = Recording(stream, self.directory, self.max_seconds, self.metrics)
        rec.on_limit = lambda r: self._spawn(self.stop(r.stream, "limit"))
        rec.sign = self.sign
        self.running[stream.id] = rec
        stream.add_sink(rec)
        self.metrics.recordings.inc()
        self.metrics.recordings_active.inc()
        log.info("recording %s of stream %s to %s", rec.id, stream.id, rec.path)
        return rec.describe("recording")

    async def stop(self, stream: LiveStream, reason: str = "stopped") -> dict[str, Any]:
        """Stop the stream's recording and finish its file; the answer (or, when the
        recording ends for another reason, an event to the stream) says so."""
        rec, event = self._end(stream, reason)
        await self._finish(rec)
        return event

    def _end(self, stream: LiveStream, reason: str) -> tuple[Recording, dict[str, Any]]:
        rec = self.running.pop(stream.id, None)
        if rec is None:
            raise request_error("not_recording", f"stream {stream.id} is not being recorded")
        stream.remove_sink(rec)
        rec.closing = True
        self.metrics.recordings_active.dec()
        self.finished[rec.id] = rec  # downloadable once `finished` is set
        while len(self.finished) > KEEP_FINISHED:
            self.finished.popitem(last=False)
        event = rec.describe("stopped")
        if reason != "stopped":
            event["reason"] = reason
            stream.broadcast(event)
        log.info("recording %s ends (%s): %d frames", rec.id, reason, rec.frames)
        return rec, event

    async def _finish(self, rec: Recording) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(None, rec.finish)
        except Exception as exc:
            log.exception("recording %s could not be finished", rec.id)
            raise request_error(
                "record_failed", f"the recording could not be finished: {exc}"
            ) from None

    def find(self, recording_id: str) -> Recording | None:
        return self.finished.get(recording_id) or next(
            (r for r in self.running.values() if r.id == recording_id), None
        )

    def stream_ended(self, stream: LiveStream) -> None:
        if stream.id in self.running:
            rec, _ = self._end(stream, "stream_ended")
            self._spawn(self._finish(rec))

    async def finish_all(self) -> None:
        for rec in list(self.running.values()):
            try:
                await self.stop(rec.stream, "server_shutdown")
            except Exception:
                log.exception("recording %s could not be finished at shutdown", rec.id)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
