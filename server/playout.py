"""Loop-side state of one live stream, sans-I/O: the prompt plan, the chunks waiting to
play, and the play head on the 90 kHz media clock.

Nothing here sleeps, sends or touches tensors; the asyncio adapter (`server.live`) calls
`step()` once per media tick and feeds `accept()` with chunks from the model worker.

Prompt switches (and storyboard edits) are *plan changes*. A change starts a new epoch:
chunks generated under the old plan from the first changed chunk on are dropped (those in
the buffer now, and those still on their way from the worker), and the worker rewinds its
`Stream` to that chunk. Because changes only apply at the first chunk no frame of which has
been played, the play head never shows a frame that is later replaced.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import numpy as np

from model.chunk_frames import ChunkFrames

MEDIA_CLOCK_HZ = 90_000
KEEP_EPOCHS = 64  # plan epochs whose cut points are remembered


def ticks_per_frame(fps: int) -> int:
    """RTP clock ticks between two frames (3750 at 24 fps)."""
    if MEDIA_CLOCK_HZ % fps:
        raise ValueError(f"{fps} fps does not divide the 90 kHz media clock")
    return MEDIA_CLOCK_HZ // fps


@dataclass(frozen=True)
class Chunk:
    index: int  # chunk k holds frames [frames.start(k), frames.start(k + 1))
    epoch: int  # plan epoch the worker generated it under
    frames: np.ndarray  # (frames.count(k), H, W, 3) uint8


@dataclass(frozen=True)
class PlanChange:
    """What the worker must do after a plan change (it travels as a command)."""

    epoch: int  # chunks generated from now on carry this epoch
    rewind_to: int  # first chunk whose prompt changed: regenerate from here
    plan: tuple[tuple[int, str], ...]  # the whole plan: (first chunk, prompt), by chunk


@dataclass(frozen=True)
class Shown:
    """What one media tick shows."""

    tick: int  # media clock tick; RTP timestamp = tick * ticks_per_frame
    index: int  # generated frame shown (when held: the last one, again)
    image: np.ndarray  # (H, W, 3) uint8
    held: bool  # no new frame this tick (stall or pause)
    keyframe: bool  # first frame of a prompt switch: encoders send a keyframe
    anchor: bool  # the tick -> frame mapping changes here (start, hold, resume)


@dataclass(frozen=True)
class PlanEntry:
    text: str
    source: str  # "prompt" (typed) or "storyboard" (scheduled)


@dataclass
class PromptPlan:
    """Which prompt each chunk is generated under: a step function of the chunk index."""

    entries: dict[int, PlanEntry] = field(default_factory=dict)

    def prompt_at(self, chunk: int) -> str:
        keys = sorted(self.entries)
        i = bisect.bisect_right(keys, chunk) - 1
        assert i >= 0, "a plan always has an entry at chunk 0"
        return self.entries[keys[i]].text

    def as_tuple(self) -> tuple[tuple[int, str], ...]:
        return tuple((k, self.entries[k].text) for k in sorted(self.entries))

    def with_prompt(self, chunk: int, text: str) -> PromptPlan:
        """Typed prompt from `chunk` on; scheduled entries after it stay."""
        keep = {k: e for k, e in self.entries.items() if k < chunk or e.source == "storyboard"}
        keep[chunk] = PlanEntry(text, "prompt")
        return PromptPlan(keep)

    def with_storyboard(self, boundary: int, items: list[tuple[int, str]]) -> PromptPlan:
        """Replace the scheduled entries from `boundary` on by `items` (chunk, text); the
        prompt in force at `boundary` stays until the first item, even if it was scheduled."""
        keep = {k: e for k, e in self.entries.items() if k < boundary or e.source == "prompt"}
        if not any(k <= boundary for k in keep):
            keep[boundary] = PlanEntry(self.prompt_at(boundary), "prompt")
        for chunk, text in items:
            keep[chunk] = PlanEntry(text, "storyboard")
        return PromptPlan(keep)

    def since(self, chunk: int) -> PromptPlan:
        """The same plan from `chunk` on, without the entries before it no longer in force."""
        keys = sorted(self.entries)
        i = max(bisect.bisect_right(keys, chunk) - 1, 0)
        return PromptPlan({k: self.entries[k] for k in keys[i:]})

    def first_difference(self, other: PromptPlan, start: int) -> int | None:
        """First chunk >= start generated under different prompts by the two plans."""
        candidates = sorted({start, *(k for k in (*self.entries, *other.entries) if k > start)})
        for k in candidates:
            if self.prompt_at(k) != other.prompt_at(k):
                return k
        return None


class Playout:
    """Chunks waiting to play and the play head of one stream (loop side)."""

    def __init__(
        self, prompt: str, frames_per_chunk: int | ChunkFrames, fps: int, ahead_chunks: int
    ):
        self.frames = ChunkFrames.of(frames_per_chunk)  # the stream's frames per chunk
        self.fpc = self.frames.rest
        self.fps = fps
        self.ticks_per_frame = ticks_per_frame(fps)
        self.ahead = ahead_chunks
        self.plan = PromptPlan({0: PlanEntry(prompt, "prompt")})
        self.epoch = 0
        self.next_frame = 0  # index of the next generated frame to show
        self.tick = 0  # next media tick to emit
        self.started = False
        self.paused = False
        self.holding = False
        self.last_index = -1
        self._last_image: np.ndarray | None = None
        self._buffer: dict[int, Chunk] = {}
        self._cuts: dict[int, int] = {}  # epoch e -> first chunk invalidated when e ended
        self._keyframes: set[int] = set()  # frame indices that start a prompt switch
        # counters (monotonic; the adapter turns them into metrics)
        self.frames_accepted = 0
        self.frames_dropped = 0  # generated, then dropped by a plan change
        self.stalls = 0  # times playback ran dry (not counting pauses)
        self.held_ticks = 0  # ticks that repeated the last frame

    def resume_at(self, frame: int, plan: PromptPlan) -> None:
        """Start at frame `frame` under `plan` (a stream resumed from disk): its frame
        count goes on from there."""
        self.next_frame = frame
        self.plan = plan.since(self.play_chunk)

    # -- the worker side -----------------------------------------------------------------
    @property
    def play_chunk(self) -> int:
        """The chunk being played (or about to be)."""
        return self.frames.chunk_of(self.next_frame)

    def credit(self) -> int:
        """The worker may generate chunks with an index below this."""
        return self.play_chunk + 1 + self.ahead

    def accept(self, chunk: Chunk) -> bool:
        """Take a chunk from the worker; False if a plan change made it stale."""
        if chunk.epoch != self.epoch:
            cuts = [c for e, c in self._cuts.items() if chunk.epoch <= e < self.epoch]
            if chunk.epoch not in self._cuts or chunk.index >= min(cuts):
                self.frames_dropped += len(chunk.frames)
                return False
        if self.frames.start(chunk.index + 1) <= self.next_frame or chunk.index in self._buffer:
            return False
        self._buffer[chunk.index] = chunk
        self.frames_accepted += len(chunk.frames)
        return True

    # -- plan changes ----------------------------------------------------------------------
    def first_unplayed_chunk(self) -> int:
        """The first chunk boundary no frame after which has been shown."""
        return self.frames.boundary_at_or_after(self.next_frame)

    def set_prompt(self, text: str) -> tuple[int, PlanChange | None]:
        """Switch to `text` at the first unplayed chunk; returns (first frame, change)."""
        k = self.first_unplayed_chunk()
        return self.frames.start(k), self._change(self.plan.with_prompt(k, text), k)

    def chunk_of(self, seconds: float) -> int:
        """Nearest chunk boundary to a stream time, not before the first unplayed one."""
        k = self.frames.nearest_boundary(seconds * self.fps)
        return max(k, self.first_unplayed_chunk())

    def set_storyboard(self, items: list[tuple[float, str]]) -> tuple[list[int], PlanChange | None]:
        """Schedule (seconds, prompt) items; returns the first frame of each, and the change."""
        k0 = self.first_unplayed_chunk()
        chunks = [self.chunk_of(at) for at, _ in items]
        order = sorted(range(len(items)), key=lambda i: items[i][0])  # later `at` wins a tie
        placed = [(chunks[i], items[i][1]) for i in order]
        return [self.frames.start(c) for c in chunks], self._change(
            self.plan.with_storyboard(k0, placed), k0
        )

    def _change(self, new: PromptPlan, start: int) -> PlanChange | None:
        k = self.plan.first_difference(new, start)
        self.plan = new.since(self.play_chunk)  # bounded: past entries are forgotten
        if k is None:
            return None
        self._cuts[self.epoch] = k
        self.epoch += 1
        for e in [e for e in self._cuts if e < self.epoch - KEEP_EPOCHS]:
            del self._cuts[e]  # chunks this old are long gone (dropped if they ever come)
        self._keyframes = {f for f in self._keyframes if f >= self.next_frame}
        for idx in [i for i in self._buffer if i >= k]:
            self.frames_dropped += len(self._buffer.pop(idx).frames)
        self._keyframes.add(self.frames.start(k))
        return PlanChange(self.epoch, k, self.plan.as_tuple())

    # -- the media clock ---------------------------------------------------------------------
    def has_next(self) -> bool:
        return self.play_chunk in self._buffer

    @property
    def buffered_frames(self) -> int:
        ready = 0
        k = self.play_chunk
        while k in self._buffer:
            ready += len(self._buffer[k].frames)
            k += 1
        return max(0, ready - self.frames.offset(self.next_frame))

    def step(self) -> Shown | None:
        """Advance one media tick: the next frame, or the last one held. None before start."""
        if not self.started:
            if self.paused or not self.has_next():
                return None
            self.started = True
            anchor = True
        else:
            anchor = False
        if self.paused or not self.has_next():
            if not self.holding:
                self.holding = True
                anchor = True
                self.stalls += 0 if self.paused else 1
            self.held_ticks += 1
            assert self._last_image is not None
            shown = Shown(self.tick, self.last_index, self._last_image, True, False, anchor)
        else:
            anchor = anchor or self.holding
            self.holding = False
            k = self.play_chunk
            i = self.frames.offset(self.next_frame)
            image = self._buffer[k].frames[i]
            keyframe = self.next_frame in self._keyframes
            self._keyframes.discard(self.next_frame)
            shown = Shown(self.tick, self.next_frame, image, False, keyframe, anchor)
            self._last_image, self.last_index = image, self.next_frame
            self.next_frame += 1
            if self.next_frame == self.frames.start(k + 1):
                del self._buffer[k]
        self.tick += 1
        return shown
