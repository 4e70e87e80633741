"""LiveServer: one websocket endpoint (/ws) for control and signalling, plus plain HTTP
(/ the browser viewer, /metrics, /healthz) and the outputs (server/outputs.py), all on
one port served by server/http_routes.py.

Everything hangs off the LiveServer object: two servers can run in one process.
The model runs in a supervised engine process (server.engine_process); the server keeps
each stream's latest snapshots and re-opens its streams from them when the engine restarts.
Shutdown order (`close`): stop accepting, tell clients (`shutting_down`), save the streams'
state (with a state directory) and run the shutdown hooks, end streams (closing peers),
close websockets (aborting those that do not read), finish recordings and pushes, stop the
engine (with a timeout), drop what is left in the encoder thread.
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
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from memory.stream import chunk_frames_of
from model.bundle import DEFAULT_WEIGHTS, VideoModel
from model.errors import EndlessError, PromptError, ProtocolError
from model.precision import dtype_name
from model.tinyworld.spec import FILLER, VOCAB
from model.wan.load import load_named
from server import auth, protocol
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
from server.heap_trim import HeapTrimmer
from server.http_routes import HttpFront
from server.ice import offered_addresses
from server.live import LiveStream
from server.load_policy import EngineLoad
from server.metrics import Metrics
from server.outputs import Outputs
from server.protocol import field, request_error
from server.provenance.marking import StreamMarker
from server.provenance.policy import PromptPolicy, PromptRefused
from server.start_image import start_image
from server.state_keeper import StateKeeper

log = logging.getLogger(__name__)
DEFAULT_PROMPT = "a big red circle bouncing over the ocean"
VERSION = "0.1.0"


def load_model(
    spec: str,
    dtype: str = "auto",
    base: str | None = None,
    lora: str | None = None,
    size: str | None = None,
    device: str = "auto",
    weights: bool = True,
) -> VideoModel:
    """ "tiny": the shipped weights (random init if they are absent), "random[:preset]":
    random init, FAMILY:PATH: a Wan2.1 model on `base` with `lora` (docs/models.md),
    anything else: a checkpoint path; at `size` ("WxH"), in the compute dtype `dtype` names."""
    model = load_named(spec, base, lora, size, dtype, _builtin, device, weights)
    log.info("model %s in %s: %s", spec, dtype_name(model.dtype), model.description)
    return model


def _builtin(spec: str, compute) -> VideoModel:
    if spec == "tiny":
        if DEFAULT_WEIGHTS.is_file():
            return VideoModel.load_default(compute)
        log.warning("no trained weights at %s: using a random-init tiny model", DEFAULT_WEIGHTS)
        return VideoModel.from_seed(0, "tiny", dtype=compute)
    if spec == "random" or spec.startswith("random:"):
        return VideoModel.from_seed(0, spec.partition(":")[2] or "tiny", dtype=compute)
    return VideoModel.load(Path(spec), compute)


def prompt_kind(model: VideoModel) -> dict[str, Any]:
    """What `hello` says of prompts: "tinyworld" (with its vocabulary and filler words)
    or "free-text" (any words, e.g. umT5's)."""
    kind = model.text.prompts
    if kind != "tinyworld":
        return {"prompts": kind}
    vocabulary = {k: list(v) for k, v in VOCAB.items()}
    return {"prompts": kind, "vocabulary": vocabulary, "filler": sorted(FILLER)}


def static_dir() -> Path:
    return Path(str(resources.files("client") / "static"))


class Connection:
    """One websocket client: its outbox, rate limits, streams and viewers, and what it has
    shown it may see: the streams it presented a token for (`presented`: id -> role) and
    whether it presented an API key (`keyed`: it lists every stream)."""

    def __init__(self, ws: ServerConnection, config: ServerConfig, metrics: Metrics):
        self.id = secrets.token_hex(4)
        self.ws = ws
        self.metrics = metrics
        self.outbox: asyncio.Queue[dict] = asyncio.Queue(config.outbox_queue)
        self.streams: set[LiveStream] = set()
        self.viewers: dict[str, LiveStream] = {}
        self.prompt_limit = protocol.TokenBucket(config.prompt_rate, config.prompt_burst)
        self.message_limit = protocol.TokenBucket(config.message_rate, config.message_burst)
        self.auth_limit = protocol.TokenBucket(config.auth_failure_rate, config.auth_failure_burst)
        self.presented: dict[str, auth.Role] = {}
        self.keyed = False
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

    def send_and_close(self, msg: dict[str, Any], code: int, reason: str) -> None:
        """Queue a last event, then close the websocket once it has been written."""
        if self.closed:
            return
        self.send(msg)
        if not self.closed and not self.outbox.full():
            self.outbox.put_nowait({"close": (code, reason)})
        self.closed = True

    async def write_loop(self) -> None:
        try:
            while True:
                msg = await self.outbox.get()
                if "close" in msg and "type" not in msg:
                    await self.ws.close(*msg["close"])
                    return
                await self.ws.send(json.dumps(msg))
        except ConnectionClosed:
            self.closed = True


class LiveServer:
    def __init__(self, config: ServerConfig | None = None, model: VideoModel | None = None):
        self.config = config or ServerConfig()
        self.model = model
        self.metrics = Metrics()
        self.outputs = Outputs(self)  # WHEP, HLS, recordings, RTMP pushes, OSC
        self.streams: dict[str, LiveStream] = {}
        self.connections: set[Connection] = set()
        self.static = static_dir()
        self.port: int | None = None
        self.engine: Engine | None = None
        self.shutdown_hooks: list = []  # async callables run at shutdown (recordings)
        self.state_keeper: StateKeeper | None = None
        self.shutting_down = False
        self.ice_addresses: tuple[str, ...] | None = None  # None: every host address
        self.encode_pool: ThreadPoolExecutor | None = None
        self.heap = HeapTrimmer()  # freed peer memory back to the OS (viewers come and go)
        self.saturated = False  # the engine is at its fewest steps and still behind
        # streams asked of the engine, not opened yet: id -> (creator's future, the command)
        self._opening: dict[str, tuple[asyncio.Future[LiveStream], OpenStream]] = {}
        self._closing: set[asyncio.Task] = set()
        self._owners: dict[str, str] = {}  # stream id -> the API key (or connection) it counts for
        self._ws_server = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.ready = asyncio.Event()
        cfg = self.config
        self.policy = PromptPolicy.load(cfg.prompt_policy) if cfg.prompt_policy else None
        self.marker = StreamMarker(cfg.server_name) if cfg.watermark else None
        if self.marker is None:
            log.warning("watermark OFF (--no-watermark): frames carry no provenance mark")

    # -- lifetime --------------------------------------------------------------------------
    async def start(self) -> LiveServer:
        cfg = self.config
        self._loop = loop = asyncio.get_running_loop()
        if self.model is None:
            # the engine process loads the weights; a Wan model's are not loaded here too
            face = (cfg.model, cfg.dtype, cfg.base, cfg.lora, cfg.size, cfg.device, False)
            self.model = await loop.run_in_executor(None, load_model, *face)
            source = ModelSource(cfg.model, cfg.dtype, cfg.base, cfg.lora, cfg.size, cfg.device)
        else:  # a model built here (tests): the engine gets a copy of it
            source = await loop.run_in_executor(None, ModelSource.of, self.model)
        self.model.with_sampler(**cfg.sampler_changes())
        rewind = self.model.config.stream.rewind_chunks
        if cfg.ahead_chunks + 1 > rewind:
            if rewind < 2:
                raise request_error("bad_config", f"ahead_chunks must be below {rewind}")
            # a switch rewinds up to ahead + 1 chunks: generate no further ahead than the
            # model's streams can rewind
            log.warning(
                "%s streams rewind %d chunks: generating %d ahead, not %d",
                self.model.config.name,
                rewind,
                rewind - 1,
                cfg.ahead_chunks,
            )
            self.config = cfg = replace(cfg, ahead_chunks=rewind - 1)
        self.engine = self.make_engine(source)
        self.encode_pool = ThreadPoolExecutor(1, thread_name_prefix="endless-encode")
        self.ice_addresses = await offered_addresses(cfg.host, cfg.ice_addresses)
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
        if cfg.state_dir is not None:
            self.state_keeper = StateKeeper(self, cfg.state_dir)
            self.state_keeper.resume_all()
        m.watch_queue(
            "buffered_frames", lambda: sum(s.playout.buffered_frames for s in self.streams.values())
        )
        m.watch_queue("outbox", lambda: sum(c.outbox.qsize() for c in self.connections))
        m.cache_bytes.set_function(lambda: sum(s.cache_bytes for s in self.streams.values()))
        self._ws_server = HttpFront(self)
        self.port = await self._ws_server.start(cfg.host, cfg.port)
        await self.outputs.start()  # OSC, when asked for
        self.heap.start()
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
            max_batch=cfg.max_batch,
            degrade=cfg.degrade,
            min_steps=cfg.min_steps,
            # the engine marks each chunk's frames before they leave it (None: unmarked),
            # after the upscaling stage: the mark is on the frames viewers get
            watermark=cfg.server_name if self.marker is not None else None,
            upscale=cfg.upscale,
            solo_threads=cfg.solo_threads,
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
            slot_bytes=fpc * sc.height * sc.width * 3 * cfg.upscale**2,  # frames as sent
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

    def note_load(self, load: EngineLoad) -> None:
        """The load policy's latest reading (from any stream's chunk)."""
        m = self.metrics
        m.engine_load.set(load.load)
        m.sampling_steps.set(load.steps)
        m.engine_saturated.set(float(load.saturated))
        m.streams_degraded.set(
            sum(1 for s in self.streams.values() if s.load is not None and s.load.degraded)
        )
        self.saturated = load.saturated

    def check_admission(self) -> None:
        """A new stream is refused while the engine, degraded as far as it goes, is still
        behind: it would make every stream stall."""
        if self.saturated and self.streams:
            raise request_error(
                "busy",
                "the engine cannot keep its streams in real time even at its fewest steps; "
                "try again later",
            )

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

    async def close(self, timeout: float | None = None) -> None:
        """Shut down within `timeout` (config.shutdown_seconds) however clients behave."""
        loop = asyncio.get_running_loop()
        end = loop.time() + (self.config.shutdown_seconds if timeout is None else timeout)

        def left(most: float = 60.0) -> float:
            return max(0.05, min(most, end - loop.time()))

        self.shutting_down = True
        self.heap.stop()
        if self._ws_server is not None:
            self._ws_server.stop_accepting()  # 1. stop accepting
        for conn in list(self.connections):  # 2. tell clients
            conn.send({"type": "shutting_down", "reason": "server_shutdown"})
        if self.state_keeper is not None:  # 3. snapshots, recordings
            await self.state_keeper.close(left() / 2)
        for hook in list(self.shutdown_hooks):
            try:
                await asyncio.wait_for(hook(), left() / 2)
            except Exception:
                log.exception("a shutdown hook failed")
        for stream in list(self.streams.values()):  # 4. end streams, closing peers
            self.end_stream(stream, "server_shutdown")
        if self._closing:
            await asyncio.wait(list(self._closing), timeout=left() / 2)
        await self._close_connections(left(1.0))  # 5. close websockets
        if self._ws_server is not None:
            if not await self._ws_server.wait_handlers(left()):
                log.warning("websocket handlers did not finish in time")
            await self.outputs.finish_all()  # 6. finish files (recordings) and pushes
            await self._ws_server.close()
        if self.engine is not None:  # 7. stop the engine
            if not await self.engine.stop(left()):
                log.warning("the engine did not stop in time")
        if self.encode_pool is not None:  # 8. cancel the rest
            self.encode_pool.shutdown(wait=False, cancel_futures=True)

    async def _close_connections(self, timeout: float) -> None:
        """Close every websocket (1001); abort those whose close does not finish in time
        (a client that stopped reading has a full socket: its close frame cannot go out)."""
        flush_until = asyncio.get_running_loop().time() + min(0.3, timeout / 2)
        while any(c.outbox.qsize() for c in self.connections if not c.closed):  # events first
            if asyncio.get_running_loop().time() > flush_until:
                break
            await asyncio.sleep(0.01)
        conns = list(self.connections)
        tasks = [asyncio.ensure_future(c.ws.close(1001, "server shutting down")) for c in conns]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        for conn, task in zip(conns, tasks, strict=True):
            if not task.done():
                task.cancel()
                conn.ws.abort()

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
                fut, _ = self._opening.pop(result.stream_id, (None, None))
                if fut is not None and not fut.done():
                    fut.set_exception(request_error(result.code, result.message))
                elif (stream := self.streams.get(result.stream_id)) is not None:
                    log.error("stream %s failed: %s", stream.id, result.message)
                    self.end_stream(stream, "failed")

    def _engine_state(self, change: EngineStateChanged) -> None:
        if change.state == "failed":  # no engine will come back: end what waits on it
            for stream in list(self.streams.values()):
                self.end_stream(stream, "failed")
            for fut, _ in self._opening.values():
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
        for stream_id, (_, command) in self._opening.items():
            if lost(stream_id):
                self.engine.submit(command)

    def _opened(self, info: StreamOpened) -> None:
        if (live := self.streams.get(info.stream_id)) is not None:
            live.on_restored(info)  # a restore after an engine restart
            return
        fut, cmd = self._opening.pop(info.stream_id, (None, None))
        if fut is None or fut.done():  # the creator gave up: free the model's stream
            self.engine.close_stream(info.stream_id)
            return
        stream = LiveStream(
            self, info.stream_id, cmd.prompt, cmd.seed, info, image=cmd.image, created=cmd.started
        )
        self.streams[stream.id] = stream
        self.metrics.streams.inc()
        stream.start()
        fut.set_result(stream)

    def end_stream(self, stream: LiveStream, reason: str) -> asyncio.Task | None:
        if self.streams.get(stream.id) is not stream:
            return None
        del self.streams[stream.id]
        self.metrics.streams.dec()
        if self.state_keeper is not None and not self.shutting_down:
            self.state_keeper.forget(stream.id)
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
            self.heap.soon()

    async def _on_message(self, conn: Connection, raw: str | bytes) -> None:
        seq = None
        try:
            cfg = self.config
            msg = protocol.decode(raw, cfg.max_message_bytes, cfg.hard_message_bytes)
            seq = protocol.seq_of(msg)  # read first, so that even a refusal can echo it
            protocol.check_size(msg, raw, cfg.max_message_bytes)
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
            if err.code == "unauthorized" and not conn.auth_limit.take(time.monotonic()):
                # a client that keeps guessing tokens or keys is cut off
                conn.send_and_close(
                    protocol.error(err, seq), 1008, "too many unauthorized requests"
                )
                return
            conn.send(protocol.error(err, seq))
        except Exception:
            log.exception("request failed")
            self.metrics.errors.labels("internal").inc()
            conn.send(protocol.error(request_error("internal", "internal server error"), seq))

    # -- requests ------------------------------------------------------------------------------
    def _hello(self) -> dict[str, Any]:
        mc = self.model.config
        cfg = self.config
        per_chunk = chunk_frames_of(self.model)
        return {
            "type": "hello",
            "server": "endless",
            "version": VERSION,
            "protocol": protocol.PROTOCOL_VERSION,
            "model": mc.name,
            "fps": mc.stream.fps,
            "width": mc.stream.width * cfg.upscale,  # of the frames sent (after upscaling)
            "height": mc.stream.height * cfg.upscale,
            "upscale": cfg.upscale,
            "frames_per_chunk": per_chunk.rest,  # every chunk after the first
            "first_chunk_frames": per_chunk.first,
            "codecs": list(CODECS),
            "codec": cfg.codec,
            "default_prompt": DEFAULT_PROMPT,
            "sampling": mc.sampler.sampling(),
            "dtype": dtype_name(self.model.dtype),  # compute precision
            **prompt_kind(self.model),
            "limits": {
                "max_prompt_chars": cfg.max_prompt_chars,
                "max_message_bytes": cfg.max_message_bytes,
                "max_image_bytes": cfg.max_image_bytes,
                "prompt_rate": cfg.prompt_rate,
                "prompt_burst": cfg.prompt_burst,
                "max_streams": cfg.max_streams,
                "max_streams_per_key": cfg.max_streams_per_key,
                "max_viewers_per_stream": cfg.max_viewers_per_stream,
            },
            "key_required": bool(cfg.api_keys),
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
        if self.policy is not None:
            try:
                self.policy.check(text)
            except PromptRefused:
                self.metrics.prompts_refused.inc()
                raise
        self.model.text.check(text)  # PromptError / UnknownWordsError
        return text

    def _limit_prompts(self, conn: Connection) -> None:
        if not conn.prompt_limit.take(time.monotonic()):
            raise request_error(
                "rate_limited",
                f"too many prompts; retry in {conn.prompt_limit.retry_after():.2f}s",
                round(conn.prompt_limit.retry_after(), 3),
            )

    def _stream(self, conn: Connection, msg: dict, attach: bool = True) -> LiveStream:
        """The live stream a request names, once its token gives the role the request
        needs (auth.NEEDS); attaches the connection to it unless told not to."""
        stream_id = field(msg, "stream", str)
        stream = self.streams.get(stream_id)
        if stream is None or stream.ended:
            raise request_error("unknown_stream", f"no live stream {stream_id!r}", stream_id)
        self._authorize(conn, stream, msg)
        if attach and not conn.closed:
            stream.attach(conn)
        return stream

    def _authorize(self, conn: Connection, stream: LiveStream, msg: dict) -> auth.Role:
        """The role the request's token gives on `stream` (unauthorized / forbidden when
        less than it needs); the connection has presented that stream from then on."""
        try:
            need = auth.NEEDS.get(msg["type"], "control")  # a request not listed: control
            role = auth.require(stream, msg.get("token"), need)
        except ProtocolError as err:
            if err.code == "forbidden":
                conn.presented.setdefault(stream.id, "view")
            raise
        if conn.presented.get(stream.id) != "control":
            conn.presented[stream.id] = role
        return role

    def _check_key(self, conn: Connection, msg: dict) -> str:
        """Who a new stream counts against: the API key in the request (unauthorized if
        the server has keys and this is none of them), or, without keys, the connection."""
        keys = self.config.api_keys
        if not keys:
            return "connection:" + conn.id
        index = auth.which_key(keys, msg.get("key"))
        if index is None:
            what = "an unknown" if "key" in msg else "no"
            raise request_error("unauthorized", f"{msg['type']!r} with {what} API key")
        conn.keyed = True
        return f"key:{index}"

    def _check_stream_room(self, owner: str) -> None:
        cfg = self.config
        if len(self.streams) + len(self._opening) >= cfg.max_streams:
            raise request_error(
                "too_many_streams", f"this server runs at most {cfg.max_streams} streams"
            )
        live = set(self.streams) | set(self._opening)
        self._owners = {sid: o for sid, o in self._owners.items() if sid in live}
        if sum(o == owner for o in self._owners.values()) >= cfg.max_streams_per_key:
            whose = "API key" if owner.startswith("key:") else "connection"
            raise request_error(
                "too_many_streams",
                f"this {whose} already runs {cfg.max_streams_per_key} streams, its limit",
            )

    async def _on_hello(self, conn, msg):
        return self._hello()

    async def _on_ping(self, conn, msg):
        return {"type": "pong", "time": time.time()}

    async def _on_create(self, conn: Connection, msg: dict) -> dict:
        owner = self._check_key(conn, msg)
        seed = field(msg, "seed", int, 0)
        if not 0 <= seed < 2**63:
            raise request_error("bad_message", "'seed' must be in [0, 2**63)", seed)
        image = None
        if msg.get("image") is not None:  # the prompt completed from the image, the still
            self._check_stream_room(owner)  # before the work of reading it
            self.check_admission()
            given = field(msg, "prompt", str, "")
            text, image = await start_image(
                self.model, given, msg["image"], self.config.max_image_bytes
            )
        else:
            text = field(msg, "prompt", str, DEFAULT_PROMPT)
        prompt = self.check_prompt(text)
        self._check_stream_room(owner)  # after the image's await: none before _opening
        self.check_admission()
        stream_id = secrets.token_hex(4)
        fut = asyncio.get_running_loop().create_future()
        self.check_engine()
        command = OpenStream(stream_id, prompt, seed, image=image, started=time.time())
        if not self.engine.submit(command):
            raise request_error("busy", "the model worker is busy; try again shortly")
        self._opening[stream_id] = (fut, command)
        self._owners[stream_id] = owner
        try:
            stream = await asyncio.wait_for(fut, 60.0)
        except TimeoutError:
            raise request_error(
                "busy", "the model worker did not open the stream in 60 s"
            ) from None
        finally:
            self._opening.pop(stream_id, None)
        conn.presented[stream.id] = "control"
        if conn.closed:
            stream.release_if_unused()
        else:
            stream.attach(conn)
        return {
            "type": "created",
            "stream": stream.id,
            "control_token": stream.control_token,
            "view_token": stream.view_token,
            "prompt": prompt,
            "seed": seed,
            "fps": stream.fps,
            "frames_per_chunk": stream.fpc,
            "first_chunk_frames": stream.frames.first,
            "width": stream.width,
            "height": stream.height,
            "ticks_per_frame": stream.playout.ticks_per_frame,
        }

    async def _on_watch(self, conn: Connection, msg: dict) -> dict:
        stream = self._stream(conn, msg)
        cfg = self.config
        role = auth.role_of(stream, msg.get("token"))
        slots = None if role == "control" else cfg.max_viewers_per_stream - cfg.control_viewer_slots
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
        viewer_id, answer = await stream.add_viewer(conn, sdp, CODECS.get(codec), slots)
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
        self._authorize(conn, stream, msg)
        await stream.remove_viewer(viewer_id, "unwatched")
        return {"type": "unwatched", "stream": stream.id, "viewer": viewer_id}

    async def _on_join(self, conn: Connection, msg: dict) -> dict:
        stream = self._stream(conn, msg)
        role = auth.role_of(stream, msg.get("token"))
        joined = {
            "type": "joined",
            **stream.snapshot(),
            "fps": stream.fps,
            "frames_per_chunk": stream.fpc,
            "ticks_per_frame": stream.playout.ticks_per_frame,
            "role": role,
        }
        if role == "control":  # a co-narrator can share the stream onward
            joined["view_token"] = stream.view_token
        return joined

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

    async def _on_record(self, conn: Connection, msg: dict) -> dict:
        return await self.outputs.record(self._stream(conn, msg), msg)

    async def _on_push(self, conn: Connection, msg: dict) -> dict:
        return await self.outputs.push(self._stream(conn, msg), msg)

    async def _on_streams(self, conn: Connection, msg: dict) -> dict:
        """The streams this connection presented a token for; every one for an API key."""
        if self.config.api_keys and "key" in msg:
            self._check_key(conn, msg)
        conn.presented = {i: r for i, r in conn.presented.items() if i in self.streams}
        shown = [
            {**self._listing(s), "role": conn.presented.get(s.id)}
            for s in self.streams.values()
            if conn.keyed or s.id in conn.presented
        ]
        return {"type": "streams", "streams": shown}

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
