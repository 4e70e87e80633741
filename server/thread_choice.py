"""ThreadChoice: how many torch threads the engine gives a stream it runs alone.

One stream on a 2-core machine leaves a core idle, and its chunks (a switch's guided chunk
above all) come out about 1.5x sooner on two threads. But torch's intra-op threads
spin-wait at every operation's barrier, so when anything else wants a core (another
process, a busy front end) two threads run slower than one (measured: 2x slower beside one
busy process; 37x in a crowded machine). So the choice is measured, not assumed: each
chunk's fixed-work stages (the clean pass that caches its keys and values, and the decode:
the same work every chunk, guided or not) are timed under the thread count it ran on, and
the faster count by a running average wins. Every `probe_every` chunks the other count runs
one chunk, and that fresh look replaces its old average, so a change either way (the
other process ended, or started) is seen within a probe.

Sans-I/O: the worker asks `pick()` before a lone stream's chunk and tells `record()` after.
"""

from __future__ import annotations

import os

EMA = 0.3  # weight of the newest timing in the running average
PROBE_EVERY = 16  # chunks between two runs on the count not in use (about 8 s)


def default_solo_threads() -> int:
    """`serve --solo-threads`'s default: two where the process may use two cores (the
    count measured: docs/operations.md), else one."""
    return min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)


class ThreadChoice:
    def __init__(self, usual: int, solo: int, probe_every: int = PROBE_EVERY):
        self.usual, self.solo = usual, solo
        self.probe_every = probe_every
        self.seconds: dict[int, float] = {}  # thread count -> running average (s per chunk)
        self._chunks = 0
        self._last: int | None = None  # the count the last recorded chunk ran on

    @property
    def choices(self) -> tuple[int, ...]:
        return (self.solo, self.usual) if self.solo != self.usual else (self.usual,)

    def best(self) -> int:
        """The count faster so far (the solo count until both are measured)."""
        unmeasured = [n for n in self.choices if n not in self.seconds]
        if unmeasured:
            return unmeasured[0]
        return min(self.choices, key=lambda n: self.seconds[n])

    def pick(self) -> int:
        """The thread count for the next chunk of a lone stream."""
        self._chunks += 1
        best = self.best()
        if len(self.choices) > 1 and self._chunks % self.probe_every == 0:
            return next(n for n in self.choices if n != best)  # a look at the other one
        return best

    def record(self, threads: int, seconds: float) -> None:
        """The fixed-work stages of a chunk that ran on `threads` took `seconds`."""
        if threads not in self.choices or not seconds > 0:
            return
        old = self.seconds.get(threads)
        if old is None or threads != self._last:  # a first or fresh look: the old is stale
            self.seconds[threads] = seconds
        else:
            self.seconds[threads] = old + EMA * (seconds - old)
        self._last = threads
