"""Remuxing the stream's H.264 encode: no second encode, only new containers.

`PacketSink` is what a remuxing output subscribes to the stream's H.264 `SharedEncoder`
with (beside the WebRTC viewers' tracks): it is offered every encoded frame on the loop
and starts at the first keyframe. `H264Remuxer` writes access units (Annex B, SPS/PPS
in-band before each keyframe, as aiortc's x264 makes them) into any container PyAV
muxes (MP4, MPEG-TS, FLV): the first keyframe is read as a raw H.264 byte stream to
describe the stream, so the output copies its parameters instead of opening an encoder.
"""

from __future__ import annotations

import fractions
import io
from typing import Any

import av

from server.fanout import EncodedFrame
from server.playout import MEDIA_CLOCK_HZ

CLOCK = fractions.Fraction(1, MEDIA_CLOCK_HZ)


class PacketSink:
    """Subclasses implement `write(frame)`; frames come from the first keyframe on."""

    def __init__(self) -> None:
        self.started = False
        self.first_timestamp = 0

    def offer(self, frame: EncodedFrame) -> None:
        if frame.access_unit is None:
            return
        if not self.started:
            if not frame.keyframe:
                return
            self.started = True
            self.first_timestamp = frame.timestamp
        self.write(frame)

    def write(self, frame: EncodedFrame) -> None:
        raise NotImplementedError

    def request_keyframe(self) -> None:  # SharedEncoder subscribers may be asked this
        pass

    def pts(self, frame: EncodedFrame) -> int:
        """The frame's time from this sink's first frame, in 90 kHz ticks."""
        return frame.timestamp - self.first_timestamp


class H264Remuxer:
    """Writes H.264 access units into a container; the first one must be a keyframe."""

    def __init__(
        self,
        target: Any,
        fmt: str,
        first_keyframe: bytes,
        options: dict[str, str] | None = None,
    ):
        with av.open(io.BytesIO(first_keyframe), format="h264") as probe:
            template = probe.streams.video[0]
            self.container = av.open(target, "w", format=fmt, options=options or {})
            try:
                self.stream = self.container.add_stream_from_template(template)
            except Exception:
                self.container.close()
                raise
        self.stream.time_base = CLOCK
        self.frames = 0
        self.bytes = 0

    def write(self, access_unit: bytes, pts: int, keyframe: bool) -> None:
        packet = av.Packet(access_unit)
        packet.pts = packet.dts = pts
        packet.time_base = CLOCK
        packet.is_keyframe = keyframe
        packet.stream = self.stream
        self.container.mux(packet)
        self.frames += 1
        self.bytes += len(access_unit)

    def close(self) -> None:
        self.container.close()
