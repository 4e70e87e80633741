"""Give freed heap memory back to the operating system.

Every WebRTC peer allocates and frees a few hundred kilobytes natively (DTLS keys and
certificates, SRTP sessions, ICE sockets, codec buffers). glibc's allocator keeps freed
chunks in its arenas, so a server whose viewers come and go grows in RSS though nothing
leaks: 150 peer pairs in a bare aiortc loop grow a process by 18 MiB, and by 0.2 MiB when
`malloc_trim(0)` runs between them. The server trims shortly after a viewer leaves and
once a minute besides.

Trimming returns only what lies free at the top of a heap; two glibc habits keep the rest.
Every thread that allocates gets an arena of its own (up to 8 per core): the encoder and
executor threads each fragment one. And the threshold above which a block is mapped on its
own rises to the size of the last mapped block freed, so after the first frame buffer
(128x128 RGB: 48 KiB, 256x256: 192 KiB; a decoded VP8/H.264 picture) goes back, every later
one is carved from an arena. `tune_allocator()` caps the arenas at two and pins the
threshold at 128 KiB (what a process starts with), so frame-sized blocks go back to the
OS when they are freed. Without glibc (musl, macOS) all of this does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import time

log = logging.getLogger(__name__)


def _malloc_trim():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_TRIM = _malloc_trim()

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameters (malloc.h)
M_ARENA_MAX = -8
ARENAS = 2
MMAP_THRESHOLD = 128 * 1024  # glibc's own starting value; setting it stops its drift upwards


def tune_allocator() -> bool:
    """Cap glibc's arenas and pin its mmap threshold (see the module docstring); call it
    early, before the threads it should cover allocate. False where the C library cannot."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_ARENA_MAX, ARENAS)) and bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))


def trim_heap() -> bool:
    """Return freed heap pages to the OS now; False where the C library cannot."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True


class HeapTrimmer:
    """Trims `delay` seconds after `soon()` (many calls, one trim) and every `period`."""

    def __init__(self, delay: float = 2.0, period: float = 60.0):
        self.delay = delay
        self.period = period
        self.trims = 0
        self._pending: asyncio.TimerHandle | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if _TRIM is not None:
            self._task = asyncio.ensure_future(self._every_period())

    def soon(self) -> None:
        if _TRIM is not None and self._pending is None:
            self._pending = asyncio.get_running_loop().call_later(self.delay, self._trim)

    async def _every_period(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            self._trim()

    def _trim(self) -> None:
        self._pending = None
        t0 = time.perf_counter()
        trim_heap()
        self.trims += 1
        log.debug("heap trimmed in %.1f ms", (time.perf_counter() - t0) * 1e3)

    def stop(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        if self._task is not None:
            self._task.cancel()
            self._task = None
