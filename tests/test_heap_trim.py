"""The heap trimmer: freed peer memory goes back to the OS shortly after viewers leave."""

from __future__ import annotations

import asyncio
import platform
import subprocess
import sys
from pathlib import Path

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


_MMAPPED_AFTER_FREE = """
import ctypes, sys
from server.heap_trim import tune_allocator
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
class Info(ctypes.Structure):  # struct mallinfo2
    names = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
    _fields_ = [(n, ctypes.c_size_t) for n in names.split()]
libc.mallinfo2.restype = Info
if sys.argv[1] == "tuned":
    assert tune_allocator()
libc.free(libc.malloc(192 * 1024))  # glibc would now raise its threshold past 192 KiB
before = libc.mallinfo2().hblks
block = libc.malloc(192 * 1024)
print(libc.mallinfo2().hblks - before)  # 1: mapped on its own (returned to the OS on free)
"""


@GLIBC
@pytest.mark.parametrize("mode, mapped", [("tuned", "1"), ("default", "0")])
def test_tuned_allocator_keeps_frame_sized_blocks_mapped(mode, mapped):
    """glibc's default raises its mmap threshold when a mapped block is freed, so the next
    frame buffer comes from an arena (and stays in RSS); tuned, it is mapped again."""
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", _MMAPPED_AFTER_FREE, mode],
        capture_output=True,
        text=True,
        check=True,
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
    )
    assert out.stdout.strip() == mapped
