"""RayEngine: the Engine (server.engine) spread over Ray actors, one model per worker.

`endless serve --engine ray [--workers N] [--ray-address ADDR] [--gpus-per-worker F]`.
Each worker is a Ray actor (server/ray_worker.py) that owns a model on one GPU (a logical
GPU resource, so a CPU cluster can stand in for one) and runs the ordinary
GenerationWorker, batching its own streams. The front end keeps everything else: the
websocket control, WebRTC and the one encode per codec of each stream; frames come back
once per stream, never once per viewer.

    placement   a new stream goes to the ready worker with the most headroom: how many
                more streams it can run in real time, from its own measured step times
                (fewest streams while nothing is measured yet)
    failure     a worker whose actor dies (process killed, node lost, out of memory) is
                noticed by its poller (ActorDiedError); its streams are reported lost
                (EngineRestarted with `streams`), the server re-opens them from their
                snapshots on the other workers, and the worker is started again
    states      "loading" until every worker is up, "ready", "degraded" while a worker is
                down, "failed" when no worker can be started

Two threads per worker talk to its actor so the event loop never waits on Ray: a poller
(results, and death) and a writer (commands, progress, closings, in order).
Without `address` a local Ray cluster is started on 127.0.0.1 with no dashboard and no
usage reporting; with one it joins that cluster.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
from collections.abc import Callable

from server.engine import (
    ChangePlan,
    ChunkReady,
    Engine,
    EngineRestarted,
    EngineStateChanged,
    OpenStream,
    Result,
    StreamOpened,
    drain_queue,
)
from server.engine_child import EngineParams, ModelSource

log = logging.getLogger(__name__)


def start_ray(address: str | None, workers: int, gpus_per_worker: float) -> bool:
    """Connect to Ray (start a loopback-only local cluster without an address); True when
    this call started the cluster (so stopping the engine shuts it down)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no reports leave the machine
    import ray

    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, configure_logging=False, log_to_driver=False)
        return False
    ray.init(
        num_cpus=max(2, workers),
        num_gpus=workers * gpus_per_worker,  # logical GPUs where there are none
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        configure_logging=False,
        log_to_driver=False,
    )
    return True


class Worker:
    """One Ray actor and the two threads that talk to it (front-end side)."""

    def __init__(self, engine: RayEngine, index: int):
        self.engine = engine
        self.name = f"w{index}"
        self.actor = None
        self.pid: int | None = None
        self.up = False
        self.generation = 0
        self.streams: set[str] = set()
        self.step_ms: float | None = None  # median chunk time per stream it last measured
        self.chunks = 0
        self._outbox: queue.Queue = queue.Queue()
        self._thread = threading.Thread(
            target=self._supervise, name=f"endless-ray-{self.name}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def send(self, kind: str, payload) -> None:
        self._outbox.put((kind, payload))

    def headroom(self, chunk_seconds: float) -> float:
        """Streams it could still add and keep every stream real time."""
        if self.step_ms is None:
            return float(self.engine.max_streams_per_worker - len(self.streams))
        capacity = chunk_seconds * 1e3 / max(self.step_ms, 1e-3)
        return min(capacity, self.engine.max_streams_per_worker) - len(self.streams)

    # -- threads ---------------------------------------------------------------------------
    def _supervise(self) -> None:
        from server.ray_worker import remote_worker

        e = self.engine
        backoff = 0.5
        while not e._stop.is_set():
            self.generation += 1
            try:
                self.actor = remote_worker(e.gpus_per_worker).remote(e.source, e.params)
                self.pid = e.ray.get(self.actor.pid.remote(), timeout=e.start_timeout)
            except Exception as exc:  # could not start: try again, unless we are stopping
                log.error("ray worker %s did not start: %s", self.name, exc)
                self._drop_actor()
                e._worker_changed(self, up=False, reason=f"worker {self.name} did not start")
                if e._stop.wait(backoff):
                    return
                backoff = min(10.0, backoff * 2)
                continue
            backoff = 0.5
            self.up = True
            e._worker_changed(self, up=True)
            writer = threading.Thread(target=self._write, daemon=True)
            writer.start()
            reason = self._poll()
            self.up = False
            writer.join(2.0)
            self._drop_actor()
            if e._stop.is_set():
                return
            lost, self.streams = tuple(sorted(self.streams)), set()
            log.warning("ray worker %s died (%s); its streams move: %s", self.name, reason, lost)
            e._worker_changed(self, up=False, reason=reason, lost=lost)

    def _poll(self) -> str:
        e = self.engine
        while not e._stop.is_set():
            try:
                call = self.actor.poll.options(concurrency_group="poll")
                results = e.ray.get(call.remote(0.25), timeout=30)
            except Exception as exc:  # ActorDiedError, a lost node, a timeout
                return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            for result in results:
                self._seen(result)
                e._emit(result)
        return "stopping"

    def _seen(self, result: Result) -> None:
        if isinstance(result, StreamOpened):
            self.streams.add(result.stream_id)
        elif isinstance(result, ChunkReady):
            self.chunks += 1
            total = result.ms.get("total")
            if total is not None:  # a running median would do; an EMA is enough to place
                self.step_ms = total if self.step_ms is None else 0.8 * self.step_ms + 0.2 * total

    def _write(self) -> None:
        while self.up and not self.engine._stop.is_set():
            try:
                kind, payload = self._outbox.get(timeout=0.25)
            except queue.Empty:
                continue
            try:
                getattr(self.actor, kind).remote(payload)
            except Exception:  # the actor is gone: the poller notices and moves the streams
                return

    def _drop_actor(self) -> None:
        if self.actor is not None:
            try:
                self.engine.ray.kill(self.actor, no_restart=True)
            except Exception:
                pass
        self.actor, self.pid = None, None
        self._outbox = queue.Queue()  # what was meant for the dead actor is void


class RayEngine(Engine):
    def __init__(
        self,
        source: ModelSource,
        params: EngineParams,
        notify: Callable[[], None],
        workers: int = 2,
        address: str | None = None,
        gpus_per_worker: float = 1.0,
        chunk_seconds: float = 0.5,
        max_streams_per_worker: int = 8,
        start_timeout: float = 180.0,
    ):
        self.source, self.params = source, params
        self._notify = notify
        self.address = address
        self.gpus_per_worker = gpus_per_worker
        self.chunk_seconds = chunk_seconds
        self.max_streams_per_worker = max_streams_per_worker
        self.start_timeout = start_timeout
        self.workers = [Worker(self, i) for i in range(workers)]
        self.ray = None
        self._owns_cluster = False
        self._results: queue.Queue[Result] = queue.Queue()
        self._lock = threading.Lock()
        self._placed: dict[str, Worker] = {}
        self._stop = threading.Event()
        self._settled = threading.Event()
        self.state = "loading"
        self.restarts = 0
        self.last_reason = ""
        self._deaths = 0

    # -- the Engine interface ----------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._owns_cluster = await loop.run_in_executor(
            None, start_ray, self.address, len(self.workers), self.gpus_per_worker
        )
        import ray

        self.ray = ray
        for w in self.workers:
            w.start()
        await loop.run_in_executor(None, self._settled.wait, self.start_timeout)
        if self._settled.is_set():
            return
        if any(w.up for w in self.workers):  # serve on those that came up
            self._set_state("degraded", f"not every worker started in {self.start_timeout:.0f}s")
        else:
            self._set_state("failed", f"no worker started in {self.start_timeout:.0f}s")

    async def stop(self, timeout: float = 5.0) -> bool:
        self._stop.set()
        loop = asyncio.get_running_loop()
        for w in self.workers:
            await loop.run_in_executor(None, w._thread.join, timeout)
        if self._owns_cluster and self.ray is not None:
            await loop.run_in_executor(None, self.ray.shutdown)
        return not any(w._thread.is_alive() for w in self.workers)

    def can_submit(self) -> bool:
        return self.state != "failed" and any(w.up for w in self.workers)

    def submit(self, command: OpenStream | ChangePlan) -> bool:
        with self._lock:
            worker = self._placed.get(command.stream_id)
            if isinstance(command, OpenStream) and (worker is None or not worker.up):
                worker = self._place()
                if worker is None:
                    return False
                self._placed[command.stream_id] = worker
                worker.streams.add(command.stream_id)
        if worker is None or not worker.up:
            return False
        worker.send("submit", command)
        return True

    def set_progress(self, stream_id: str, play_chunk: int) -> None:
        worker = self._placed.get(stream_id)
        if worker is not None and worker.up:
            worker.send("progress", {stream_id: play_chunk})

    def close_stream(self, stream_id: str) -> None:
        with self._lock:
            worker = self._placed.pop(stream_id, None)
        if worker is not None:
            worker.streams.discard(stream_id)
            if worker.up:
                worker.send("close", [stream_id])

    def drain(self) -> list[Result]:
        return drain_queue(self._results)

    def queue_depths(self) -> dict[str, int]:
        return {"results": self._results.qsize()}

    def placement(self, stream_id: str) -> dict:
        """Where a stream runs: {"worker": id, "worker_pid": pid} (both None if nowhere)."""
        w = self._placed.get(stream_id)
        return {"worker": w.name if w else None, "worker_pid": w.pid if w else None}

    def worker_stats(self) -> list[dict]:
        return [
            {
                "worker": w.name,
                "pid": w.pid,
                "up": w.up,
                "streams": len(w.streams),
                "chunks": w.chunks,
                "step_ms": w.step_ms,
                "restarts": w.generation - 1,
            }
            for w in self.workers
        ]

    @property
    def pid(self) -> int | None:
        return next((w.pid for w in self.workers if w.up), None)

    # -- inside ------------------------------------------------------------------------------
    def _place(self) -> Worker | None:
        ready = [w for w in self.workers if w.up]
        if not ready:
            return None
        return max(ready, key=lambda w: (w.headroom(self.chunk_seconds), -len(w.streams)))

    def _emit(self, result: Result) -> None:
        self._results.put(result)
        self._notify()

    def _set_state(self, state: str, reason: str = "") -> None:
        if state != self.state:
            log.log(
                logging.INFO if state == "ready" else logging.WARNING, "engine %s %s", state, reason
            )
            self.state, self.last_reason = state, reason
            self._emit(EngineStateChanged(state, reason))

    def _worker_changed(self, worker: Worker, up: bool, reason: str = "", lost=()) -> None:
        with self._lock:
            for stream_id in lost:
                if self._placed.get(stream_id) is worker:
                    del self._placed[stream_id]
        if up:
            if all(w.up for w in self.workers):
                self._set_state("ready")
                self._settled.set()
        else:
            if worker.generation > 1 or lost:
                self.restarts += 1
            self._set_state("degraded" if self.state != "loading" else "loading", reason)
        if lost:  # the server re-opens them from their snapshots; placement skips `worker`
            self._emit(EngineRestarted(worker.generation, (), tuple(lost)))
