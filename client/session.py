"""A Python client of the endless live server (docs/protocol.md): requests and events over
the websocket, a WebRTC viewer over aiortc, and an MP4 recorder.

    async with LiveSession("ws://127.0.0.1:8765/ws") as s:
        created = await s.create("a big red circle bouncing over the ocean")
        viewer = await s.watch(created["stream"])
        await viewer.wait_frames(48)
        applied = await s.prompt(created["stream"], "a small blue square in the snow")
        share = created["view_token"]  # what another viewer passes as token=

A session remembers the token it used for each stream (the control token of a stream it
created, or the one given to join/watch/...) and sends it with every request on that stream.

Received frames are mapped back to the server's generated frame indices with the
"viewer_started" and "timeline" events (the RTP timestamp origin is random per viewer).
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import contextlib
import fractions
import itertools
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np
import websockets
from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError

from model.errors import EndlessError

MIME = {"vp8": "video/VP8", "h264": "video/H264"}


def negotiated_codec(answer_sdp: str) -> str | None:
    """The codec an SDP answer picked for video: "vp8", "h264" or None."""
    lines = answer_sdp.splitlines()
    mline = next((ln for ln in lines if ln.startswith("m=video")), None)
    if mline is None or len(mline.split()) < 4:
        return None
    pt = mline.split()[3]
    for ln in lines:
        if ln.startswith(f"a=rtpmap:{pt} "):
            return ln.split()[1].split("/")[0].lower()
    return None


class ServerError(EndlessError):
    """An error reply from the server; `.code` is the protocol error code."""

    def __init__(self, reply: dict[str, Any]):
        super().__init__(reply.get("message", "error"), value=reply)
        self.code = reply.get("code", "error")
        self.reply = reply


@dataclass
class ReceivedFrame:
    pts: int  # RTP timestamp relative to this viewer's first frame (90 kHz)
    received: float  # time.monotonic() when decoded
    image: np.ndarray | None  # (H, W, 3) uint8, or None when not kept


@dataclass
class Timeline:
    """tick -> generated frame index, from the server's anchors (tick, frame, held)."""

    anchors: list[tuple[int, int, bool]] = field(default_factory=list)

    def add(self, tick: int, frame: int, held: bool) -> None:
        entry = (tick, frame, held)
        if entry not in self.anchors:
            bisect.insort(self.anchors, entry)

    def frame_at(self, tick: int) -> int | None:
        i = bisect.bisect_right(self.anchors, (tick, float("inf"), True)) - 1
        if i < 0:
            return None
        t, f, held = self.anchors[i]
        return f if held else f + (tick - t)


class Viewer:
    """One WebRTC receiver of a stream. `frames` keeps every decoded frame (with its image
    if keep_images), or the last `history` of them for long watches; `received` counts all."""

    def __init__(
        self,
        session: LiveSession,
        stream: str,
        keep_images: bool = True,
        history: int | None = None,
    ):
        self.session = session
        self.stream = stream
        self.keep_images = keep_images
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.id: str | None = None
        self.codec: str | None = None
        self.ticks_per_frame = 3750
        self.first_tick: int | None = None
        self.frames: list[ReceivedFrame] | deque[ReceivedFrame] = (
            deque(maxlen=history) if history else []
        )
        self.received = 0
        self.on_frame: list[Callable[[av.VideoFrame], None]] = []
        self._new_frame = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def start(self, codec: str | None = None) -> Viewer:
        transceiver = self.pc.addTransceiver("video", direction="recvonly")
        if codec is not None:
            caps = RTCRtpReceiver.getCapabilities("video").codecs
            transceiver.setCodecPreferences([c for c in caps if c.mimeType == MIME[codec]])
        self.pc.on("track", self._on_track)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        req = {
            "type": "watch",
            "stream": self.stream,
            "token": self.session.tokens.get(self.stream),
            "sdp": self.pc.localDescription.sdp,
        }
        if codec is not None:
            req["codec"] = codec
        reply = await self.session.request(req)
        self.id = reply["viewer"]
        self.ticks_per_frame = reply.get("ticks_per_frame", 3750)
        self.session._viewers[self.id] = self
        await self.pc.setRemoteDescription(RTCSessionDescription(reply["sdp"], "answer"))
        self.codec = negotiated_codec(reply["sdp"])
        return self

    def _on_track(self, track) -> None:
        self._task = asyncio.ensure_future(self._read(track))

    async def _read(self, track) -> None:
        try:
            while True:
                frame = await track.recv()
                image = frame.to_ndarray(format="rgb24") if self.keep_images else None
                self.frames.append(ReceivedFrame(frame.pts, time.monotonic(), image))
                self.received += 1
                for callback in self.on_frame:
                    callback(frame)
                self._new_frame.set()
        except MediaStreamError:
            pass

    # -- mapping to generated frames ---------------------------------------------------------
    def tick_of(self, frame: ReceivedFrame) -> int | None:
        if self.first_tick is None:
            return None
        return self.first_tick + round(frame.pts / self.ticks_per_frame)  # decoders round

    def index_of(self, frame: ReceivedFrame) -> int | None:
        tick = self.tick_of(frame)
        return None if tick is None else self.session.timeline(self.stream).frame_at(tick)

    async def wait_frames(self, n: int, timeout: float = 10.0) -> list[ReceivedFrame]:
        """Wait until `n` frames have been decoded."""
        async with asyncio.timeout(timeout):
            while self.received < n:
                self._new_frame.clear()
                await self._new_frame.wait()
        return list(self.frames)

    async def wait_index(self, index: int, timeout: float = 10.0) -> ReceivedFrame:
        """Wait for the first decoded frame showing generated frame `index` or later."""
        async with asyncio.timeout(timeout):
            while True:
                for f in self.frames:
                    i = self.index_of(f)
                    if i is not None and i >= index:
                        return f
                self._new_frame.clear()
                await self._new_frame.wait()

    async def close(self) -> None:
        if self.id is not None:
            self.session._viewers.pop(self.id, None)
        await self.pc.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class LiveSession:
    """`key`: the server's API key, sent with `create` and `streams` (if it has one)."""

    def __init__(self, url: str, max_events: int | None = None, key: str | None = None):
        self.url = url
        self.key = key
        self.tokens: dict[str, str] = {}  # stream -> the token this session sends for it
        self.ws = None
        self.hello: dict[str, Any] = {}
        # pushed events; with max_events only the latest (wait_event indexes stay absolute)
        self.events: list[dict[str, Any]] | deque[dict[str, Any]] = (
            deque(maxlen=max_events) if max_events else []
        )
        self.event_count = 0
        self._event = asyncio.Event()
        self._replies: dict[object, asyncio.Future] = {}
        self._seq = itertools.count(1)
        self._timelines: dict[str, Timeline] = {}
        self._viewers: dict[str, Viewer] = {}
        self._reader: asyncio.Task | None = None

    async def __aenter__(self) -> LiveSession:
        return await self.connect()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def connect(self, timeout: float = 10.0) -> LiveSession:
        try:
            self.ws = await websockets.connect(self.url, max_size=2**22, open_timeout=timeout)
        except (OSError, TimeoutError, websockets.exceptions.WebSocketException) as exc:
            raise EndlessError(f"cannot connect to {self.url}: {exc}", value=self.url) from None
        self._reader = asyncio.ensure_future(self._read())
        self.hello = await self.wait_event(lambda e: e["type"] == "hello", timeout)
        return self

    async def close(self) -> None:
        for viewer in list(self._viewers.values()):
            await viewer.close()
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                msg = json.loads(raw)
                self._on_message(msg)
        except websockets.ConnectionClosed:
            pass
        finally:
            for fut in self._replies.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("the server closed the connection"))

    def _on_message(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "timeline":
            self.timeline(msg["stream"]).add(msg["tick"], msg["frame"], msg["held"])
        elif kind == "viewer_started":
            for tick, frame, held in msg.get("timeline", []):
                self.timeline(msg["stream"]).add(tick, frame, held)
            viewer = self._viewers.get(msg["viewer"])
            if viewer is not None:
                viewer.first_tick = msg["tick"]
        seq = msg.get("seq")
        fut = self._replies.pop(seq, None) if seq is not None else None
        if fut is not None and not fut.done():
            fut.set_result(msg)
            return
        msg["received"] = time.monotonic()
        self.events.append(msg)
        self.event_count += 1
        self._event.set()

    def timeline(self, stream: str) -> Timeline:
        return self._timelines.setdefault(stream, Timeline())

    async def wait_event(
        self, match: Callable[[dict], bool], timeout: float = 10.0, start: int = 0
    ) -> dict[str, Any]:
        """The first pushed event (from index `start`, counting all events ever pushed)
        for which `match` is true."""
        async with asyncio.timeout(timeout):
            i = start
            while True:
                dropped = self.event_count - len(self.events)
                i = max(i, dropped)
                while i < self.event_count:
                    if match(self.events[i - dropped]):
                        return self.events[i - dropped]
                    i += 1
                self._event.clear()
                await self._event.wait()

    async def send(self, msg: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(msg))

    async def send_raw(self, data: str | bytes) -> None:
        """Send a message as is (for testing how the server takes bad input)."""
        await self.ws.send(data)

    async def request(self, msg: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        """Send a request and wait for its reply; an error reply raises ServerError."""
        seq = next(self._seq)
        fut = asyncio.get_running_loop().create_future()
        self._replies[seq] = fut
        await self.send({**msg, "seq": seq})
        try:
            reply = await asyncio.wait_for(fut, timeout)
        finally:
            self._replies.pop(seq, None)
        if reply.get("type") == "error":
            raise ServerError(reply)
        return reply

    # -- the protocol's requests -------------------------------------------------------------
    # Requests on a stream take `token` (control or view); without one they send the token
    # this session last used for that stream (a created stream's control token).
    async def create(
        self, prompt: str, seed: int = 0, image: bytes | None = None
    ) -> dict[str, Any]:
        """`image`: a PNG or JPEG file's bytes to start the stream from (sent as base64)."""
        msg = {"type": "create", "prompt": prompt, "seed": seed}
        if image is not None:
            msg["image"] = base64.b64encode(image).decode("ascii")
        if self.key is not None:
            msg["key"] = self.key
        created = await self.request(msg)
        self.tokens[created["stream"]] = created["control_token"]
        return created

    def _on(self, kind: str, stream: str, token: str | None, **fields: Any) -> dict[str, Any]:
        if token is not None:
            self.tokens[stream] = token
        return {"type": kind, "stream": stream, "token": self.tokens.get(stream), **fields}

    async def join(self, stream: str, token: str | None = None) -> dict[str, Any]:
        return await self.request(self._on("join", stream, token))

    async def leave(self, stream: str, token: str | None = None) -> dict[str, Any]:
        return await self.request(self._on("leave", stream, token))

    async def watch(
        self,
        stream: str,
        codec: str | None = None,
        keep_images: bool = True,
        history: int | None = None,
        token: str | None = None,
    ) -> Viewer:
        if token is not None:
            self.tokens[stream] = token
        return await Viewer(self, stream, keep_images, history).start(codec)

    async def prompt(self, stream: str, text: str, token: str | None = None) -> dict[str, Any]:
        return await self.request(self._on("prompt", stream, token, text=text))

    async def storyboard(
        self, stream: str, items: list[dict[str, Any]], token: str | None = None
    ) -> dict[str, Any]:
        return await self.request(self._on("storyboard", stream, token, items=items))

    async def pause(self, stream: str, token: str | None = None) -> dict[str, Any]:
        return await self.request(self._on("pause", stream, token))

    async def resume(self, stream: str, token: str | None = None) -> dict[str, Any]:
        return await self.request(self._on("resume", stream, token))

    async def stop(self, stream: str, token: str | None = None) -> dict[str, Any]:
        return await self.request(self._on("stop", stream, token))

    async def stats(self, stream: str, token: str | None = None) -> dict[str, Any]:
        return await self.request(self._on("stats", stream, token))

    async def streams(self) -> list[dict[str, Any]]:
        """The streams this session presented a token for (all of them with the key)."""
        msg: dict[str, Any] = {"type": "streams"}
        if self.key is not None:
            msg["key"] = self.key
        return (await self.request(msg))["streams"]


class Mp4Recorder:
    """Writes a viewer's decoded frames to an H.264 MP4, timed by their RTP timestamps."""

    def __init__(self, path: str, fps: int = 24, ticks_per_frame: int = 3750):
        self.path = path
        self.fps = fps
        self.ticks_per_frame = ticks_per_frame
        self.frames = 0
        self._container = None
        self._stream = None
        self._last_pts = -1

    def write(self, frame: av.VideoFrame) -> None:
        if self._container is None:
            self._container = av.open(self.path, mode="w")
            self._stream = self._container.add_stream("libx264", rate=self.fps)
            self._stream.width, self._stream.height = frame.width, frame.height
            self._stream.pix_fmt = "yuv420p"
            self._stream.time_base = fractions.Fraction(1, self.fps)
        pts = round(frame.pts / self.ticks_per_frame)
        if pts <= self._last_pts:
            return
        out = frame.reformat(format="yuv420p")
        out.pts, out.time_base = pts, fractions.Fraction(1, self.fps)
        for packet in self._stream.encode(out):
            self._container.mux(packet)
        self._last_pts = pts
        self.frames += 1

    def close(self) -> None:
        if self._container is not None:
            for packet in self._stream.encode():
                self._container.mux(packet)
            self._container.close()
            self._container = None
