"""Training sequences of TinyWorld: frames and one caption per chunk, rendered in this
process or ahead of time in worker processes.

On two CPU cores the trainer renders a sequence when it needs one (about 11 ms for four
12-frame chunks at 128x128, small beside a 1.2 s training step). On a GPU a step takes a
few tens of milliseconds, so rendering moves to worker processes that keep a queue of
finished sequences; the trainer takes what is ready and never waits on them after the
start (a slow queue means each sequence is reused a little more, not a stalled GPU).
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from dataclasses import dataclass

import numpy as np

from model.tinyworld.captions import changed, random_attributes, random_caption, random_switch
from model.tinyworld.render import World


@dataclass(frozen=True)
class SequenceParams:
    n_chunks: int
    chunk_frames: int
    size: int
    switch_prob: float  # chance of a prompt switch at each chunk boundary
    far_sink_prob: float  # chance that the first chunk comes from long before the rest


@dataclass
class Sequence:
    frames: np.ndarray  # (n_chunks * chunk_frames, size, size, 3) uint8
    captions: list[str]  # one per chunk
    far: bool  # the first chunk is a sink from far earlier (a gap follows it)


def sample_sequence(rng: np.random.Generator, p: SequenceParams) -> Sequence:
    """One sequence: the stream's first chunk (or, with far_sink_prob, a chunk from up to 40
    chunks before the rest, as the attention sink is) and the chunks after it, with prompt
    switches at chunk boundaries and captions that leave attributes out."""
    attrs = random_attributes(rng)
    world = World(attrs, seed=int(rng.integers(2**62)), size=p.size)
    caption = random_caption(rng, attrs)
    gap = int(rng.integers(1, 40)) if rng.random() < p.far_sink_prob else 0
    total_chunks = p.n_chunks + gap
    keep = [0] + list(range(gap + 1, total_chunks))
    frames = np.empty((p.n_chunks * p.chunk_frames, p.size, p.size, 3), np.uint8)
    scratch = np.empty((p.size, p.size, 3), np.uint8)
    captions = []
    j = 0
    for c in range(total_chunks):
        if c > 0 and rng.random() < p.switch_prob:
            new = random_switch(rng, attrs)
            caption = random_caption(rng, new, keep=changed(attrs, new))
            attrs = world.set_prompt(new, c * p.chunk_frames)
        if c in keep:
            for _ in range(p.chunk_frames):
                world.advance(frames[j])
                j += 1
            captions.append(caption)
        else:
            for _ in range(p.chunk_frames):
                world.advance(scratch)
    return Sequence(frames, captions, gap > 0)


def _render(seed: int, p: SequenceParams) -> Sequence:
    return sample_sequence(np.random.default_rng(seed), p)


class SequenceSource:
    """Sequences on demand. With workers > 0, `workers` processes render ahead, keeping
    about `ahead` sequences in flight; `take(n)` returns those finished (up to n) and
    waits only with wait=True or when nothing at all is in flight."""

    def __init__(self, rng: np.random.Generator, p: SequenceParams, workers: int = 0):
        self.rng, self.p, self.workers = rng, p, workers
        self.pending: deque = deque()
        self.pool = None
        if workers > 0:
            # spawn, not fork: the parent may already hold a CUDA context
            self.pool = multiprocessing.get_context("spawn").Pool(workers)
            self.ahead = 8 * workers
            self._top_up()

    def _top_up(self) -> None:
        while len(self.pending) < self.ahead:
            seed = int(self.rng.integers(2**62))
            self.pending.append(self.pool.apply_async(_render, (seed, self.p)))

    def take(self, n: int, wait: bool = False) -> list[Sequence]:
        if self.pool is None:
            return [sample_sequence(self.rng, self.p) for _ in range(n)]
        out = []
        while self.pending and len(out) < n and (wait or self.pending[0].ready()):
            out.append(self.pending.popleft().get())
        self._top_up()
        return out

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool = None
