"""MP4 (H.264) files written frame by frame with PyAV: memory stays flat for any length."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from model.errors import RenderError


class Mp4Writer:
    def __init__(self, path: str | Path, fps: int, width: int, height: int, crf: int = 18):
        self.path = Path(path)
        if self.path.is_dir():
            raise RenderError(f"output path {self.path} is a directory", value=str(path))
        try:
            self._container = av.open(str(self.path), mode="w", format="mp4")
        except (OSError, av.error.FFmpegError) as exc:
            raise RenderError(f"cannot write {self.path}: {exc}", value=str(path)) from exc
        self._stream = self._container.add_stream("libx264", rate=fps)
        self._stream.width, self._stream.height = width, height
        self._stream.pix_fmt = "yuv420p"
        self._stream.time_base = Fraction(1, fps)
        self._stream.options = {"crf": str(crf), "preset": "veryfast"}
        self.frames = 0

    def write(self, frames: np.ndarray) -> None:
        """frames: uint8 (T, H, W, 3) RGB."""
        for rgb in frames:
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            vf.pts = self.frames
            self.frames += 1
            for packet in self._stream.encode(vf):
                self._container.mux(packet)

    def close(self) -> None:
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_frames(path: str | Path):
    """Yield uint8 (H, W, 3) RGB frames of a video file."""
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="rgb24")
