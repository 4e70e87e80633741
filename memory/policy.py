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
    """First `sink` frames pinned; last `window` frames rolling; `margin` extra for rewind."""

    sink: int
    window: int
    margin: int

    def __post_init__(self):
        self.ring = self.window + self.margin
        self.slots = self.sink + self.ring

    def slot_for(self, g: int) -> int | None:
        if g < self.sink:
            return g
        return self.sink + (g - self.sink) % self.ring

    def context(self, head: int) -> list[int]:
        sink = list(range(min(self.sink, head)))
        start = max(self.sink, head - self.window)
        return sink + list(range(start, head))

    def min_rewind(self, head: int) -> int:
        return max(0, head - self.margin)

    def chunk_groups(self, frames: list[int], chunk: int) -> list[int]:
        return [g // chunk for g in frames]
