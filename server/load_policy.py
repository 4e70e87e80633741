"""What an engine does when it cannot keep every stream in real time.

The engine's load is the video its playing streams need per second over the video it
makes per second: `streams x seconds of work per chunk / seconds of video per chunk`, the
work per chunk measured (a moving average of each chunk's share of the engine's time).
At 1.0 the engine is just keeping up; above, every stream would stall.

The policy, in order:
  1. above `high`, take one denoising step off every stream's chunks (never below
     `min_steps`); each step off is a forward pass fewer per chunk;
  2. at `min_steps` and still above `high`, the engine is *saturated*: the server refuses
     new streams with `busy` (docs/protocol.md) instead of making everyone stall;
  3. when the load one step up would be below `low`, give a step back.
Steps change at most once per `hold` seconds, so that each change is measured before the
next. Every stream gets the same steps: no stream is starved for another (the scheduler
already runs the stream with the fewest chunks ready first).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class EngineLoad:
    """A reading of the policy, sent with each chunk (server.engine.ChunkReady.load)."""

    load: float  # demand over capacity at the current steps (1.0: just real time)
    steps: int  # denoising steps each chunk gets now
    full_steps: int  # the model's own (its sampling settings)
    saturated: bool  # at min_steps and still over `high`: new streams are refused

    @property
    def degraded(self) -> bool:
        return self.steps < self.full_steps


class StepGovernor:
    def __init__(
        self,
        full_steps: int,
        chunk_seconds: float,
        min_steps: int | None = None,
        enabled: bool = True,
        high: float = 1.0,
        low: float = 0.8,
        hold: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.full_steps = full_steps
        floor = full_steps // 2 if min_steps is None else min(min_steps, full_steps)
        self.min_steps = max(1, floor)
        self.chunk_seconds = chunk_seconds
        self.enabled = enabled
        self.high, self.low, self.hold = high, low, hold
        self.steps = full_steps
        self._clock = clock
        self._cost: float | None = None  # seconds of engine time per chunk, moving average
        self._streams = 0
        self._changed = clock()

    def chunk_done(self, seconds: float, streams: int) -> None:
        """A chunk took `seconds` of the engine's time (its share of a batch) while
        `streams` streams were playing; maybe change the steps."""
        self._cost = seconds if self._cost is None else 0.8 * self._cost + 0.2 * seconds
        self._streams = streams
        if not self.enabled or self._clock() - self._changed < self.hold:
            return
        load = self.load
        if load > self.high and self.steps > self.min_steps:
            self._set_steps(self.steps - 1)
        elif self.steps < self.full_steps and load * self._ratio(self.steps + 1) < self.low:
            self._set_steps(self.steps + 1)

    @property
    def load(self) -> float:
        if self._cost is None:
            return 0.0
        return self._streams * self._cost / self.chunk_seconds

    def reading(self) -> EngineLoad:
        load = self.load
        saturated = self.steps == self.min_steps and load > self.high
        return EngineLoad(round(load, 3), self.steps, self.full_steps, saturated)

    def _ratio(self, steps: int) -> float:
        """Work per chunk at `steps` over work at the current steps: a forward pass per
        step plus one more that caches the chunk (the decode left out: an upper bound)."""
        return (steps + 1) / (self.steps + 1)

    def _set_steps(self, steps: int) -> None:
        if self._cost is not None:  # expected at the new steps, until measured
            self._cost *= self._ratio(steps)
        self.steps = steps
        self._changed = self._clock()


def degraded_event(stream_id: str, load: EngineLoad) -> dict:
    """The `degraded` event (docs/protocol.md): sent when a stream's chunks start getting
    fewer steps than the model's, when that number changes, and (active false) when they
    get the model's steps again."""
    return {
        "type": "degraded",
        "stream": stream_id,
        "active": load.degraded,
        "steps": load.steps,
        "full_steps": load.full_steps,
        "load": load.load,
        "reason": "engine_overloaded" if load.degraded else "recovered",
    }


def load_stats(load: EngineLoad | None) -> dict:
    """What `stats` says of the load policy (nothing before the first chunk)."""
    if load is None:
        return {}
    return {
        "engine_load": load.load,
        "steps": load.steps,
        "full_steps": load.full_steps,
        "degraded": load.degraded,
        "saturated": load.saturated,
    }
