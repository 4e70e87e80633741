"""The model worker: every stream's torch work, round-robin, in one thread of the engine
process (server/engine_child.py), off the event loop.

The event loop and the worker talk only through bounded queues, each with a policy:

    commands  loop -> worker  queue.Queue(config.command_queue); when full `submit` raises
              (the request gets a "busy" error; the loop never blocks)
    results   worker -> loop  queue.Queue(config.result_queue); when full the worker waits
              (backpressure: nothing is generated that the loop cannot take)
    progress  loop -> worker  one slot per stream (the chunk being played); a newer value
              overwrites the older one, so it can never fill up

Each stream may be generated up to `ahead_chunks` chunks past the chunk being played. Of
the streams allowed to run, the one with the fewest chunks ready runs next (ties in turn),
which is plain round-robin while every stream keeps up.

Errors: an EndlessError while generating (bad input) fails that stream only; any other
exception (a bug, an out-of-memory) ends the thread, and with it the engine process, which
its supervisor restarts from the streams' snapshots (`crash` names the stream under way).
"""

from __future__ import annotations

import bisect
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from memory.batch import commit_together, denoise_together
from memory.snapshot import StreamSnapshot
from memory.stream import ChunkPlan, Stream
from model.bundle import VideoModel
from model.errors import EndlessError
from model.upscale import Upscaler
from server.engine import (
    ChangePlan,
    ChunkReady,
    OpenStream,
    Result,
    StreamFailed,
    StreamOpened,
)
from server.load_policy import StepGovernor
from server.playout import Chunk
from server.thread_choice import ThreadChoice

# the messages are the engine interface's (server.engine); they are re-exported here
__all__ = [
    "ChangePlan",
    "ChunkReady",
    "GenerationWorker",
    "OpenStream",
    "Result",
    "StreamFailed",
    "StreamOpened",
    "pick",
]

log = logging.getLogger(__name__)


@dataclass
class _Job:
    stream_id: str
    stream: Stream
    plan: tuple[tuple[int, str], ...]
    epoch: int = 0
    play_chunk: int = 0
    last_progress: float = 0.0  # when play_chunk last moved (monotonic): playing, not paused
    started: float | None = None  # when the stream was created (its watermark's time)

    def prompt_at(self, chunk: int) -> str:
        i = bisect.bisect_right([c for c, _ in self.plan], chunk) - 1
        return self.plan[max(i, 0)][1]


def pick_batch(jobs: list[_Job], ahead: int, turn: int, size: int) -> list[_Job]:
    """Scheduler: up to `size` runnable jobs, fewest chunks ready first (ties in turn
    order), so a stream that fell behind or was just switched goes to the front."""
    n = len(jobs)
    runnable = []
    for j in range(n):
        job = jobs[(turn + j) % n]
        ready = job.stream.chunk_index - job.play_chunk
        if ready <= ahead:  # it may generate chunks < play_chunk + 1 + ahead
            runnable.append((ready, j, job))
    runnable.sort(key=lambda r: (r[0], r[1]))
    return [job for _, _, job in runnable[:size]]


def pick(jobs: list[_Job], ahead: int, turn: int) -> _Job | None:
    """Scheduler: the runnable job with the fewest chunks ready; ties go in turn order."""
    best, best_key = None, None
    n = len(jobs)
    for j in range(n):
        job = jobs[(turn + j) % n]
        ready = job.stream.chunk_index - job.play_chunk
        if ready > ahead:  # it may generate chunks < play_chunk + 1 + ahead
            continue
        if best_key is None or ready < best_key:
            best, best_key = job, ready
    return best


class GenerationWorker:
    def __init__(
        self,
        model: VideoModel,
        ahead_chunks: int,
        command_queue: int,
        result_queue: int,
        torch_threads: int,
        notify: Callable[[], None],
        mark: Callable[[str, np.ndarray], np.ndarray] | None = None,
        max_batch: int = 1,
        governor: StepGovernor | None = None,
        upscaler: Upscaler | None = None,
        solo_threads: int | None = None,
    ):
        self.model = model
        self.governor = governor  # fewer steps when overloaded (server/load_policy.py)
        self.upscaler = upscaler  # every stream's upscaling stage (shared: it keeps no state)
        self.ahead = ahead_chunks
        self.torch_threads = torch_threads
        # with one stream on, the cores the others would use are idle: its chunks (a
        # switch's guided chunk above all) take them where that measures faster
        self.thread_choice = ThreadChoice(torch_threads, solo_threads or torch_threads)
        self.threads = torch_threads  # what torch runs with now
        self.max_batch = max_batch  # streams whose chunks share one forward pass
        self.commands: queue.Queue = queue.Queue(maxsize=command_queue)
        self.results: queue.Queue[Result] = queue.Queue(maxsize=result_queue)
        self._notify = notify  # called (from the worker thread) after each result
        # (stream id, frames, started) -> watermarked frames (upscaled), before encode
        self._mark = mark
        self._lock = threading.Lock()
        self._progress: dict[str, int] = {}  # stream -> chunk being played (latest wins)
        self._closing: set[str] = set()  # at most one entry per stream, never rejected
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._jobs: list[_Job] = []
        self._turn = 0
        self._thread = threading.Thread(target=self._run, name="endless-model", daemon=True)
        self._held: deque[OpenStream | ChangePlan] = deque()  # commands taken mid-chunk
        self.busy_seconds = 0.0  # time spent generating
        self.abandoned = 0  # chunks dropped between stages because a switch made them stale
        self.crash: tuple[str, BaseException] | None = None  # (stream, error) that ended it
        self.fault: str | None = None  # tests: "raise" or "oom" at the next chunk

    # -- called from the event loop --------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """Ask the thread to finish its current chunk and exit; True if it did in time."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def stream_ids(self) -> list[str]:
        """Streams the worker holds now (a snapshot, for tests and stats)."""
        return [j.stream_id for j in list(self._jobs)]

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit_wait(self, command: OpenStream | ChangePlan) -> None:
        """Queue a command, waiting for room (the engine process's command reader)."""
        self.commands.put(command)
        self._wake.set()

    def can_submit(self) -> bool:
        """Room for one more command (only the loop submits, so this stays true until it does)."""
        return not self.commands.full()

    def submit(self, command: OpenStream | ChangePlan) -> bool:
        """Queue a command; False (nothing queued) when the queue is full."""
        try:
            self.commands.put_nowait(command)
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
        self._wake.set()

    def drain(self) -> list[Result]:
        out = []
        while True:
            try:
                out.append(self.results.get_nowait())
            except queue.Empty:
                return out

    # -- the thread ------------------------------------------------------------------------
    def _run(self) -> None:
        torch.set_num_threads(self.threads)
        with torch.inference_mode():
            while not self._stop.is_set():
                self._wake.clear()
                self._take_progress()
                self._take_commands()
                batch = pick_batch(self._jobs, self.ahead, self._turn, self.max_batch)
                if not batch:
                    self._wake.wait(0.5)
                    continue
                self._turn = (self._jobs.index(batch[0]) + 1) % len(self._jobs)
                self._pick_threads()
                if len(batch) == 1:
                    self._generate(batch[0])
                else:
                    self._generate_batch(batch)

    def _pick_threads(self) -> None:
        want = self.thread_choice.pick() if len(self._jobs) == 1 else self.torch_threads
        if want != self.threads:
            torch.set_num_threads(want)
            self.threads = want

    def _take_progress(self) -> None:
        with self._lock:
            progress, self._progress = self._progress, {}
            closing, self._closing = self._closing, set()
        if closing:
            self._jobs = [j for j in self._jobs if j.stream_id not in closing]
        now = time.monotonic()
        for job in self._jobs:
            played = progress.get(job.stream_id, job.play_chunk)
            if played != job.play_chunk:
                job.play_chunk, job.last_progress = played, now

    def _next_command(self) -> OpenStream | ChangePlan | None:
        if self._held:
            return self._held.popleft()
        try:
            return self.commands.get_nowait()
        except queue.Empty:
            return None

    def _take_commands(self) -> None:
        while (cmd := self._next_command()) is not None:
            try:
                if isinstance(cmd, OpenStream):
                    self._open(cmd)
                elif isinstance(cmd, ChangePlan):
                    self._change(cmd)
            except Exception as exc:  # a bad command fails its stream, not the worker
                log.exception("model worker: %s failed", type(cmd).__name__)
                self._jobs = [j for j in self._jobs if j.stream_id != cmd.stream_id]
                self._fail(cmd.stream_id, exc)

    def _open(self, cmd: OpenStream) -> None:
        """A new stream, or (with a snapshot) a restored one; either replaces a stream of
        the same id (a restore may cross a plain open queued before the engine died)."""
        up = self.upscaler
        if cmd.snapshot is not None:  # a stream started from an image has it in its sink
            snap = StreamSnapshot.from_bytes(cmd.snapshot)
            stream = Stream.restore(self.model, snap, upscaler=up)
        else:
            stream = Stream(self.model, cmd.prompt, seed=cmd.seed, image=cmd.image, upscaler=up)
        plan = cmd.plan or ((0, cmd.prompt),)
        job = _Job(
            cmd.stream_id, stream, plan, cmd.epoch, cmd.play_chunk, time.monotonic(), cmd.started
        )
        self._jobs = [j for j in self._jobs if j.stream_id != cmd.stream_id] + [job]
        self._put(
            StreamOpened(
                cmd.stream_id,
                stream.fps,
                stream.frames.rest,
                stream.out_height,
                stream.out_width,
                stream.chunk_index,
                stream.frames.first,
            )
        )

    def _change(self, cmd: ChangePlan) -> None:
        job = next((j for j in self._jobs if j.stream_id == cmd.stream_id), None)
        if job is None:
            return
        change = cmd.change
        job.epoch, job.plan = change.epoch, change.plan
        if change.rewind_to < job.stream.chunk_index:
            job.stream.rewind(change.rewind_to)

    def _superseded(self, job: _Job, chunk: int) -> bool:
        """Has a plan change for this stream, not yet applied, made `chunk` stale?

        Moves waiting commands to `_held` (kept in order, applied next iteration)."""
        while True:
            try:
                self._held.append(self.commands.get_nowait())
            except queue.Empty:
                break
        return any(
            isinstance(c, ChangePlan)
            and c.stream_id == job.stream_id
            and c.change.rewind_to <= chunk
            for c in self._held
        )

    def _generate(self, job: _Job) -> None:
        """One chunk, stage by stage (Stream.plan/denoise/commit); a chunk a plan change
        made stale is abandoned before its next stage (nothing is committed)."""
        stream = job.stream
        k = stream.chunk_index
        try:
            self._inject_fault()
            want = job.prompt_at(k)
            if stream.prompt_for(k) != want:
                stream.set_prompt(want, at_chunk=k)
            t0 = time.perf_counter()
            self._limit_steps(job)
            if stream.warming:  # one warm-up chunk a turn: other streams' chunks go between
                stream.warm_up_step()
                self._account(time.perf_counter() - t0)
                return
            plan = stream.plan()
            t1 = time.perf_counter()
            if self._superseded(job, k):
                self.abandoned += 1
                return
            # a switch arriving mid-chunk stops it at the next denoising step
            latents = denoise_together([(stream, plan)], lambda _: self._superseded(job, k))[0]
            t2 = time.perf_counter()
            if latents is None or self._superseded(job, k):
                self.busy_seconds += t2 - t0
                self.abandoned += 1
                return
            frames = stream.commit(plan, latents)
            tm = time.perf_counter()
            if self._mark is not None:
                frames = self._mark(job.stream_id, frames, job.started)
            snapshot = stream.snapshot().to_bytes()
            t3 = time.perf_counter()
            self._account(t3 - t0)
        except EndlessError as exc:
            log.exception("model worker: stream %s failed at chunk %d", job.stream_id, k)
            self._jobs.remove(job)
            self._fail(job.stream_id, exc)
            return
        except BaseException as exc:  # not the stream's fault: the engine goes down
            self.crash = (job.stream_id, exc)
            raise
        ms = dict(stream.stats.ms)  # the stages fill text/recache/cache/decode themselves
        if len(self._jobs) == 1:  # how fast a lone stream's chunks go on these threads
            self.thread_choice.record(self.threads, (ms["cache"] + ms["decode"]) / 1e3)
        ms.update(plan=(t1 - t0) * 1e3, denoise=(t2 - t1) * 1e3, total=(t3 - t0) * 1e3)
        if self._mark is not None:
            ms["mark"] = (t3 - tm) * 1e3
        chunk = Chunk(k, job.epoch, frames)
        self._put(ChunkReady(job.stream_id, chunk, ms, stream.cache.nbytes, snapshot, self._load()))

    def _inject_fault(self) -> None:
        fault, self.fault = self.fault, None
        if fault == "raise":
            raise RuntimeError("injected engine fault")
        if fault == "oom":
            raise torch.OutOfMemoryError("injected out of memory")

    def _generate_batch(self, jobs: list[_Job]) -> None:
        """One chunk for each job, their denoise and commit stages batched (memory/batch.py).
        Streams still warming up make their warm-up chunk alone; a chunk a plan change made
        stale is dropped before the next stage, as in `_generate`."""
        for job in [j for j in jobs if j.stream.warming]:
            self._generate(job)
        t0 = time.perf_counter()
        live: list[tuple[_Job, ChunkPlan]] = []
        for job in jobs:
            if job.stream.warming or not any(job is j for j in self._jobs):
                continue
            try:
                k = job.stream.chunk_index
                self._limit_steps(job)
                if job.stream.prompt_for(k) != (want := job.prompt_at(k)):
                    job.stream.set_prompt(want, at_chunk=k)
                live.append((job, job.stream.plan()))
            except EndlessError as exc:  # the stream's fault: it fails, the others go on
                self._drop(job, exc)
            except BaseException as exc:  # not the stream's fault: the engine goes down
                self.crash = (job.stream_id, exc)
                raise
        t1 = time.perf_counter()
        live = [live[i] for i in self._fresh(live)]
        if not live:
            return
        try:
            latents = denoise_together(
                [(j.stream, p) for j, p in live],
                lambda i: self._superseded(live[i][0], live[i][1].chunk),
            )
            t2 = time.perf_counter()
            keep = [i for i in self._fresh(live) if latents[i] is not None]
            kept = [live[i] for i in keep]
            frames = commit_together([(j.stream, p) for j, p in kept], [latents[i] for i in keep])
        except EndlessError as exc:  # a batch a stream's input broke fails its streams
            for job, _ in live:
                self._drop(job, exc)
            return
        except BaseException as exc:  # not the streams' fault: the engine goes down
            self.crash = (live[0][0].stream_id, exc)
            raise
        t3 = time.perf_counter()
        for _ in live:
            self._account((t3 - t0) / len(live))
        share = 1e3 / len(live)  # each stream's share of the batch's time, in ms
        for (job, plan), f in zip(kept, frames, strict=True):
            if self._mark is not None:
                f = self._mark(job.stream_id, f, job.started)
            ms = dict(job.stream.stats.ms)
            ms.update(plan=(t1 - t0) * share, denoise=(t2 - t1) * share, total=(t3 - t0) * share)
            ms["batch"] = len(live)
            chunk = Chunk(plan.chunk, job.epoch, f)
            snapshot = job.stream.snapshot().to_bytes()
            load = self._load()
            self._put(ChunkReady(job.stream_id, chunk, ms, job.stream.cache.nbytes, snapshot, load))

    # -- the load policy (server/load_policy.py) ---------------------------------------------
    def _limit_steps(self, job: _Job) -> None:
        if self.governor is not None:
            job.stream.step_limit = self.governor.steps

    def _account(self, seconds: float) -> None:
        """One chunk's share of the engine's time: counted, and told to the load policy."""
        self.busy_seconds += seconds
        if self.governor is not None:
            self.governor.chunk_done(seconds, self._playing())

    def _playing(self) -> int:
        """Streams whose playback moved lately (a paused stream needs no chunks)."""
        recent = time.monotonic() - max(3.0, 4 * self.governor.chunk_seconds)
        return max(1, sum(j.last_progress >= recent for j in self._jobs))

    def _load(self):
        return None if self.governor is None else self.governor.reading()

    def _fresh(self, items: list[tuple[_Job, ChunkPlan]]) -> list[int]:
        """Indices of the items no waiting plan change has made stale (the rest counted)."""
        keep = [i for i, (job, plan) in enumerate(items) if not self._superseded(job, plan.chunk)]
        self.abandoned += len(items) - len(keep)
        return keep

    def _drop(self, job: _Job, exc: Exception) -> None:
        log.error("model worker: stream %s failed", job.stream_id, exc_info=exc)
        self._jobs = [j for j in self._jobs if j is not job]
        self._fail(job.stream_id, exc)

    def _fail(self, stream_id: str, exc: Exception) -> None:
        code = exc.code if isinstance(exc, EndlessError) else "internal"
        self._put(StreamFailed(stream_id, code, str(exc)))

    def _put(self, result: Result) -> None:
        while not self._stop.is_set():
            try:
                self.results.put(result, timeout=0.2)
            except queue.Full:
                continue
            self._notify()
            return
