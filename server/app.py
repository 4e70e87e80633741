"""LiveServer: one websocket endpoint (/ws) for control and signalling, plus plain HTTP
(/ the browser viewer, /metrics, /healthz) answered from websockets' `process_request`.

Everything hangs off the LiveServer object: two servers can run in one process.
The model runs in a supervised engine process (server.engine_process); the server keeps
each stream's latest snapshots and re-opens its streams from them when the engine restarts.
Shutdown order (`close`): stop accepting, tell clients (`shutting_down`), save the streams'
state (with a state directory) and run the shutdown hooks (recordings), end streams
(closing peers), close websockets (aborting those that do not read), stop the engine
(with a timeout), drop what is left in the encoder thread.
"""

from __future__ import annotations

import asyncio
import email.utils
import http
import json
import logging
import mimetypes
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from model.bundle import DEFAULT_WEIGHTS, VideoModel
from model.errors import EndlessError, PromptError
from model.precision import dtype_name, resolve_dtype
from model.tinyworld.spec import FILLER, VOCAB
from server import protocol
from server.config import CODECS, ServerConfig
from server.engine import (
    STATES,
    ChunkReady,
    Engine,
    EngineRestarted,
    EngineStateChanged,
    OpenStream,
    StreamFailed,
    StreamOpened,
)
from server.engine_child import EngineParams, ModelSource
from server.engine_process import ProcessEngine
from server.live import LiveStream
from server.metrics import Metrics
from server.protocol import field, request_error

log = logging.getLogger(__name__)
DEFAULT_PROMPT = "a big red circle bouncing over the ocean"
VERSION = "0.1.0"


def load_model(spec: str, dtype: str = "auto") -> VideoModel:
    """ "tiny": the shipped weights (random init if they are absent), "random[:preset]":
    random init, anything else: a checkpoint path; in the compute dtype `dtype` names."""
    compute = resolve_dtype(dtype)
    log.info("model %s in %s", spec, dtype_name(compute))
    if spec == "tiny":
        if DEFAULT_WEIGHTS.is_file():
            return VideoModel.load_default(compute)
        log.warning("no trained weights at %s: using a random-init tiny model", DEFAULT_WEIGHTS)
        return VideoModel.from_seed(0, "tiny", dtype=compute)
    if spec == "random" or spec.startswith("random:"):
        return VideoModel.from_seed(0, spec.partition(":")[2] or "tiny", dtype=compute)
    return VideoModel.load(Path(spec), compute)


def static_dir() -> Path:
    return Path(str(resources.files("client") / "static"))


class Connection:
    """One websocket client: its outbox, rate limits, streams and viewers."""

    def __init__(self, ws: ServerConnection, config: ServerConfig, metrics: Metrics):
        self.id = secrets.token_hex(4)
        self.ws = ws
        self.metrics = metrics
        self.outbox: asyncio.Queue[dict] = asyncio.Queue(config.outbox_queue)
        self.streams: set[LiveStream] = set()
        self.viewers: dict[str, LiveStream] = {}
        self.prompt_limit = protocol.TokenBucket(config.prompt_rate, config.prompt_burst)
        self.message_limit = protocol.TokenBucket(config.message_rate, config.message_burst)
        self.closed = False
        self._closing: asyncio.Task | None = None
        self.dropped_events = 0

    def send(self, msg: dict[str, Any], droppable: bool = False) -> None:
        """Queue an event. Policy when the outbox fills: droppable events (stats) go first,
        at half full; a client that lets it fill completely is disconnected (1013)."""
        if self.closed:
            return
        q = self.outbox
        if droppable and q.qsize() >= q.maxsize // 2:
            self.dropped_events += 1
            return
        if q.full():
            self.closed = True
            # keep a reference: the loop holds tasks only weakly
            self._closing = asyncio.ensure_future(
                self.ws.close(1013, "client does not read its events")
            )
            return
        q.put_nowait(msg)

    async def write_loop(self) -> None:
        try:
            while True:
                msg = await self.outbox.get()
                await self.ws.send(json.dumps(msg))
        except ConnectionClosed:
            self.closed = True


class LiveServer:
    def __init__(self, config: ServerConfig | None = None, model: VideoModel | None = None):
        self.config = config or ServerConfig()
        self.model = model
        self.metrics = Metrics()
        self.streams: dict[str, LiveStream] = {}
        self.connections: set[Connection] = set()
        self.static = static_dir()
        self.port: int | None = None
        self.engine: Engine | None = None
        self.shutdown_hooks: list = []  # async callables run at shutdown (recordings)
        self.shutting_down = False
        self.encode_pool: ThreadPoolExecutor | None = None
        # streams asked of the worker, not opened yet: id -> (creator's future, prompt, seed)
        self._opening: dict[str, tuple[asyncio.Future[LiveStream], str, int]] = {}
        self._closing: set[asyncio.Task] = set()
        self._ws_server = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.ready = asyncio.Event()

    # -- lifetime --------------------------------------------------------------------------
    async def start(self) -> LiveServer:
        cfg = self.config
        self._loop = loop = asyncio.get_running_loop()
        if self.model is None:
            self.model = await loop.run_in_executor(None, load_model, cfg.model, cfg.dtype)
            source = ModelSource(cfg.model, cfg.dtype)
        else:  # a model built here (tests): the engine gets a copy of it
            source = await loop.run_in_executor(None, ModelSource.of, self.model)
        self.model.with_sampler(**cfg.sampler_changes())
        rewind = self.model.config.stream.rewind_chunks
        if cfg.ahead_chunks + 1 > rewind:
            raise request_error("bad_config", f"ahead_chunks must be below {rewind}")
        self.engine = self.make_engine(source)
        self.encode_pool = ThreadPoolExecutor(1, thread_name_prefix="endless-encode")
        m = self.metrics
        for state in STATES:
            m.engine_state.labels(state).set_function(lambda s=state: float(self.state == s))
        for name in ("commands", "results"):
            m.watch_queue(name, lambda n=name: self.engine.queue_depths().get(n, 0))
        for w in getattr(self.engine, "workers", ()):  # --engine ray: metrics per worker
            m.watch_worker(w.name, w)
        await self.engine.start()
        if self.engine.state == "failed":
            raise request_error("engine_failed", f"the engine did not start: {self.engine_reason}")
        m.watch_queue(
            "buffered_frames", lambda: sum(s.playout.buffered_frames for s in self.streams.values())
        )
        m.watch_queue("outbox", lambda: sum(c.outbox.qsize() for c in self.connections))
        m.cache_bytes.set_function(lambda: sum(s.cache_bytes for s in self.streams.values()))
        self._ws_server = await serve(
            self._handle,
            cfg.host,
            cfg.port,
            process_request=self._http,
            max_size=cfg.hard_message_bytes,
            ping_interval=20,
            ping_timeout=20,
        )
        self.port = self._ws_server.sockets[0].getsockname()[1]
        self.ready.set()
        return self

    def make_engine(self, source: ModelSource) -> Engine:
        cfg, sc = self.config, self.model.config.stream
        params = EngineParams(
            cfg.ahead_chunks,
            cfg.command_queue,
            cfg.result_queue,
            cfg.torch_threads,
            cfg.sampler_changes(),
            logging.getLogger().getEffectiveLevel(),
        )
        fpc = sc.chunk_latent_frames * self.model.config.vae.time_stride
        if cfg.engine == "ray":
            from server.engine_ray import RayEngine  # imports Ray: only when asked for

            return RayEngine(
                source,
                params,
                self._notify,
                workers=cfg.workers,
                address=cfg.ray_address,
                gpus_per_worker=cfg.gpus_per_worker,
                chunk_seconds=fpc / sc.fps,
            )
        return ProcessEngine(
            source,
            params,
            self._notify,
            slot_bytes=fpc * sc.height * sc.width * 3,
            max_deaths=cfg.engine_max_deaths,
            quick_seconds=cfg.engine_quick_seconds,
        )

    @property
    def state(self) -> str:
        """The engine's health state (server.engine.STATES)."""
        return "loading" if self.engine is None else self.engine.state

    @property
    def engine_reason(self) -> str:
        return getattr(self.engine, "last_reason", "")

    def check_engine(self) -> None:
        """Raise the error a request gets when the engine cannot take a command now."""
        if self.state == "failed":
            raise request_error("unavailable", "the model engine has failed; see /healthz")
        if not self.engine.can_submit():
            raise request_error("busy", "the model worker is busy; try again shortly")

    @property
    def url(self) -> str:
        host = self.config.host if self.config.host not in ("0.0.0.0", "::") else "127.0.0.1"
        return f"http://{host}:{self.port}/"

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "ws"

    async def close(self, timeout: float = 5.0) -> None:
        if self._ws_server is not None:
            self._ws_server.close(close_connections=False)  # 1. stop accepting
        for stream in list(self.streams.values()):  # 2. end streams, closing peers
            self.end_stream(stream, "server_shutdown")
        if self._closing:
            await asyncio.wait(list(self._closing), timeout=timeout)
        for conn in list(self.connections):  # 3. close websockets
            await conn.ws.close(1001, "server shutting down")
        if self._ws_server is not None:
            try:
                await asyncio.wait_for(self._ws_server.wait_closed(), timeout)
            except TimeoutError:
                log.warning("websocket handlers did not finish in %.1fs", timeout)
        if self.engine is not None:  # 4. stop the engine
            if not await self.engine.stop(timeout):
                log.warning("the engine did not stop in %.1fs", timeout)
        if self.encode_pool is not None:  # 5. cancel the rest
            self.encode_pool.shutdown(wait=False, cancel_futures=True)

    async def __aenter__(self) -> LiveServer:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # -- the worker's results -------------------------------------------------------------------
    def _notify(self) -> None:
        try:
            self._loop.call_soon_threadsafe(self._drain_results)
        except RuntimeError:  # the loop is closed: the server is gone
            pass

    def _drain_results(self) -> None:
        for result in self.engine.drain():
            if isinstance(result, EngineStateChanged):
                self._engine_state(result)
            elif isinstance(result, EngineRestarted):
                self._engine_restarted(result)
            elif isinstance(result, StreamOpened):
                self._opened(result)
            elif isinstance(result, ChunkReady):
                stream = self.streams.get(result.stream_id)
                if stream is not None and not stream.ended:
                    stream.on_chunk(result)
            elif isinstance(result, StreamFailed):
                fut, _, _ = self._opening.pop(result.stream_id, (None, "", 0))
                if fut is not None and not fut.done():
                    fut.set_exception(request_error(result.code, result.message))
                elif (stream := self.streams.get(result.stream_id)) is not None:
                    log.error("stream %s failed: %s", stream.id, result.message)
                    self.end_stream(stream, "failed")

    def _engine_state(self, change: EngineStateChanged) -> None:
        if change.state == "failed":  # no engine will come back: end what waits on it
            for stream in list(self.streams.values()):
                self.end_stream(stream, "failed")
            for fut, _, _ in self._opening.values():
                if not fut.done():
                    fut.set_exception(request_error("unavailable", "the model engine failed"))

    def _engine_restarted(self, info: EngineRestarted) -> None:
        """A new engine holds no stream: re-open each from its snapshot, and the streams
        still being created as they were asked for."""
        self.metrics.engine_restarts.inc()

        def lost(stream_id: str) -> bool:  # a whole engine loses every stream
            return info.streams is None or stream_id in info.streams

        for stream in [s for s in self.streams.values() if lost(s.id)]:
            if stream.id in info.crashed:
                stream.engine_crashes += 1
                if stream.engine_crashes >= 2:  # it brings the engine down: not again
                    log.error("stream %s crashed the engine twice: ending it", stream.id)
                    self.end_stream(stream, "failed")
                    continue
            if not self.engine.submit(stream.restore_command()):
                log.error("stream %s could not be restored: the engine is busy", stream.id)
                self.end_stream(stream, "failed")
        for stream_id, (_, prompt, seed) in self._opening.items():
            if lost(stream_id):
                self.engine.submit(OpenStream(stream_id, prompt, seed))

    def _opened(self, info: StreamOpened) -> None:
        if (live := self.streams.get(info.stream_id)) is not None:
            live.on_restored(info)  # a restore after an engine restart
            return
        fut, prompt, seed = self._opening.pop(info.stream_id, (None, "", 0))
        if fut is None or fut.done():  # the creator gave up: free the model's stream
            self.engine.close_stream(info.stream_id)
            return
        stream = LiveStream(self, info.stream_id, prompt, seed, info)
        self.streams[stream.id] = stream
        self.metrics.streams.inc()
        stream.start()
        fut.set_result(stream)

    def end_stream(self, stream: LiveStream, reason: str) -> asyncio.Task | None:
        if self.streams.get(stream.id) is not stream:
            return None
        del self.streams[stream.id]
        self.metrics.streams.dec()
        task = asyncio.get_running_loop().create_task(stream.close(reason))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        return task

    # -- HTTP ------------------------------------------------------------------------------------
    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == "/ws":
            return None
        if path == "/metrics":
            return _response(200, self.metrics.render(), self.metrics.content_type)
        if path == "/healthz":
            return self._healthz(request)
        if path == "/favicon.ico":
            return _response(204, b"", "image/x-icon")
        name = "index.html" if path == "/" else path.lstrip("/")
        file = (self.static / name).resolve()
        if "/" in name or not file.is_file() or file.parent != self.static.resolve():
            return _response(404, b"not found\n", "text/plain")
        kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
        return _response(200, file.read_bytes(), kind + "; charset=utf-8")

    def _healthz(self, request: Request) -> Response:
        """200 only when ready; the state in the body (JSON if asked for)."""
        state = self.state if self.ready.is_set() or self.state == "failed" else "loading"
        status = 200 if state == "ready" else 503
        query = request.path.partition("?")[2]
        if "json" in request.headers.get("Accept", "") or "format=json" in query:
            body = {
                "state": state,
                "restarts": getattr(self.engine, "restarts", 0),
                "reason": self.engine_reason if state != "ready" else "",
                "streams": len(self.streams),
                "engine_pid": getattr(self.engine, "pid", None),
            }
            return _response(status, json.dumps(body).encode() + b"\n", "application/json")
        return _response(status, state.encode() + b"\n", "text/plain")

    # -- websocket --------------------------------------------------------------------------------
    async def _handle(self, ws: ServerConnection) -> None:
        conn = Connection(ws, self.config, self.metrics)
        self.connections.add(conn)
        self.metrics.connections.inc()
        writer = asyncio.get_running_loop().create_task(conn.write_loop())
        conn.send(self._hello())
        try:
            async for raw in ws:
                await self._on_message(conn, raw)
        except ConnectionClosed:
            pass
        finally:
            conn.closed = True
            writer.cancel()
            for stream in list(conn.streams):
                await stream.detach(conn)
            for viewer_id, stream in list(conn.viewers.items()):
                await stream.remove_viewer(viewer_id, "disconnected")
            self.connections.discard(conn)
            self.metrics.connections.dec()

    async def _on_message(self, conn: Connection, raw: str | bytes) -> None:
        seq = None
        try:
            msg = protocol.decode(raw, self.config.max_message_bytes)
            seq = protocol.seq_of(msg)  # read first, so that even a refusal can echo it
            if not conn.message_limit.take(time.monotonic()):
                raise request_error("rate_limited", "too many messages; slow down")
            protocol.check_type(msg)
            self.metrics.messages.labels(msg["type"]).inc()
            reply = await getattr(self, "_on_" + msg["type"])(conn, msg)
            if reply is not None:
                if seq is not None:
                    reply["seq"] = seq
                conn.send(reply)
        except EndlessError as err:
            self.metrics.errors.labels(err.code).inc()
            conn.send(protocol.error(err, seq))
        except Exception:
            log.exception("request failed")
            self.metrics.errors.labels("internal").inc()
            conn.send(protocol.error(request_error("internal", "internal server error"), seq))

    # -- requests ------------------------------------------------------------------------------
    def _hello(self) -> dict[str, Any]:
        mc = self.model.config
        cfg = self.config
        return {
            "type": "hello",
            "server": "endless",
            "version": VERSION,
            "protocol": protocol.PROTOCOL_VERSION,
            "model": mc.name,
            "fps": mc.stream.fps,
            "width": mc.stream.width,
            "height": mc.stream.height,
            "frames_per_chunk": mc.stream.chunk_latent_frames * mc.vae.time_stride,
            "codecs": list(CODECS),
            "codec": cfg.codec,
            "default_prompt": DEFAULT_PROMPT,
            "sampling": mc.sampler.sampling(),
            "dtype": dtype_name(self.model.dtype),  # compute precision
            "vocabulary": {k: list(v) for k, v in VOCAB.items()},
            "filler": sorted(FILLER),
            "limits": {
                "max_prompt_chars": cfg.max_prompt_chars,
                "max_message_bytes": cfg.max_message_bytes,
                "prompt_rate": cfg.prompt_rate,
                "prompt_burst": cfg.prompt_burst,
                "max_streams": cfg.max_streams,
            },
            "streams": len(self.streams),
        }

    def check_prompt(self, text: object) -> str:
        if not isinstance(text, str):
            raise PromptError("the prompt must be a string", value=text)
        if len(text) > self.config.max_prompt_chars:
            raise PromptError(
                f"the prompt has {len(text)} characters; the limit is "
                f"{self.config.max_prompt_chars}",
                value=len(text),
            )
        self.model.text.encode_strict(text)  # PromptError / UnknownWordsError
        return text

    def _limit_prompts(self, conn: Connection) -> None:
        if not conn.prompt_limit.take(time.monotonic()):
            raise request_error(
                "rate_limited",
                f"too many prompts; retry in {conn.prompt_limit.retry_after():.2f}s",
                round(conn.prompt_limit.retry_after(), 3),
            )

    def _stream(self, conn: Connection, msg: dict, attach: bool = True) -> LiveStream:
        stream_id = field(msg, "stream", str)
        stream = self.streams.get(stream_id)
        if stream is None or stream.ended:
            raise request_error("unknown_stream", f"no live stream {stream_id!r}", stream_id)
        if attach and not conn.closed:
            stream.attach(conn)
        return stream

    async def _on_hello(self, conn, msg):
        return self._hello()

    async def _on_ping(self, conn, msg):
        return {"type": "pong", "time": time.time()}

    async def _on_create(self, conn: Connection, msg: dict) -> dict:
        prompt = self.check_prompt(field(msg, "prompt", str, DEFAULT_PROMPT))
        seed = field(msg, "seed", int, 0)
        if not 0 <= seed < 2**63:
            raise request_error("bad_message", "'seed' must be in [0, 2**63)", seed)
        if len(self.streams) + len(self._opening) >= self.config.max_streams:
            raise request_error(
                "too_many_streams", f"this server runs at most {self.config.max_streams} streams"
            )
        stream_id = secrets.token_hex(4)
        fut = asyncio.get_running_loop().create_future()
        self.check_engine()
        if not self.engine.submit(OpenStream(stream_id, prompt, seed)):
            raise request_error("busy", "the model worker is busy; try again shortly")
        self._opening[stream_id] = (fut, prompt, seed)
        try:
            stream = await asyncio.wait_for(fut, 60.0)
        except TimeoutError:
            raise request_error(
                "busy", "the model worker did not open the stream in 60 s"
            ) from None
        finally:
            self._opening.pop(stream_id, None)
        if conn.closed:
            stream.release_if_unused()
        else:
            stream.attach(conn)
        return {
            "type": "created",
            "stream": stream.id,
            "prompt": prompt,
            "seed": seed,
            "fps": stream.fps,
            "frames_per_chunk": stream.fpc,
            "width": stream.width,
            "height": stream.height,
            "ticks_per_frame": stream.playout.ticks_per_frame,
        }

    async def _on_watch(self, conn: Connection, msg: dict) -> dict:
        stream = self._stream(conn, msg)
        sdp = field(msg, "sdp", str)
        codec = field(msg, "codec", str, None)
        if codec is not None and codec not in CODECS:
            raise request_error("bad_message", f"unknown codec {codec!r}; known: vp8, h264", codec)
        if len(conn.viewers) >= self.config.max_viewers_per_connection:
            raise request_error(
                "too_many_viewers",
                f"this connection already has {len(conn.viewers)} viewers; the limit is "
                f"{self.config.max_viewers_per_connection}",
            )
        viewer_id, answer = await stream.add_viewer(conn, sdp, CODECS.get(codec))
        return {
            "type": "answer",
            "stream": stream.id,
            "viewer": viewer_id,
            "sdp": answer,
            "fps": stream.fps,
            "ticks_per_frame": stream.playout.ticks_per_frame,
        }

    async def _on_unwatch(self, conn: Connection, msg: dict) -> dict:
        viewer_id = field(msg, "viewer", str)
        stream = conn.viewers.get(viewer_id)
        if stream is None:
            raise request_error("unknown_viewer", f"no viewer {viewer_id!r} on this connection")
        await stream.remove_viewer(viewer_id, "unwatched")
        return {"type": "unwatched", "stream": stream.id, "viewer": viewer_id}

    async def _on_join(self, conn: Connection, msg: dict) -> dict:
        stream = self._stream(conn, msg)
        return {
            "type": "joined",
            **stream.snapshot(),
            "fps": stream.fps,
            "frames_per_chunk": stream.fpc,
            "ticks_per_frame": stream.playout.ticks_per_frame,
        }

    async def _on_leave(self, conn: Connection, msg: dict) -> dict:
        stream = self._stream(conn, msg, attach=False)
        await stream.detach(conn)
        return {"type": "left", "stream": stream.id}

    async def _on_prompt(self, conn: Connection, msg: dict) -> dict:
        stream = self._stream(conn, msg)
        self._limit_prompts(conn)
        text = self.check_prompt(field(msg, "text", str))
        frame = stream.set_prompt(text)
        stream.broadcast(
            {"type": "prompt_changed", "stream": stream.id, "frame": frame, "prompt": text},
            exclude=conn,
        )
        return {"type": "prompt_applied", "stream": stream.id, "frame": frame, "prompt": text}

    async def _on_storyboard(self, conn: Connection, msg: dict) -> dict:
        stream = self._stream(conn, msg)
        self._limit_prompts(conn)
        items = protocol.storyboard_items(msg)
        for i, (_, text) in enumerate(items):
            try:
                self.check_prompt(text)
            except EndlessError as err:
                err.message = f"storyboard item {i}: {err.message}"
                raise
        frames = stream.set_storyboard(items)
        placed = [
            {"at": at, "prompt": t, "frame": f} for (at, t), f in zip(items, frames, strict=True)
        ]
        return {"type": "storyboard_set", "stream": stream.id, "items": placed}

    async def _on_pause(self, conn: Connection, msg: dict) -> dict:
        stream = self._stream(conn, msg)
        stream.pause()
        event = {"type": "paused", "stream": stream.id, "frame": stream.playout.next_frame}
        stream.broadcast(event, exclude=conn)
        return event

    async def _on_resume(self, conn: Connection, msg: dict) -> dict:
        stream = self._stream(conn, msg)
        stream.resume()
        event = {"type": "resumed", "stream": stream.id, "frame": stream.playout.next_frame}
        stream.broadcast(event, exclude=conn)
        return event

    async def _on_stop(self, conn: Connection, msg: dict) -> dict:
        stream = self._stream(conn, msg, attach=False)
        task = self.end_stream(stream, "stopped")
        if task is not None:
            await task
        return {"type": "stopped", "stream": stream.id}

    async def _on_streams(self, conn, msg):
        return {"type": "streams", "streams": [self._listing(s) for s in self.streams.values()]}

    def _listing(self, stream: LiveStream) -> dict:
        """A `streams` entry: the stream's stats and where it runs (`worker`, `worker_pid`)."""
        where = getattr(self.engine, "placement", None)
        placed = where(stream.id) if where else {"worker": "local", "worker_pid": self.engine.pid}
        return {**stream.snapshot(), **placed}

    async def _on_stats(self, conn: Connection, msg: dict) -> dict:
        stream = self._stream(conn, msg, attach=False)
        return {"type": "stats", **stream.snapshot()}


def _response(status: int, body: bytes, content_type: str) -> Response:
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Length", str(len(body))),
            ("Content-Type", content_type),
            ("Cache-Control", "no-store"),
        ]
    )
    return Response(status, http.HTTPStatus(status).phrase, headers, body)
