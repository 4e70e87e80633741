"""One encode per (stream, codec), fanned out to every viewer as ready RTP payloads.

aiortc encodes per sender: `RTCRtpSender._run_rtp` calls `self._next_encoded_frame(codec)`,
which awaits `track.recv()` and runs that sender's own encoder (so `MediaRelay` still costs
one encode per viewer). Here a `SharedEncoder` encodes each shown frame once and packetises
it once (`Vp8Encoder` / `H264Encoder` from `aiortc.codecs`); `PreEncodedSender` overrides
just `_next_encoded_frame` to hand those payloads over, and `_send_keyframe` (called on a
viewer's PLI/FIR) to ask the shared encoder for a keyframe. RTP headers, sequence numbers,
SRTP, NACK/RTX retransmission and RTCP stay aiortc's. The H.264 encode also gives each
frame's NAL units back from its payloads (`EncodedFrame.access_unit`, Annex B) for the
remuxing outputs (HLS, recordings, RTMP), which subscribe beside the viewers: still one
encode. `adopt(sender)` switches the
sender that `addTransceiver` made to that subclass (same object, same state).

Each viewer's `FanoutTrack` holds a bounded queue of encoded frames. Policy when full (a
viewer that cannot keep up): its queue is emptied, the frames are counted as dropped, and
it waits for the next keyframe, which it requests. A new viewer also starts at a keyframe.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from aiortc import RTCRtpCodecParameters
from aiortc.codecs import get_encoder
from aiortc.codecs.h264 import h264_depayload
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcrtpsender import RTCEncodedFrame, RTCRtpSender
from av import VideoFrame

from server.playout import MEDIA_CLOCK_HZ

CLOCK = fractions.Fraction(1, MEDIA_CLOCK_HZ)
KEYFRAME_REQUEST_GAP = 0.25  # seconds: viewers' PLIs closer than this share one keyframe


@dataclass(frozen=True)
class EncodedFrame:
    payloads: list[bytes]  # RTP payloads, codec payload descriptors included
    timestamp: int  # 90 kHz media clock
    tick: int  # media tick (timestamp / ticks_per_frame)
    index: int  # generated frame shown
    keyframe: bool
    access_unit: bytes | None = None  # H.264 only: the frame's NAL units, Annex B (remuxers)


class SharedEncoder:
    """Encodes one stream for every viewer that negotiated `mime` ("video/VP8", ...)."""

    def __init__(self, mime: str, bitrate: int, keyframe_ticks: int, ticks_per_frame: int):
        self.mime = mime
        self._encoder = get_encoder(RTCRtpCodecParameters(mimeType=mime, clockRate=90000))
        self._encoder.target_bitrate = bitrate  # aiortc clamps it to the codec's range
        self.keyframe_ticks = keyframe_ticks
        self.ticks_per_frame = ticks_per_frame
        self.subscribers: set[FanoutTrack] = set()
        self.encodes = 0  # encoder invocations (tests count them)
        self.keyframes = 0
        self._want_key = True
        self._last_key_tick: int | None = None
        self._last_request = 0.0
        self._deferred_request = False  # a request inside the gap, still to be served

    @property
    def bitrate(self) -> int:
        return self._encoder.target_bitrate

    def request_keyframe(self) -> None:
        """A viewer needs a keyframe (it joined, or lost packets). Requests closer than
        KEYFRAME_REQUEST_GAP share one keyframe, but none is dropped: one that comes
        within the gap of the last is served once the gap has passed."""
        now = time.monotonic()
        if now - self._last_request >= KEYFRAME_REQUEST_GAP or self._last_key_tick is None:
            self._want_key = True
            self._last_request = now
        else:
            self._deferred_request = True

    def plan_keyframe(self, tick: int, forced: bool) -> bool:
        """Decide (on the loop) whether the frame at `tick` is a keyframe."""
        if self._deferred_request:
            now = time.monotonic()
            if now - self._last_request >= KEYFRAME_REQUEST_GAP:
                self._deferred_request = False
                self._want_key = True
                self._last_request = now
        key = (
            forced
            or self._want_key
            or self._last_key_tick is None
            or tick - self._last_key_tick >= self.keyframe_ticks
        )
        if key:
            self._want_key = False
            self._last_key_tick = tick
        return key

    def encode(self, image: np.ndarray, tick: int, index: int, keyframe: bool) -> EncodedFrame:
        """RGB (H, W, 3) uint8 -> RTP payloads. Runs in the encoder thread."""
        frame = VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        frame.pts = tick * self.ticks_per_frame
        frame.time_base = CLOCK
        payloads, timestamp = self._encoder.encode(frame, keyframe)
        access_unit = None
        if self.mime == "video/H264":  # the remuxers' copy: the same NAL units, Annex B
            access_unit = b"".join(h264_depayload(p) for p in payloads)
        self.encodes += 1
        self.keyframes += keyframe
        return EncodedFrame(payloads, timestamp, tick, index, keyframe, access_unit)

    def publish(self, frame: EncodedFrame) -> None:
        for track in list(self.subscribers):
            track.offer(frame)


class FanoutTrack(MediaStreamTrack):
    """A viewer's video track: encoded frames of its stream, for a `PreEncodedSender`.

    `bind(mime)` is called on the first frame the sender asks for (the codec is negotiated
    by then) and returns the stream's shared encoder for that codec.
    """

    kind = "video"

    def __init__(
        self,
        bind: Callable[[FanoutTrack, str], SharedEncoder],
        max_queue: int,
        on_first: Callable[[EncodedFrame], None] | None = None,
        on_sent: Callable[[], None] | None = None,
        on_drop: Callable[[int], None] | None = None,
    ):
        super().__init__()
        self._bind = bind
        self._queue: asyncio.Queue[EncodedFrame] = asyncio.Queue(max_queue)
        self._on_first = on_first
        self._on_sent = on_sent or (lambda: None)
        self._on_drop = on_drop or (lambda n: None)
        self.encoder: SharedEncoder | None = None
        self.need_key = True
        self.sent = 0  # frames handed to the sender
        self.dropped = 0  # frames skipped because this viewer fell behind
        self.first_tick: int | None = None

    def offer(self, frame: EncodedFrame) -> None:
        """Called by the shared encoder (on the loop) for each encoded frame."""
        if self.need_key and not frame.keyframe:
            return
        if self._queue.full():
            n = self._queue.qsize() + 1
            while not self._queue.empty():
                self._queue.get_nowait()
            self.dropped += n
            self._on_drop(n)
            self.need_key = True
            self.request_keyframe()
            return
        self.need_key = False
        self._queue.put_nowait(frame)

    def request_keyframe(self) -> None:
        if self.encoder is not None:
            self.encoder.request_keyframe()

    async def next_encoded(self, mime: str) -> EncodedFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self.encoder is None:
            self.encoder = self._bind(self, mime)
            self.encoder.subscribers.add(self)
            self.encoder.request_keyframe()
        frame = await self._queue.get()
        self.sent += 1
        self._on_sent()
        if self.first_tick is None:
            self.first_tick = frame.tick
            if self._on_first is not None:
                self._on_first(frame)
        return frame

    async def recv(self):  # pragma: no cover - only PreEncodedSender reads this track
        raise MediaStreamError("FanoutTrack carries encoded frames; use a PreEncodedSender")

    def stop(self) -> None:
        if self.encoder is not None:
            self.encoder.subscribers.discard(self)
        super().stop()


class PreEncodedSender(RTCRtpSender):
    """An RTCRtpSender that sends a FanoutTrack's already-encoded payloads."""

    async def _next_encoded_frame(self, codec: RTCRtpCodecParameters) -> RTCEncodedFrame | None:
        track = self.track
        if not isinstance(track, FanoutTrack):
            return await super()._next_encoded_frame(codec)
        frame = await track.next_encoded(codec.mimeType)
        if not self._enabled:
            return None
        return RTCEncodedFrame(frame.payloads, frame.timestamp, None)

    def _send_keyframe(self) -> None:
        track = self.track
        if isinstance(track, FanoutTrack):
            track.request_keyframe()
        else:
            super()._send_keyframe()


def adopt(sender: RTCRtpSender) -> PreEncodedSender:
    """Turn the sender `addTransceiver` made into a PreEncodedSender (before it starts)."""
    if type(sender) is not RTCRtpSender:
        raise TypeError(f"expected a plain RTCRtpSender, got {type(sender).__name__}")
    sender.__class__ = PreEncodedSender
    return sender  # type: ignore[return-value]
