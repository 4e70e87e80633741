"""The load policy: fewer steps when the engine falls behind, then new streams refused."""

from __future__ import annotations

import aiohttp
import numpy as np
import pytest
from conftest import timeout

from client.session import ServerError
from memory.stream import Stream
from server.load_policy import EngineLoad, StepGovernor, degraded_event
from server.worker import ChunkReady, GenerationWorker, OpenStream

A = "a big red circle bouncing over the ocean"


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_an_overloaded_engine_steps_down_to_its_floor_then_says_saturated():
    clock = Clock()
    gov = StepGovernor(4, chunk_seconds=0.5, clock=clock, hold=3.0)
    assert gov.min_steps == 2 and gov.steps == 4
    for _ in range(5):  # 3 streams x 0.3 s a chunk over 0.5 s of video: load 1.8
        gov.chunk_done(0.3, streams=3)
    assert gov.steps == 4  # the hold: the first reading waits its turn
    assert gov.reading().load > 1.0 and not gov.reading().saturated
    clock.t = 3.1
    gov.chunk_done(0.3, streams=3)
    assert gov.steps == 3 and gov.reading().degraded
    gov.chunk_done(0.3, streams=3)
    assert gov.steps == 3  # one change per hold
    clock.t = 6.2
    gov.chunk_done(0.3, streams=3)
    assert gov.steps == 2
    clock.t = 9.3
    for _ in range(20):
        gov.chunk_done(0.3, streams=3)
    reading = gov.reading()
    assert reading.steps == 2 and reading.saturated  # never below the floor


def test_a_step_comes_back_only_when_the_load_one_step_up_fits():
    clock = Clock()
    gov = StepGovernor(4, chunk_seconds=0.5, clock=clock, hold=1.0, min_steps=1)
    gov.steps = 2
    clock.t = 2.0
    for _ in range(30):  # 1 stream at 0.2 s: load 0.4, one step up 0.53 < 0.8
        gov.chunk_done(0.2, streams=1)
    assert gov.steps == 3
    clock.t = 2.5  # within the hold: measured, not acted on
    for _ in range(30):  # load 0.7 at 3 steps: at 4, 0.875 > 0.8: stay
        gov.chunk_done(0.35, streams=1)
    assert gov.steps == 3
    clock.t = 4.0
    gov.chunk_done(0.35, streams=1)
    assert gov.steps == 3 and gov.reading().degraded


def test_with_degrade_off_it_only_measures():
    clock = Clock()
    gov = StepGovernor(4, chunk_seconds=0.5, clock=clock, enabled=False)
    clock.t = 100.0
    for _ in range(10):
        gov.chunk_done(1.0, streams=4)
    assert gov.steps == 4 and gov.reading().load == 8.0


def test_the_degraded_event_names_steps_and_recovery():
    on = degraded_event("s1", EngineLoad(1.3, 3, 4, False))
    assert on == {
        "type": "degraded",
        "stream": "s1",
        "active": True,
        "steps": 3,
        "full_steps": 4,
        "load": 1.3,
        "reason": "engine_overloaded",
    }
    off = degraded_event("s1", EngineLoad(0.5, 4, 4, False))
    assert off["active"] is False and off["reason"] == "recovered"


def test_a_degraded_worker_generates_with_fewer_steps_like_an_offline_stream(tiny_model):
    """Chunks made while degraded are the chunks of a Stream limited to those steps."""
    gov = StepGovernor(4, chunk_seconds=0.5, min_steps=2, enabled=False)
    gov.steps = 2  # held at the floor (the policy itself is tested above)
    worker = GenerationWorker(tiny_model, 6, 8, 8, 1, notify=lambda: None, governor=gov)
    worker.start()
    try:
        assert worker.submit(OpenStream("s", A, 0))
        chunks = []
        while len(chunks) < 3:
            r = worker.results.get(timeout=timeout(30))
            if isinstance(r, ChunkReady):
                chunks.append(r)
    finally:
        assert worker.stop(timeout(10))
    assert all(c.load.steps == 2 and c.load.full_steps == 4 for c in chunks)
    assert all(c.load.degraded for c in chunks)
    limited, full = Stream(tiny_model, A, seed=0), Stream(tiny_model, A, seed=0)
    limited.step_limit = 2
    for c in chunks:
        want, other = limited.next_chunk(), full.next_chunk()
        assert np.array_equal(c.chunk.frames, want)
    assert not np.array_equal(want, other)  # two steps fewer is a different chunk


async def test_a_saturated_server_refuses_new_streams_with_busy(live_server, session):
    server = await live_server()
    s = await session(server.ws_url)
    sid = (await s.create(A))["stream"]
    stream = server.streams[sid]
    start = s.event_count
    stream._note_load(EngineLoad(1.6, 2, 4, True))  # as a chunk from a saturated engine
    ev = await s.wait_event(lambda e: e["type"] == "degraded", start=start)
    assert ev["active"] is True and ev["steps"] == 2 and ev["stream"] == sid
    with pytest.raises(ServerError) as refused:
        await s.create(A)
    assert refused.value.code == "busy"
    stats = await s.stats(sid)
    assert stats["degraded"] is True and stats["steps"] == 2 and stats["saturated"] is True
    metrics = await http_text(server.url + "metrics")
    assert "endless_engine_saturated 1.0" in metrics
    assert "endless_sampling_steps 2.0" in metrics
    assert "endless_streams_degraded 1.0" in metrics
    start = s.event_count
    stream._note_load(EngineLoad(0.6, 4, 4, False))
    ev = await s.wait_event(lambda e: e["type"] == "degraded", start=start)
    assert ev["active"] is False and ev["reason"] == "recovered"
    assert (await s.create(A))["type"] == "created"  # room again


async def http_text(url: str) -> str:
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        return await r.text()
