"""ChunkFrames: how many video frames each chunk of a stream holds, as its VAE decodes them.

A causal video VAE with temporal stride s decodes n latent frames into n * s frames, except
that some (Wan's) decode a video's very first latent frame into one frame only: the first
chunk of 3 latent frames gives 1 + 4 * 2 = 9 frames, every later one 12. Frame arithmetic
(where chunk k starts, which chunk holds frame f) goes through this one object, so nothing
assumes a constant frame count per chunk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ChunkFrames:
    first: int  # frames of chunk 0
    rest: int  # frames of every later chunk

    def __post_init__(self):
        if self.first < 1 or self.rest < 1:
            raise ValueError(f"chunks hold at least one frame, not {self.first}/{self.rest}")

    @classmethod
    def of(cls, value: int | ChunkFrames) -> ChunkFrames:
        """A ChunkFrames, or an int n: n frames in every chunk."""
        return value if isinstance(value, ChunkFrames) else cls(value, value)

    def count(self, chunk: int) -> int:
        """Frames of chunk `chunk`."""
        return self.first if chunk == 0 else self.rest

    def start(self, chunk: int) -> int:
        """Index of chunk `chunk`'s first frame (its end for chunk + 1)."""
        return 0 if chunk <= 0 else self.first + (chunk - 1) * self.rest

    def chunk_of(self, frame: int) -> int:
        """The chunk that holds frame `frame`."""
        return 0 if frame < self.first else 1 + (frame - self.first) // self.rest

    def offset(self, frame: int) -> int:
        """Position of frame `frame` within its chunk."""
        return frame - self.start(self.chunk_of(frame))

    def boundary_at_or_after(self, frame: int | float) -> int:
        """The first chunk that starts at or after frame `frame`."""
        if frame <= 0:
            return 0
        return 1 + max(0, math.ceil((frame - self.first) / self.rest))

    def nearest_boundary(self, frame: float) -> int:
        """The chunk whose start is nearest frame `frame` (ties go to the later one)."""
        if frame < self.first / 2:
            return 0
        return 1 + max(0, math.floor((frame - self.first) / self.rest + 0.5))

    def chunks_for(self, frames: int) -> int:
        """Chunks needed to hold `frames` frames."""
        return self.boundary_at_or_after(frames)
