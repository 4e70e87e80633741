"""RTMP push: the stream's H.264 encode remuxed into FLV and sent to an RTMP server
(Twitch, YouTube, nginx-rtmp, ...), with no second encode.

The network side blocks (FFmpeg's RTMP client), so each push runs its own thread fed by a
bounded queue. Policy when the queue fills (the server reads slower than real time, or a
connection is being made): the queue is emptied and the push waits for the next
keyframe, which it asks for. A failed connection or write is retried with exponential
backoff (0.5 s doubling to 10 s) until the push is stopped; every state change is
reported on the loop: connecting, live, retrying (with the error), stopped.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import secrets
import threading
from collections.abc import Callable
from urllib.parse import urlsplit

from server.fanout import EncodedFrame
from server.packets import H264Remuxer, PacketSink
from server.protocol import request_error

log = logging.getLogger(__name__)
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 10.0
QUEUE_FRAMES = 96  # about 4 s at 24 fps
SCHEMES = ("rtmp", "rtmps")


def check_url(url: object) -> str:
    if not isinstance(url, str) or len(url) > 2048:
        raise request_error("bad_url", "'url' must be an rtmp:// or rtmps:// URL")
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES or not parts.hostname:
        raise request_error("bad_url", f"not an rtmp:// or rtmps:// URL: {url[:200]!r}", url)
    return url


def redact(url: str) -> str:
    """The URL without its last path part (an RTMP stream key is a secret)."""
    head, _, _ = url.rpartition("/")
    return head + "/***"


class RtmpPush(PacketSink):
    def __init__(
        self,
        stream_id: str,
        url: str,
        on_status: Callable[[RtmpPush, str, str | None], None],
        request_keyframe: Callable[[], None],
        frames_counter=None,
    ):
        super().__init__()
        self.id = secrets.token_hex(4)
        self.stream_id = stream_id
        self.url = url
        self.state = "connecting"
        self.error: str | None = None
        self.attempts = 0
        self._on_status = on_status
        self._ask_key = request_keyframe
        self._frames = frames_counter
        self._queue: queue.Queue[EncodedFrame | None] = queue.Queue(QUEUE_FRAMES)
        self._need_key = True
        self._stop = threading.Event()
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name=f"rtmp-{self.id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    # -- on the loop --------------------------------------------------------------------------
    def write(self, frame: EncodedFrame) -> None:
        if self._need_key:
            if not frame.keyframe:
                return
            self._need_key = False
        try:
            self._queue.put_nowait(frame)
        except queue.Full:
            self._drain()
            self._need_key = True
            self._ask_key()

    async def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._drain()
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join, timeout)
        if self._thread.is_alive():
            log.warning("RTMP push %s did not stop in %.1fs", self.id, timeout)

    def _drain(self) -> None:
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return

    # -- in the push thread ----------------------------------------------------------------------
    def _status(self, state: str, error: str | None = None) -> None:
        self.state, self.error = state, error
        try:
            self._loop.call_soon_threadsafe(self._on_status, self, state, error)
        except RuntimeError:  # the loop is closed
            pass

    def _next(self) -> EncodedFrame | None:
        while not self._stop.is_set():
            try:
                return self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
        return None

    def _run(self) -> None:
        delay = BACKOFF_FIRST
        while not self._stop.is_set():
            self.attempts += 1
            self._status("connecting")
            try:
                self._session()
                delay = BACKOFF_FIRST
            except Exception as exc:  # the network, the server, FFmpeg: all retried
                if self._stop.is_set():
                    break
                log.warning("RTMP push %s to %s: %s", self.id, redact(self.url), exc)
                self._status("retrying", str(exc) or type(exc).__name__)
                self._stop.wait(delay)
                delay = min(delay * 2, BACKOFF_MAX)
        self._status("stopped")

    def _session(self) -> None:
        """One connection: from a keyframe until it fails or the push is stopped."""
        self._need_key = True
        self._loop.call_soon_threadsafe(self._ask_key)
        frame = self._next()
        while frame is not None and not frame.keyframe:
            frame = self._next()
        if frame is None:
            return
        remux = H264Remuxer(self.url, "flv", frame.access_unit)
        t0 = frame.timestamp
        try:
            while frame is not None:
                remux.write(frame.access_unit, frame.timestamp - t0, frame.keyframe)
                if self._frames is not None:
                    self._frames.inc()
                if self.state != "live":  # the first write connected: we are on air
                    self._status("live")
                frame = self._next()
        finally:
            try:
                remux.close()
            except Exception:
                pass

    def describe(self) -> dict:
        return {
            "type": "push_status",
            "stream": self.stream_id,
            "push": self.id,
            "url": redact(self.url),
            "state": self.state,
            "error": self.error,
        }
