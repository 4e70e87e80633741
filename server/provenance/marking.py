"""StreamMarker: marks each chunk's frames with its stream's payload, right after decode.

The live worker and the offline render both call it on every chunk before any encode, so
every frame endless sends or writes carries the mark.
"""

from __future__ import annotations

import socket
import time

import numpy as np

from server.provenance.payload import Payload
from server.provenance.watermark import Watermarker

MAX_STREAMS = 1024  # payloads remembered; the oldest are forgotten past this


class StreamMarker:
    def __init__(self, server_name: str | None = None, watermarker: Watermarker | None = None):
        self.server_name = server_name or socket.gethostname()
        self.watermarker = watermarker or Watermarker()
        self._payloads: dict[str, Payload] = {}

    def payload(self, stream_id: str, started: float | None = None) -> Payload:
        """The payload of a stream, fixed at its first call: `started` (unix seconds, when
        the stream was created; default now) gives its minute. The server fixes it at
        `create` and hands `started` to every engine that runs the stream, so the mark
        stays the same across engine restarts and a resume from a state directory."""
        p = self._payloads.get(stream_id)
        if p is None:
            if len(self._payloads) >= MAX_STREAMS:
                self._payloads.pop(next(iter(self._payloads)))
            p = Payload.make(self.server_name, stream_id, started or time.time())
            self._payloads[stream_id] = p
        return p

    def mark(self, stream_id: str, frames: np.ndarray, started: float | None = None) -> np.ndarray:
        """uint8 (T, H, W, 3) -> the same frames carrying the stream's mark (`started`: the
        stream's creation time, where the caller knows it; see `payload`)."""
        return self.watermarker.mark(frames, self.payload(stream_id, started))
