"""Cache policies: which past latent frames a chunk attends to, and where each is stored.

A policy maps the global index g of a latent frame (0, 1, 2, ... for ever) to a slot of a
fixed number of slots, and says which frames form the context at a given head (the index
of the next frame to generate). It never touches tensors: the cache does.

`SinkRollingWindow` is LongLive's frame sink + rolling window. Another policy (FramePack-
style compression of older chunks, a fast-weight memory) implements the same interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass


class CachePolicy(ABC):
    slots: int  # number of latent-frame slots the cache must preallocate

    def pinned(self, g: int) -> bool:
        """Whether frame g is held for ever (an attention sink); none by default."""
        return False

    @abstractmethod
    def slot_for(self, g: int) -> int | None:
        """Slot that stores frame g, or None if frame g is not kept."""

    @abstractmethod
    def context(self, head: int) -> list[int]:
        """Global indices of the frames the frames at `head` attend to, oldest first."""

    @abstractmethod
    def min_rewind(self, head: int) -> int:
        """Smallest frame index the stream can rewind to when `head` frames exist."""

    @abstractmethod
    def chunk_groups(self, frames: list[int], chunk: int) -> list[int]:
        """Chunk id of each context frame (frames of one id attend to each other)."""


@dataclass
class SinkRollingWindow(CachePolicy):
    """`sink` frames pinned from frame `sink_start` on; the last `window` frames rolling;
    `margin` extra for rewind. With sink_start > 0 (a stream's warm-up, never shown, comes
    first) the sink pins the first frames shown, and the warm-up only passes through the
    window."""

    sink: int
    window: int
    margin: int
    sink_start: int = 0

    def __post_init__(self):
        self.ring = self.window + self.margin
        self.slots = self.sink + self.ring

    def pinned(self, g: int) -> bool:
        return self.sink_start <= g < self.sink_start + self.sink

    def slot_for(self, g: int) -> int | None:
        if self.pinned(g):
            return g - self.sink_start
        # the unpinned frames, numbered without the sink's gap, take the ring in turn
        u = g if g < self.sink_start else g - self.sink
        return self.sink + u % self.ring

    def context(self, head: int) -> list[int]:
        sink = range(self.sink_start, min(self.sink_start + self.sink, head))
        recent = range(max(0, head - self.window), head)
        return sorted(set(sink) | set(recent))

    def min_rewind(self, head: int) -> int:
        return max(0, head - self.margin)

    def chunk_groups(self, frames: list[int], chunk: int) -> list[int]:
        return [g // chunk for g in frames]
