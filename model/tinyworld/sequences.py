"""Training sequences of TinyWorld: frames and one caption per chunk, rendered in this
process or ahead of time in worker processes.

On two CPU cores the trainer renders a sequence when it needs one (about 11 ms for four
12-frame chunks at 128x128, small beside a 1.2 s training step). On a GPU a step takes a
few tens of milliseconds, so rendering moves to worker processes that keep a queue of
finished sequences; the trainer takes what is ready and never waits on them after the
start (a slow queue means each sequence is reused a little more, not a stalled GPU).
Workers render straight into slots of one shared-memory block and send back only the
captions and the object's track: a sequence is 2.4 MB of frames, and unpickling 48 of
them from pipes took 0.4 s and stacking them another 0.36 s on one core of this repo's
2-core machine; the first GPU run, which did that each step, reached 3.3 steps/s with its
GPU 15-21% busy, and the shared slots 5.4 steps/s.
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from dataclasses import dataclass, replace
from multiprocessing import shared_memory

import numpy as np

from model.tinyworld.captions import (
    changed,
    pick,
    random_attributes,
    random_caption,
    random_switch,
)
from model.tinyworld.render import World
from model.tinyworld.spec import Attributes


@dataclass(frozen=True)
class SequenceParams:
    n_chunks: int
    chunk_frames: int
    size: int
    switch_prob: float  # chance of a prompt switch at each chunk boundary
    far_sink_prob: float  # chance that the first chunk comes from long before the rest
    # motions shown more often than the grammar's uniform draw (e.g. the model's weakest):
    # with focus_prob a sequence opens with one of them
    focus_motions: tuple[str, ...] = ()
    focus_prob: float = 0.0

    @property
    def frames_shape(self) -> tuple[int, int, int, int]:
        return (self.n_chunks * self.chunk_frames, self.size, self.size, 3)


@dataclass
class Sequence:
    frames: np.ndarray  # (n_chunks * chunk_frames, size, size, 3) uint8
    captions: list[str]  # one per chunk
    far: bool  # the first chunk is a sink from far earlier (a gap follows it)
    # per frame, the object's centre (x, y) in [0, 1) and velocity (fw/s), as the renderer
    # drew it: (frames, 4) float32, the truth a velocity probe is trained on
    track: np.ndarray


def sample_sequence(
    rng: np.random.Generator, p: SequenceParams, out: np.ndarray | None = None
) -> Sequence:
    """One sequence: the stream's first chunk (or, with far_sink_prob, a chunk from up to 40
    chunks before the rest, as the attention sink is) and the chunks after it, with prompt
    switches at chunk boundaries and captions that leave attributes out. Frames are drawn
    into `out` when given."""
    attrs = opening_attributes(rng, p)
    world = World(attrs, seed=int(rng.integers(2**62)), size=p.size)
    caption = random_caption(rng, attrs)
    gap = int(rng.integers(1, 40)) if rng.random() < p.far_sink_prob else 0
    total_chunks = p.n_chunks + gap
    keep = [0] + list(range(gap + 1, total_chunks))
    frames = np.empty(p.frames_shape, np.uint8) if out is None else out
    scratch = np.empty((p.size, p.size, 3), np.uint8)
    captions = []
    track = np.empty((len(frames), 4), np.float32)
    j = 0
    for c in range(total_chunks):
        if c > 0 and rng.random() < p.switch_prob:
            new = random_switch(rng, attrs)
            caption = random_caption(rng, new, keep=changed(attrs, new))
            attrs = world.set_prompt(new, c * p.chunk_frames)
        if c in keep:
            for _ in range(p.chunk_frames):
                track[j] = np.concatenate(world.state(world.index))
                world.advance(frames[j])
                j += 1
            captions.append(caption)
        else:
            for _ in range(p.chunk_frames):
                world.advance(scratch)
    return Sequence(frames, captions, gap > 0, track)


def opening_attributes(rng: np.random.Generator, p: SequenceParams) -> Attributes:
    """A sequence's first scene: uniform over the grammar, or with p.focus_prob its motion
    one of p.focus_motions. The motion is not part of a held-out (colour, shape, background)
    triple, so those stay out; without focus motions no extra number is drawn, and the
    sequences a seed gives are the same as before the option existed."""
    attrs = random_attributes(rng)
    if p.focus_motions and rng.random() < p.focus_prob:
        attrs = replace(attrs, motion=pick(rng, p.focus_motions))
    return attrs


_block: shared_memory.SharedMemory | None = None  # a worker's view of the parent's slots


def _slot(buf, p: SequenceParams, slot: int) -> np.ndarray:
    size = int(np.prod(p.frames_shape))
    return np.ndarray(p.frames_shape, np.uint8, buffer=buf, offset=slot * size)


def _render_into(
    seed: int, p: SequenceParams, name: str, slot: int
) -> tuple[list[str], bool, np.ndarray]:
    """Worker: draw a sequence into its slot of the shared block; return the rest."""
    global _block
    if _block is None or _block.name != name:
        # spawned workers share the parent's resource tracker, which unlinks the block
        # only if the parent dies without close()
        _block = shared_memory.SharedMemory(name=name)
    seq = sample_sequence(np.random.default_rng(seed), p, out=_slot(_block.buf, p, slot))
    return seq.captions, seq.far, seq.track


class SequenceSource:
    """Sequences on demand. With workers == 0, `take(n)` renders all n here. With
    workers > 0, that many processes render ahead into `8 * workers` shared-memory slots;
    `take(n)` returns those finished (up to n, and at most the number of slots) and waits
    only with wait=True. The frames it returns are views of the slots: they stay valid
    until the next `take`, which hands their slots back to the workers."""

    def __init__(self, rng: np.random.Generator, p: SequenceParams, workers: int = 0):
        self.rng, self.p = rng, p
        self.pending: deque = deque()  # (result, slot) in the order they were asked for
        self.pool = None
        if workers > 0:
            self.slots = 8 * workers
            self.block = shared_memory.SharedMemory(
                create=True, size=self.slots * int(np.prod(p.frames_shape))
            )
            # spawn, not fork: the parent may already hold a CUDA context
            self.pool = multiprocessing.get_context("spawn").Pool(workers)
            self.free = list(range(self.slots))
            self._top_up()

    def _top_up(self) -> None:
        for slot in self.free:
            seed = int(self.rng.integers(2**62))
            args = (seed, self.p, self.block.name, slot)
            self.pending.append((self.pool.apply_async(_render_into, args), slot))
        self.free = []

    def take(self, n: int, wait: bool = False) -> list[Sequence]:
        if self.pool is None:
            return [sample_sequence(self.rng, self.p) for _ in range(n)]
        self._top_up()  # the slots of the last take are free again
        out = []
        while self.pending and len(out) < n and (wait or self.pending[0][0].ready()):
            result, slot = self.pending.popleft()
            captions, far, track = result.get()
            out.append(Sequence(_slot(self.block.buf, self.p, slot), captions, far, track))
            self.free.append(slot)
        return out

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None
            self.block.unlink()
            try:
                self.block.close()
            except BufferError:  # a caller still holds frames of the last take
                pass
