"""The heap trimmer: freed peer memory goes back to the OS shortly after viewers leave."""

from __future__ import annotations

import asyncio
import platform

import pytest

from server import heap_trim
from server.heap_trim import HeapTrimmer, trim_heap

GLIBC = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")


@GLIBC
def test_trim_heap_calls_glibc():
    assert trim_heap() is True


async def test_soon_coalesces_into_one_trim_after_the_delay(monkeypatch):
    calls = []
    monkeypatch.setattr(heap_trim, "_TRIM", lambda pad: calls.append(pad))
    trimmer = HeapTrimmer(delay=0.05, period=3600)
    for _ in range(5):
        trimmer.soon()
    assert calls == []  # not at once: a burst of leaving viewers costs one trim
    await asyncio.sleep(0.2)
    assert calls == [0] and trimmer.trims == 1
    trimmer.soon()
    await asyncio.sleep(0.2)
    assert trimmer.trims == 2
    trimmer.stop()


async def test_periodic_trim_and_stop(monkeypatch):
    calls = []
    monkeypatch.setattr(heap_trim, "_TRIM", lambda pad: calls.append(pad))
    trimmer = HeapTrimmer(delay=10, period=0.05)
    trimmer.start()
    await asyncio.sleep(0.28)
    trimmer.stop()
    seen = len(calls)
    assert seen >= 3
    await asyncio.sleep(0.15)
    assert len(calls) == seen  # stopped: no more trims


async def test_without_malloc_trim_nothing_is_scheduled(monkeypatch):
    monkeypatch.setattr(heap_trim, "_TRIM", None)
    trimmer = HeapTrimmer(delay=0.01, period=0.01)
    trimmer.start()
    trimmer.soon()
    await asyncio.sleep(0.05)
    assert trimmer.trims == 0 and trim_heap() is False


@GLIBC
async def test_a_leaving_viewer_is_forgotten_and_the_server_trims(live_server, session):
    server = await live_server()
    server.heap.delay = 0.05
    s = await session(server.ws_url)
    sid = (await s.create("a big red circle bouncing over the ocean"))["stream"]
    viewer = await s.watch(sid, keep_images=False)
    await viewer.wait_frames(2, 30)
    before = server.heap.trims
    await s.request({"type": "unwatch", "stream": sid, "viewer": viewer.id, "token": s.tokens[sid]})
    await viewer.close()
    assert viewer.id not in s._viewers  # a closed viewer (and its peer) is not kept
    for _ in range(100):
        if server.heap.trims > before:
            break
        await asyncio.sleep(0.05)
    assert server.heap.trims > before
