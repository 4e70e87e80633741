"""LiveStream: the asyncio adapter around one stream's Playout, encoders and viewers.

One task per stream ticks the media clock at the stream's frame rate, paced against
wall-clock deadlines: each tick shows the next generated frame, or holds the last one
when generation has not kept up (a stall) or the stream is paused. A shown frame is
encoded once per codec in use (in the server's one encoder thread) and fanned out.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription

from server.auth import new_token
from server.engine import ChangePlan, ChunkReady, OpenStream, StreamOpened
from server.fanout import EncodedFrame, FanoutTrack, SharedEncoder, adopt
from server.ice import restrict_gathering
from server.load_policy import EngineLoad, degraded_event, load_stats
from server.playout import PlanChange, Playout
from server.protocol import request_error

if TYPE_CHECKING:
    from server.app import Connection, LiveServer

log = logging.getLogger(__name__)
MDNS_CANDIDATE = re.compile(r"^a=candidate:.*\.local .*$\r?\n?", re.MULTILINE)


@dataclass
class Viewer:
    id: str
    pc: RTCPeerConnection
    track: FanoutTrack
    conn: Connection
    connected: bool = False


def strip_mdns(sdp: str) -> str:
    """Drop mDNS (.local) host candidates: aioice cannot resolve them (webrtc-testing.md)."""
    return MDNS_CANDIDATE.sub("", sdp)


def codec_preferences(preferred_mime: str) -> list:
    caps = RTCRtpSender.getCapabilities("video").codecs
    first = [c for c in caps if c.mimeType.lower() == preferred_mime.lower()]
    rest = [c for c in caps if c not in first and c.mimeType.lower() != "video/rtx"]
    rtx = [c for c in caps if c.mimeType.lower() == "video/rtx"]
    return first + rest + rtx


class LiveStream:
    """`control_token` and `view_token` (server/auth.py) are new unless given (a stream
    restored from a snapshot keeps its own). `image`: the still a stream started from
    (fitted to the frame), kept to start it again if the engine dies before a snapshot
    holds it. `created`: when it was created (unix seconds; a resumed stream keeps its
    own), the time its watermark carries."""

    def __init__(
        self,
        server: LiveServer,
        stream_id: str,
        prompt: str,
        seed: int,
        info: StreamOpened,
        control_token: str | None = None,
        view_token: str | None = None,
        image: np.ndarray | None = None,
        created: float | None = None,
    ):
        self.server = server
        self.image = image
        self.control_token = control_token or new_token()
        self.view_token = view_token or new_token()
        self.config = server.config
        self.metrics = server.metrics
        self.id = stream_id
        self.seed = seed
        self.fps, self.fpc = info.fps, info.frames_per_chunk
        self.frames = info.frames  # frames per chunk, as the model's VAE decodes them
        self.height, self.width = info.height, info.width
        self.playout = Playout(prompt, info.frames, info.fps, self.config.ahead_chunks)
        self.encoders: dict[str, SharedEncoder] = {}
        self.viewers: dict[str, Viewer] = {}
        self.sinks: set = set()  # remuxing outputs fed by the H.264 encode (server/packets.py)
        self.storyboard: list[tuple[float, str]] = []  # the last one set (OSC cues play it)
        self.members: set[Connection] = set()
        self.anchors: deque[tuple[int, int, bool]] = deque(maxlen=8)
        self.created = time.time() if created is None else created  # its watermark's time
        if server.marker is not None:  # the payload every engine marks it with, fixed here
            server.marker.payload(stream_id, self.created)
        self.ended = False
        self.chunk_ms: dict[str, float] = {}
        self.cache_bytes = 0
        self.realtime_factor = 0.0
        self._first_chunk = asyncio.Event()
        self._grace: asyncio.TimerHandle | None = None
        self._reported_chunk = -1
        self._counted = {"stalls": 0, "dropped": 0}
        self._shown_since_stats = 0
        self._task: asyncio.Task | None = None
        self._background: set[asyncio.Task] = set()  # fire-and-forget viewer removals
        self._switch: dict[str, Any] | None = None  # the latest prompt switch, being timed
        # snapshots of the model's stream by chunk (the state before that chunk), kept
        # to restore the stream if the engine dies (bounded: see _keep_snapshot)
        self.snapshots: dict[int, bytes] = {}
        self.engine_crashes = 0  # engine deaths while this stream's chunk was under way
        self.resumes: list[int] = []  # first frame of each new engine's first chunk shown
        self._resuming = False
        self.load: EngineLoad | None = None  # the engine's load policy, as of the last chunk

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"play-{self.id}")

    # -- from the worker -------------------------------------------------------------------
    def on_chunk(self, ready: ChunkReady) -> None:
        n = len(ready.chunk.frames)
        self.metrics.frames_generated.inc(n)
        for stage, ms in ready.ms.items():
            self.metrics.chunk_seconds.labels(stage).observe(ms / 1e3)
        self.chunk_ms = ready.ms
        total = ready.ms.get("total", 0.0)
        if total > 0:
            self.realtime_factor = (n / self.fps) / (total / 1e3)
            self.metrics.realtime_factor.set(self.realtime_factor)
        self.cache_bytes = ready.cache_bytes
        if ready.load is not None:
            self._note_load(ready.load)
        accepted = self.playout.accept(ready.chunk)
        if accepted and ready.snapshot is not None:
            self._keep_snapshot(ready.chunk.index + 1, ready.snapshot)
        if accepted and self._resuming:
            self._resuming = False
            self.resumes.append(ready.chunk.index * self.fpc)
        if accepted and ready.chunk.index == self.playout.play_chunk:
            self._first_chunk.set()
        sw = self._switch
        if sw is not None and (ready.chunk.epoch, ready.chunk.index) == (sw["epoch"], sw["chunk"]):
            sw["ready_ms"] = (time.monotonic() - sw["t0"]) * 1e3
            sw["chunk_ms"] = {k: round(v, 1) for k, v in ready.ms.items()}
        self._count_drops()

    def _note_load(self, load: EngineLoad) -> None:
        """The engine's load policy as of this chunk: tell members when this stream's
        chunks start or stop getting fewer steps (a `degraded` event)."""
        before = self.load.steps if self.load is not None else load.full_steps
        self.load = load
        self.server.note_load(load)
        if load.steps != before:
            self.broadcast(degraded_event(self.id, load))

    # -- snapshots and restores --------------------------------------------------------------
    def _keep_snapshot(self, chunk: int, data: bytes) -> None:
        self.snapshots[chunk] = data
        floor = self.playout.play_chunk
        keep = sorted(c for c in self.snapshots if c >= floor)[-(self.config.ahead_chunks + 3) :]
        for c in [c for c in self.snapshots if c not in keep]:
            del self.snapshots[c]

    def resume_point(self, at_most: int | None = None) -> tuple[int, bytes] | None:
        """The newest kept snapshot no later than chunk `at_most` (default: the first
        unplayed chunk, where a restore regenerates nothing a viewer has seen and every
        rewind a plan change can ask for stays possible)."""
        first = self.playout.first_unplayed_chunk() if at_most is None else at_most
        chunks = [c for c in self.snapshots if c <= first]
        return (max(chunks), self.snapshots[max(chunks)]) if chunks else None

    def restore_command(self) -> OpenStream:
        """The command that re-opens this stream in a new engine, at its resume point."""
        p = self.playout
        plan = p.plan.as_tuple()
        point = self.resume_point()
        return OpenStream(
            self.id,
            plan[0][1],
            self.seed,
            snapshot=None if point is None else point[1],
            plan=plan,
            epoch=p.epoch,
            play_chunk=p.play_chunk,
            image=self.image if point is None else None,  # else its snapshot's sink holds it
            started=self.created,
        )

    def on_restored(self, info: StreamOpened) -> None:
        log.info("stream %s continues in the new engine from chunk %d", self.id, info.chunk)
        self._resuming = True

    def _count_drops(self) -> None:
        dropped = self.playout.frames_dropped - self._counted["dropped"]
        if dropped:
            self.metrics.frames_dropped.labels("prompt_switch").inc(dropped)
            self._counted["dropped"] = self.playout.frames_dropped

    # -- control ---------------------------------------------------------------------------
    def _check_room(self) -> None:
        self.server.check_engine()

    def _apply(self, change: PlanChange | None) -> None:
        if change is not None:
            ok = self.server.engine.submit(ChangePlan(self.id, change))
            assert ok, "room was checked before the plan changed"
            for c in [c for c in self.snapshots if c > change.rewind_to]:
                del self.snapshots[c]  # they hold chunks the change replaces
            self.metrics.prompt_switches.inc()
            self._count_drops()

    def set_prompt(self, text: str) -> int:
        """Switch at the first unplayed chunk; returns the first frame under `text`."""
        self._check_room()
        frame, change = self.playout.set_prompt(text)
        self._apply(change)
        if change is not None:
            self._switch = {
                "epoch": change.epoch,
                "chunk": change.rewind_to,
                "frame": frame,
                "t0": time.monotonic(),
                "ready_ms": None,
            }
        return frame

    def set_storyboard(self, items: list[tuple[float, str]]) -> list[int]:
        self._check_room()
        frames, change = self.playout.set_storyboard(items)
        self._apply(change)
        self.storyboard = list(items)
        return frames

    def pause(self) -> None:
        self.playout.paused = True

    def resume(self) -> None:
        self.playout.paused = False

    # -- membership and lifetime -------------------------------------------------------------
    def attach(self, conn: Connection) -> None:
        if conn not in self.members:
            self.members.add(conn)
            conn.streams.add(self)
        self._cancel_grace()

    async def detach(self, conn: Connection) -> None:
        self.members.discard(conn)
        conn.streams.discard(self)
        for v in [v for v in self.viewers.values() if v.conn is conn]:
            await self.remove_viewer(v.id, "left")
        self.release_if_unused()

    def _cancel_grace(self) -> None:
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None

    def release_if_unused(self, grace: float | None = None) -> None:
        """With no attached connection, viewer or output left, end after the grace period."""
        if self.ended or self.members or self.viewers or self.sinks or self._grace is not None:
            return
        loop = asyncio.get_running_loop()
        self._grace = loop.call_later(
            self.config.grace_seconds if grace is None else grace,
            lambda: self.server.end_stream(self, "abandoned"),
        )

    async def close(self, reason: str) -> None:
        """End the stream: stop playing, close every viewer, free the model's stream."""
        if self.ended:
            return
        self.ended = True
        self._cancel_grace()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await asyncio.gather(
            *(self.remove_viewer(v, reason) for v in list(self.viewers)), return_exceptions=True
        )
        self.server.engine.close_stream(self.id)
        self.server.outputs.stream_ended(self)  # finish recordings, pushes, HLS
        self.broadcast({"type": "stream_ended", "stream": self.id, "reason": reason})
        for conn in list(self.members):
            conn.streams.discard(self)
        self.members.clear()

    # -- viewers -----------------------------------------------------------------------------
    async def add_viewer(
        self, conn: Connection, sdp: str, codec: str | None, slots: int | None = None
    ) -> tuple[str, str]:
        """Answer a viewer's offer; `slots`: the viewer slots open to this viewer's role
        (the stream's limit unless fewer)."""
        if (refusal := self._no_room(slots)) is not None:
            raise refusal
        viewer_id = secrets.token_hex(4)
        track = FanoutTrack(
            self._bind,
            self.config.viewer_queue,
            on_first=lambda f: self._viewer_started(viewer_id, f),
            on_sent=self.metrics.frames_sent.inc,
            on_drop=self.metrics.frames_dropped.labels("slow_viewer").inc,
        )
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        try:  # the server's own setup: a failure here is a bug, not a bad offer
            transceiver = pc.addTransceiver(track, direction="sendonly")
            restrict_gathering(pc, self.server.ice_addresses)
            adopt(transceiver.sender)
            transceiver.setCodecPreferences(codec_preferences(codec or self.config.codec_mime))
        except Exception:
            track.stop()
            await pc.close()
            raise
        try:
            await pc.setRemoteDescription(RTCSessionDescription(strip_mdns(sdp), "offer"))
            if transceiver.mid is None:
                raise ValueError("the offer has no video section to answer")
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:
            track.stop()
            await pc.close()
            raise request_error("bad_sdp", f"cannot answer this offer: {exc}") from None
        # the answer took awaits: the stream may have ended, or other watches filled it
        if (refusal := self._no_room(slots)) is not None:
            track.stop()
            await pc.close()
            raise refusal
        viewer = Viewer(viewer_id, pc, track, conn)
        self.viewers[viewer_id] = viewer
        conn.viewers[viewer_id] = self
        self.attach(conn)
        self.metrics.viewers.inc()

        @pc.on("connectionstatechange")
        async def _on_state() -> None:
            if pc.connectionState == "connected":
                viewer.connected = True
            elif pc.connectionState in ("failed", "closed"):
                await self.remove_viewer(viewer_id, pc.connectionState)

        asyncio.get_running_loop().call_later(
            self.config.connect_timeout, self._check_connected, viewer_id
        )
        return viewer_id, pc.localDescription.sdp

    def _no_room(self, slots: int | None = None):
        """Why a new viewer cannot be added now (an error to raise), or None."""
        if self.ended:
            return request_error("unknown_stream", f"stream {self.id} has ended", self.id)
        limit = self.config.max_viewers_per_stream
        if len(self.viewers) >= limit:
            return request_error("too_many_viewers", f"stream {self.id} has its viewer limit")
        if slots is not None and len(self.viewers) >= slots:
            return request_error(
                "too_many_viewers",
                f"stream {self.id} has no viewer slot left for a view token (the last "
                f"{limit - slots} are kept for control tokens)",
            )
        return None

    def _check_connected(self, viewer_id: str) -> None:
        viewer = self.viewers.get(viewer_id)
        if viewer is not None and not viewer.connected:
            task = asyncio.ensure_future(self.remove_viewer(viewer_id, "connect_timeout"))
            self._background.add(task)  # the loop keeps only weak references to tasks
            task.add_done_callback(self._background.discard)

    def _bind(self, track: FanoutTrack, mime: str) -> SharedEncoder:
        enc = self.encoders.get(mime)
        if enc is None:
            enc = SharedEncoder(
                mime,
                self.config.bitrate,
                round(self.config.keyframe_seconds * self.fps),
                self.playout.ticks_per_frame,
            )
            self.encoders[mime] = enc
        return enc

    def add_sink(self, sink) -> SharedEncoder:
        """Feed `sink` (its `offer(EncodedFrame)`) the H.264 encode, from its next keyframe;
        the encode is made while a viewer or a sink needs it."""
        enc = self._bind(None, "video/H264")
        enc.subscribers.add(sink)
        enc.request_keyframe()
        self.sinks.add(sink)
        self._cancel_grace()
        return enc

    def remove_sink(self, sink) -> None:
        self.sinks.discard(sink)
        enc = self.encoders.get("video/H264")
        if enc is not None:
            enc.subscribers.discard(sink)
            if not enc.subscribers:
                del self.encoders["video/H264"]
        if not self.ended:
            self.release_if_unused()

    def _viewer_started(self, viewer_id: str, frame: EncodedFrame) -> None:
        viewer = self.viewers.get(viewer_id)
        if viewer is None:
            return
        viewer.conn.send(
            {
                "type": "viewer_started",
                "stream": self.id,
                "viewer": viewer_id,
                "tick": frame.tick,
                "frame": frame.index,
                "timeline": [list(a) for a in self.anchors],
            }
        )

    async def remove_viewer(self, viewer_id: str, reason: str) -> None:
        viewer = self.viewers.pop(viewer_id, None)
        if viewer is None:
            return
        viewer.conn.viewers.pop(viewer_id, None)
        self.metrics.viewers.dec()
        viewer.track.stop()
        for mime in [m for m, e in self.encoders.items() if not e.subscribers]:
            del self.encoders[mime]
        try:
            await asyncio.wait_for(viewer.pc.close(), 5.0)
        except (TimeoutError, Exception):
            log.warning("viewer %s of %s did not close cleanly", viewer_id, self.id)
        viewer.conn.send(
            {"type": "viewer_closed", "stream": self.id, "viewer": viewer_id, "reason": reason}
        )
        self.server.heap.soon()
        self.release_if_unused()

    # -- events ----------------------------------------------------------------------------
    def broadcast(
        self, msg: dict[str, Any], droppable: bool = False, exclude: Connection | None = None
    ) -> None:
        for conn in list(self.members):
            if conn is not exclude:
                conn.send(msg, droppable=droppable)

    def snapshot(self) -> dict[str, Any]:
        p = self.playout
        return {
            "stream": self.id,
            "prompt": p.plan.prompt_at(p.play_chunk),
            "seed": self.seed,
            "frame": p.next_frame,
            "tick": p.tick,
            "paused": p.paused,
            "viewers": len(self.viewers),
            "buffer_frames": p.buffered_frames,
            "buffer_seconds": round(p.buffered_frames / self.fps, 3),
            "stalls": p.stalls,
            "held_frames": p.held_ticks,
            "cache_bytes": self.cache_bytes,
            "chunk_ms": {k: round(v, 1) for k, v in self.chunk_ms.items()},
            "realtime_factor": round(self.realtime_factor, 2),
            **load_stats(self.load),
            "encodes": {m: e.encodes for m, e in self.encoders.items()},
            "plan": [
                {"frame": self.frames.start(k), "prompt": t}
                for k, t in p.plan.as_tuple()
                if k >= p.play_chunk
            ]
            or None,
        }

    # -- the media clock ---------------------------------------------------------------------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        period = 1.0 / self.fps
        stats_every = max(1, round(self.config.stats_seconds * self.fps))
        try:
            await self._first_chunk.wait()
            t0, n = loop.time(), 0
            stats_t0 = t0
            while True:
                shown = self.playout.step()
                if shown is not None:
                    await self._emit(shown)
                if self.playout.play_chunk != self._reported_chunk:
                    self._reported_chunk = self.playout.play_chunk
                    self.server.engine.set_progress(self.id, self._reported_chunk)
                n += 1
                if n % stats_every == 0:
                    now = loop.time()
                    self._send_stats(self._shown_since_stats / max(now - stats_t0, 1e-6))
                    self._shown_since_stats, stats_t0 = 0, now
                deadline = t0 + n * period
                late = loop.time() - deadline
                if late > 2 * period:  # the loop fell behind: re-base, never burst
                    t0 += late
                    deadline += late
                await asyncio.sleep(max(0.0, deadline - loop.time()))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("stream %s: playout failed", self.id)
            self.server.end_stream(self, "failed")

    async def _emit(self, shown) -> None:
        p = self.playout
        if shown.anchor:
            self.anchors.append((shown.tick, shown.index, shown.held))
            self.broadcast(
                {
                    "type": "timeline",
                    "stream": self.id,
                    "tick": shown.tick,
                    "frame": shown.index,
                    "held": shown.held,
                }
            )
        sw = self._switch
        if sw is not None and not shown.held and shown.index == sw["frame"]:
            self._switch = None
            shown_ms = (time.monotonic() - sw["t0"]) * 1e3
            self.metrics.switch_seconds.observe(shown_ms / 1e3)
            self.broadcast(
                {
                    "type": "prompt_shown",
                    "stream": self.id,
                    "frame": sw["frame"],
                    "tick": shown.tick,
                    "ready_ms": round(sw["ready_ms"] or 0, 1),
                    "shown_ms": round(shown_ms, 1),
                    "chunk_ms": sw.get("chunk_ms"),
                }
            )
        if shown.held:
            self.metrics.held_frames.labels("pause" if p.paused else "stall").inc()
        else:
            self._shown_since_stats += 1
        if p.stalls != self._counted["stalls"]:
            self.metrics.stalls.inc(p.stalls - self._counted["stalls"])
            self._counted["stalls"] = p.stalls
        loop = asyncio.get_running_loop()
        for mime, enc in list(self.encoders.items()):
            if not enc.subscribers:
                continue
            key = enc.plan_keyframe(shown.tick, shown.keyframe)
            t = time.perf_counter()
            frame = await loop.run_in_executor(
                self.server.encode_pool, enc.encode, shown.image, shown.tick, shown.index, key
            )
            codec = mime.split("/")[-1].lower()
            self.metrics.encode_seconds.labels(codec).observe(time.perf_counter() - t)
            self.metrics.encodes.labels(codec).inc()
            enc.publish(frame)

    def _send_stats(self, fps: float) -> None:
        snap = self.snapshot()
        snap.update(type="stats", fps=round(fps, 2))
        self.broadcast(snap, droppable=True)
