"""StateKeeper: the live server's side of `--state-dir`: writes each stream's state every
`state_seconds` (only when it moved on) and at shutdown, removes it when a stream ends,
and at start-up brings the saved streams back under the same ids and tokens.

A stream is saved with its newest snapshot no later than the chunk being played and the
next frame to show: resumed, it regenerates from that snapshot and shows from that frame
on, so its viewers see the frame that comes next, under the same frame count.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import TYPE_CHECKING

from server.engine import StreamOpened
from server.live import LiveStream
from server.playout import PlanEntry, PromptPlan
from server.state_dir import StateDir, StreamState

if TYPE_CHECKING:
    from server.app import LiveServer

log = logging.getLogger(__name__)
TOKENS = ("control_token", "view_token")


class StateKeeper:
    def __init__(self, server: LiveServer, path: str):
        self.server = server
        self.dir = StateDir(path, on_result=lambda r: server.metrics.state_files.labels(r).inc())
        self._saved: dict[str, tuple] = {}  # stream -> what was last written (to skip repeats)
        self._task: asyncio.Task | None = None

    # -- start-up ---------------------------------------------------------------------------
    def resume_all(self) -> list[LiveStream]:
        """Bring back every stream saved in the directory (bad files are skipped)."""
        server = self.server
        resumed = []
        for state in self.dir.load(server.model.config.name):
            if state.stream in server.streams:
                continue
            stream = self._resume(state)
            if stream is not None:
                resumed.append(stream)
                server.metrics.state_files.labels("resumed").inc()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="state-dir")
        return resumed

    def _resume(self, state: StreamState) -> LiveStream | None:
        server = self.server
        mc = server.model.config
        fpc = mc.stream.chunk_latent_frames * mc.vae.time_stride
        scale = server.config.upscale  # the frames it sends: after the upscaling stage
        h, w = mc.stream.height * scale, mc.stream.width * scale
        info = StreamOpened(state.stream, mc.stream.fps, fpc, h, w, state.chunk)
        plan = PromptPlan({c: PlanEntry(t, src) for c, t, src in state.plan})
        accepted = inspect.signature(LiveStream).parameters
        tokens = {n: getattr(state, n) for n in TOKENS if getattr(state, n) is not None}
        stream = LiveStream(
            server,
            state.stream,
            plan.prompt_at(state.frame // fpc),
            state.seed,
            info,
            created=state.started,
            **{n: v for n, v in tokens.items() if n in accepted},
        )
        for name, value in tokens.items():
            if name not in accepted:  # a LiveStream that does not take tokens yet
                setattr(stream, name, value)
        stream.playout.resume_at(state.frame, plan)
        stream.playout.paused = state.paused
        stream.snapshots[state.chunk] = state.snapshot
        stream._resuming = True
        if not server.engine.submit(stream.restore_command()):
            log.error("stream %s not resumed: the engine is busy", state.stream)
            return None
        server.streams[stream.id] = stream
        server.metrics.streams.inc()
        stream.start()
        stream.release_if_unused(server.config.resume_grace_seconds)
        self._saved[stream.id] = (state.chunk, state.paused, state.plan)
        log.info("stream %s resumed at frame %d", stream.id, state.frame)
        return stream

    # -- saving -----------------------------------------------------------------------------
    def state_of(self, stream: LiveStream) -> StreamState | None:
        p = stream.playout
        point = stream.resume_point(p.play_chunk)
        if point is None:
            return None
        chunk, data = point
        plan = tuple((k, e.text, e.source) for k, e in sorted(p.plan.entries.items()))
        return StreamState(
            stream=stream.id,
            seed=stream.seed,
            chunk=chunk,
            frame=p.next_frame,
            paused=p.paused,
            plan=plan,
            snapshot=data,
            control_token=getattr(stream, "control_token", None),
            view_token=getattr(stream, "view_token", None),
            started=stream.created,
        )

    async def save_all(self, force: bool = False) -> int:
        """Write every stream whose state moved on since it was last written (all of them
        with `force`); the writes run in a worker thread. Returns how many were written."""
        states = []
        for stream in list(self.server.streams.values()):
            state = self.state_of(stream)
            if state is None:
                continue
            key = (state.chunk, state.paused, state.plan)
            if force or self._saved.get(stream.id) != key:
                states.append(state)
                self._saved[stream.id] = key
        if states:
            await asyncio.get_running_loop().run_in_executor(None, self._write, states)
        return len(states)

    def _write(self, states: list[StreamState]) -> None:
        for state in states:
            try:
                self.dir.save(state)
            except OSError:
                log.exception("could not write the state of stream %s", state.stream)

    def forget(self, stream_id: str) -> None:
        """A stream ended (not by a shutdown): its state goes."""
        self._saved.pop(stream_id, None)
        self.dir.remove(stream_id)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.server.config.state_seconds)
            try:
                await self.save_all()
            except Exception:
                log.exception("state directory: save failed")

    async def close(self, timeout: float) -> None:
        """Stop the periodic writes, then write every stream once more."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            await asyncio.wait_for(self.save_all(force=True), timeout)
        except TimeoutError:
            log.warning("state directory: the last save did not finish in %.1fs", timeout)
