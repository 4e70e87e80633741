"""HLS: the stream's H.264 encode cut into short MPEG-TS segments (remux, no second encode).

A stream is segmented only while someone reads its playlist: the first playlist request
subscribes a `HlsSegmenter` to the H.264 encode (made then if no viewer needs it), and a
segmenter nobody has asked anything of for `idle_seconds` unsubscribes itself. Segments
start at keyframes; the segmenter asks the shared encoder for one when a segment reaches
its target length, so segments last `segment_seconds` (a keyframe request serves every
viewer of the encode, too). Memory is flat: `keep` segments, the newest, are held; the
playlist lists all but the oldest two, so a player that fetches late still finds them.
"""

from __future__ import annotations

import asyncio
import io
import math
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from server.fanout import EncodedFrame
from server.packets import H264Remuxer, PacketSink

if TYPE_CHECKING:
    from server.live import LiveStream
    from server.output_metrics import OutputMetrics

TICKS = 90_000


@dataclass(frozen=True)
class Segment:
    seq: int
    seconds: float
    data: bytes
    tick: int  # media tick of its first frame
    made: float  # time.monotonic() when it was cut


class HlsSegmenter(PacketSink):
    def __init__(
        self,
        stream: LiveStream,
        metrics: OutputMetrics,
        segment_seconds: float = 1.0,
        keep: int = 6,
        idle_seconds: float = 20.0,
    ):
        super().__init__()
        self.stream = stream
        self.metrics = metrics
        self.target = round(segment_seconds * TICKS)
        self.segments: deque[Segment] = deque(maxlen=keep)
        self.idle_seconds = idle_seconds
        self.last_request = time.monotonic()
        self.encoder = None  # the SharedEncoder, set when subscribed
        self._buf: io.BytesIO | None = None
        self._remux: H264Remuxer | None = None
        self._start = 0  # pts of the open segment's first frame
        self._start_tick = 0
        self._asked_key = False
        self._next_seq = 0
        self._changed = asyncio.Event()
        self._waiting = 0  # playlist requests waiting for segments (a reader: not idle)
        self.closed = False

    def touch(self) -> None:
        self.last_request = time.monotonic()

    def write(self, frame: EncodedFrame) -> None:
        if not self._waiting and time.monotonic() - self.last_request > self.idle_seconds:
            self.close()
            return
        pts = self.pts(frame)
        if self._remux is not None and frame.keyframe and pts - self._start >= self.target:
            self._cut(pts)
        if self._remux is None:  # frames come from a keyframe on: this one is
            self._buf = io.BytesIO()
            self._remux = H264Remuxer(self._buf, "mpegts", frame.access_unit)
            self._start, self._start_tick = pts, frame.tick
            self._asked_key = False
        self._remux.write(frame.access_unit, pts, frame.keyframe)
        frame_ticks = self.stream.playout.ticks_per_frame
        if not self._asked_key and pts + frame_ticks - self._start >= self.target:
            self._asked_key = True  # the next frame completes the segment: cut there
            if self.encoder is not None:
                self.encoder.request_keyframe()

    def _cut(self, pts: int) -> None:
        self._remux.close()
        seconds = (pts - self._start) / TICKS
        data = self._buf.getvalue()
        self.segments.append(
            Segment(self._next_seq, seconds, data, self._start_tick, time.monotonic())
        )
        self._next_seq += 1
        self._remux = self._buf = None
        self.metrics.hls_segments.inc()
        self._changed.set()
        self._changed = asyncio.Event()

    def listed(self) -> list[Segment]:
        """The segments the playlist names: all held but the oldest two (once there are
        more than two), so a segment named is still held a while later."""
        held = list(self.segments)
        return held[2:] if len(held) > 3 else held

    async def wait_segments(self, n: int, timeout: float) -> bool:
        """Wait until the playlist names at least `n` segments (False if it closed)."""
        self._waiting += 1
        try:
            async with asyncio.timeout(timeout):
                while len(self.listed()) < n and not self.closed:
                    await self._changed.wait()
        finally:
            self._waiting -= 1
            self.touch()
        return len(self.listed()) >= n

    def playlist(self, token: str) -> str:
        listed = self.listed()
        target = max([math.ceil(s.seconds) for s in listed] + [1])
        lines = [
            "#EXTM3U",
            "#EXT-X-VERSION:3",
            f"#EXT-X-TARGETDURATION:{target}",
            f"#EXT-X-MEDIA-SEQUENCE:{listed[0].seq if listed else 0}",
        ]
        for s in listed:
            lines += [f"#EXTINF:{s.seconds:.3f},", f"{s.seq}.ts?token={token}"]
        return "\n".join(lines) + "\n"

    def segment(self, seq: int) -> Segment | None:
        return next((s for s in self.segments if s.seq == seq), None)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.stream.remove_sink(self)
        self._changed.set()
        if self._remux is not None:
            self._remux.close()
            self._remux = self._buf = None
        self.metrics.hls_active.dec()
