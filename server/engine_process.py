"""ProcessEngine: the Engine (server.engine) as a supervised child process.

The model runs in a process of its own (server/engine_child.py), started from a forkserver
that has torch and the model code imported already, so a restart costs the model's load
(about a second for the tiny model), not Python's and torch's start-up. Two threads of the
server process talk to it, so the event loop never waits on the engine:

    supervisor  starts the process, reads its pipe (results, with frames copied out of the
                FrameRing), notices its death (end of pipe), restarts it with backoff
    writer      one per process: sends queued commands, progress and closings to it

States (`state`): "loading" until the first process has loaded its model, "ready", then
"degraded" from a death until the next process is ready. `max_deaths` deaths in a row,
each within `quick_seconds` of its process's start (a crash loop), or a model that cannot
load, make it "failed": no more restarts. Restarts back off: 0.2 s, doubling per quick
death, at most 5 s.
Each state change is a result (EngineStateChanged); each restart is an EngineRestarted,
after which the server re-opens its streams from their snapshots.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import replace

from server import engine_child
from server.engine import (
    ChangePlan,
    Engine,
    EngineRestarted,
    EngineStateChanged,
    OpenStream,
    Result,
    drain_queue,
)
from server.engine_child import EngineParams, ModelSource
from server.frame_ring import FrameRing

log = logging.getLogger(__name__)


def _context():
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["server.engine_child"])
    return ctx


class ProcessEngine(Engine):
    def __init__(
        self,
        source: ModelSource,
        params: EngineParams,
        notify: Callable[[], None],
        slot_bytes: int,
        slots: int = 4,
        max_deaths: int = 5,
        quick_seconds: float = 10.0,
        start_timeout: float = 120.0,
    ):
        self.source = source
        self.params = params
        self.slot_bytes = slot_bytes
        self.slots = slots
        self.max_deaths = max_deaths
        self.quick_seconds = quick_seconds
        self._up_since: float | None = None
        self.start_timeout = start_timeout
        self._notify = notify
        self._ctx = _context()
        self._commands: queue.Queue[OpenStream | ChangePlan] = queue.Queue(params.command_queue)
        self._results: queue.Queue[Result] = queue.Queue()
        self._lock = threading.Lock()
        self._progress: dict[str, int] = {}
        self._closing: set[str] = set()
        self._faults: list[str] = []
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._settled = threading.Event()  # the first process is ready, or it failed
        self._proc = None
        self._supervisor = threading.Thread(
            target=self._supervise, name="endless-engine-supervisor", daemon=True
        )
        self.state = "loading"
        self.restarts = 0
        self.generation = 0
        self.pid: int | None = None  # of the engine process now running
        self.stream_ids: list[str] = []  # the streams the engine process holds (it says)
        self.last_reason = ""
        self._crashed: tuple[str, ...] = ()

    # -- the Engine interface (called from the event loop) -----------------------------------
    async def start(self) -> None:
        self._supervisor.start()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._settled.wait, self.start_timeout)

    async def stop(self, timeout: float = 5.0) -> bool:
        self._stop.set()
        self._wake.set()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._supervisor.join, timeout)
        if self._supervisor.is_alive():  # the process did not finish its chunk in time
            self._kill()
            await loop.run_in_executor(None, self._supervisor.join, 1.0)
        return not self._supervisor.is_alive()

    def can_submit(self) -> bool:
        return self.state != "failed" and not self._commands.full()

    def submit(self, command: OpenStream | ChangePlan) -> bool:
        if self.state == "failed":
            return False
        try:
            self._commands.put_nowait(command)
        except queue.Full:
            return False
        self._wake.set()
        return True

    def set_progress(self, stream_id: str, play_chunk: int) -> None:
        with self._lock:
            self._progress[stream_id] = play_chunk
        self._wake.set()

    def close_stream(self, stream_id: str) -> None:
        with self._lock:
            self._closing.add(stream_id)
            self._progress.pop(stream_id, None)
        self._wake.set()

    def drain(self) -> list[Result]:
        return drain_queue(self._results)

    def queue_depths(self) -> dict[str, int]:
        return {"commands": self._commands.qsize(), "results": self._results.qsize()}

    # -- faults (operators and tests) ----------------------------------------------------------
    def inject_fault(self, kind: str) -> None:
        """ "kill": SIGKILL the engine process; "exit": it exits at once; "raise" / "oom":
        its next chunk raises an error / an out-of-memory."""
        if kind == "kill":
            self._kill()
            return
        with self._lock:
            self._faults.append(kind)
        self._wake.set()

    def _kill(self) -> None:
        pid = self.pid
        if pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    # -- the supervisor thread ---------------------------------------------------------------
    def _emit(self, result: Result) -> None:
        self._results.put(result)
        self._notify()

    def _set_state(self, state: str, reason: str = "") -> None:
        if state != self.state:
            log.log(
                logging.INFO if state == "ready" else logging.WARNING,
                "engine %s%s",
                state,
                f": {reason}" if reason else "",
            )
        self.state, self.last_reason = state, reason
        self._emit(EngineStateChanged(state, reason))

    def _supervise(self) -> None:
        quick = 0  # deaths in a row, each soon after its process became ready
        while not self._stop.is_set():
            self.generation += 1
            self._up_since = None
            reason, fatal = self._run_once()
            if self._stop.is_set():
                break
            up = self._up_since
            lived = 0.0 if up is None else time.monotonic() - up
            quick = quick + 1 if lived < self.quick_seconds else 1
            if fatal or quick >= self.max_deaths:
                why = reason if fatal else f"{quick} deaths in a row, each within "
                why += "" if fatal else f"{self.quick_seconds:.0f}s of its start ({reason})"
                self._set_state("failed", why)
                self._settled.set()
                return
            self.restarts += 1
            self._set_state("degraded", reason)
            self._stop.wait(min(5.0, 0.2 * 2 ** (quick - 1)))  # backoff
        self._settled.set()

    def _run_once(self) -> tuple[str, bool]:
        """One engine process, from start to death; (why it ended, whether fatal)."""
        ring = FrameRing.create(self.slots, self.slot_bytes)
        free = self._ctx.Semaphore(self.slots)
        ours, theirs = self._ctx.Pipe()
        proc = self._ctx.Process(
            target=engine_child.main,
            args=(theirs, self.source, self.params, (ring.name, self.slots, ring.slot_bytes), free),
            name="endless-engine",
            daemon=True,
        )
        crashed: list[str] = []
        alive = threading.Event()
        writer = None
        try:
            proc.start()
            theirs.close()
            self._proc = proc
            if not ours.poll(self.start_timeout):
                return f"the engine did not load in {self.start_timeout:.0f}s", True
            first = ours.recv()
            if first[0] == "fatal":
                return first[1], True
            self.pid = first[1]
            alive.set()
            writer = threading.Thread(
                target=self._write, args=(ours, alive), name="endless-engine-writer", daemon=True
            )
            writer.start()
            self._up_since = time.monotonic()
            self._set_state("ready")
            if self.generation > 1:
                self._emit(EngineRestarted(self.generation, self._crashed))
            self._settled.set()
            while True:
                msg = ours.recv()
                if msg[0] == "result":
                    _, result, slot, shape = msg
                    if slot is not None:
                        frames = ring.read(slot, shape)
                        free.release()
                        result = replace(result, chunk=replace(result.chunk, frames=frames))
                    self._emit(result)
                elif msg[0] == "held":
                    self.stream_ids = msg[1]
                elif msg[0] == "crash":
                    crashed.append(msg[1])
                    log.error("engine: stream %s crashed it: %s", msg[1], msg[2])
        except (EOFError, OSError):
            pass
        finally:
            alive.clear()
            self._wake.set()
            if writer is not None:
                writer.join(1.0)
            ours.close()
            theirs.close()
            if proc.pid is not None:  # it started
                proc.join(1.0)
                if proc.is_alive():
                    proc.kill()
                    proc.join(2.0)
            self.pid = None
            self.stream_ids = []
            ring.close()
        self._crashed = tuple(crashed)  # told with the next EngineRestarted
        return _exit_reason(proc.exitcode), proc.exitcode == engine_child.EXIT_FATAL

    def _write(self, conn, alive: threading.Event) -> None:
        try:
            while alive.is_set():
                self._wake.wait(0.5)
                self._wake.clear()
                if self._stop.is_set():
                    conn.send(("stop",))
                    return
                while True:
                    try:
                        conn.send(("cmd", self._commands.get_nowait()))
                    except queue.Empty:
                        break
                with self._lock:
                    progress, self._progress = self._progress, {}
                    closing, self._closing = self._closing, set()
                    faults, self._faults = self._faults, []
                if closing:
                    conn.send(("close", sorted(closing)))
                if progress:
                    conn.send(("progress", progress))
                for kind in faults:
                    conn.send(("fault", kind))
        except (OSError, ValueError):  # the process died under us: the supervisor sees it
            pass


def _exit_reason(code: int | None) -> str:
    if code is None:
        return "the engine process did not exit"
    if code < 0:
        try:
            return f"the engine process was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"the engine process was killed by signal {-code}"
    if code == engine_child.EXIT_CRASH:
        return "the engine process crashed (an exception while generating)"
    return f"the engine process exited with status {code}"
