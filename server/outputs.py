"""The stream's outputs beyond the websocket viewer, each fed by the stream's one encode
per codec: WHEP viewers (server/whep.py), the OBS page (/play), HLS (server/hls.py),
recordings (server/recording.py), RTMP pushes (server/rtmp.py) and OSC control
(server/osc.py). `Outputs` hangs off the LiveServer and owns them all.

HTTP routes here take the view token (or the control token) as `?token=` (`?view=` for
the OBS page) and answer 401 without one, 403 with a wrong one, 404 for what is not
there. HLS and recording answers carry `Access-Control-Allow-Origin: *`, so a player
on another origin can read them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
from typing import TYPE_CHECKING, Any

from aiohttp import web

from server.auth import require, role_of
from server.hls import HlsSegmenter
from server.osc import OscControl
from server.output_metrics import OutputMetrics
from server.protocol import field, request_error
from server.recording import Recordings
from server.rtmp import RtmpPush, check_url
from server.whep import WhepEndpoint

if TYPE_CHECKING:
    from server.app import LiveServer
    from server.live import LiveStream

log = logging.getLogger(__name__)
OPEN = {"Access-Control-Allow-Origin": "*", "Cache-Control": "no-store"}
HLS_FIRST_WAIT = 10.0  # seconds a first playlist request waits for segments to exist
RECORDING_NAME = re.compile(r"^([0-9a-f]{16})\.mp4$")


class RecordingSigner:
    """Signs each finished recording with a C2PA manifest (endless, the model, the time,
    the stream's watermark payload) with the operator's key, or the development one."""

    def __init__(self, server: LiveServer):
        self.server = server
        self._signer = None  # made at the first recording (a development key is made once)

    def __call__(self, rec) -> None:
        from server.provenance.c2pa_sign import ManifestInfo, sign_mp4, signer_config

        cfg = self.server.config
        if self._signer is None:
            self._signer = signer_config(cfg.c2pa_key, cfg.c2pa_cert, cfg.state_dir)
        marker = self.server.marker
        extra = {"stream": rec.keys.id}
        if marker is not None:
            extra["watermark"] = marker.payload(rec.keys.id).as_dict()
        created = dt.datetime.fromtimestamp(rec.started_at, dt.UTC)
        info = ManifestInfo(
            self.server.model.config.name, created, "endless recording", extra=extra
        )
        sign_mp4(rec.path, info, self._signer)


class Outputs:
    def __init__(self, server: LiveServer):
        self.server = server
        cfg = server.config
        self.metrics = OutputMetrics(server.metrics.registry)
        self.whep = WhepEndpoint(server, self.metrics)
        self.recordings = Recordings(
            cfg.record_dir, cfg.record_max_seconds, self.metrics, RecordingSigner(server)
        )
        self.hls: dict[str, HlsSegmenter] = {}
        self.pushes: dict[str, dict[str, RtmpPush]] = {}  # stream id -> push id -> push
        self.osc: OscControl | None = None
        self._tasks: set[asyncio.Task] = set()  # pushes being stopped at a stream's end

    async def start(self) -> None:
        cfg = self.server.config
        if cfg.osc_port is not None:
            self.osc = OscControl(self.server, self.metrics)
            port = await self.osc.start(cfg.osc_host, cfg.osc_port)
            log.info("OSC control on udp %s:%d", cfg.osc_host, port)

    def add_routes(self, router: web.UrlDispatcher) -> None:
        self.whep.add_routes(router)
        router.add_get("/play/{stream}", self._play)
        router.add_get("/hls/{stream}/index.m3u8", self._playlist)
        router.add_get("/hls/{stream}/{seq:[0-9]+}.ts", self._segment)
        router.add_get("/recordings/{name}", self._recording)

    # -- lifetime -----------------------------------------------------------------------------
    def stream_ended(self, stream: LiveStream) -> None:
        """The stream ended: finish what it fed."""
        self.recordings.stream_ended(stream)
        hls = self.hls.pop(stream.id, None)
        if hls is not None:
            hls.close()
        for push in list(self.pushes.get(stream.id, {}).values()):
            task = asyncio.get_running_loop().create_task(self._stop_push(stream, push))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def finish_all(self) -> None:
        """At shutdown, after the streams ended: finish recordings, stop pushes and OSC."""
        if self.osc is not None:
            self.osc.close()
        await self.recordings.finish_all()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for pushes in list(self.pushes.values()):
            await asyncio.gather(*(p.stop() for p in pushes.values()), return_exceptions=True)
        self.pushes.clear()

    # -- websocket requests (called by LiveServer._on_record / _on_push) ----------------------
    async def record(self, stream: LiveStream, msg: dict) -> dict[str, Any]:
        require(stream, field(msg, "token", str, None), "control")
        action = field(msg, "action", str, "start")
        if action == "start":
            return self.recordings.start(stream)
        if action == "stop":
            return await self.recordings.stop(stream)
        raise request_error("bad_message", f"'action' must be start or stop, not {action!r}")

    async def push(self, stream: LiveStream, msg: dict) -> dict[str, Any]:
        require(stream, field(msg, "token", str, None), "control")
        action = field(msg, "action", str, "start")
        pushes = self.pushes.setdefault(stream.id, {})
        if action == "stop":
            push_id = field(msg, "push", str, None)
            chosen = [p for p in pushes.values() if push_id in (None, p.id)]
            if not chosen:
                raise request_error("not_pushing", f"no such push on stream {stream.id}")
            for push in chosen:
                await self._stop_push(stream, push)
            return {**chosen[-1].describe(), "stopped": [p.id for p in chosen]}
        if action != "start":
            raise request_error("bad_message", f"'action' must be start or stop, not {action!r}")
        url = check_url(field(msg, "url", str))
        if len(pushes) >= self.server.config.max_pushes_per_stream:
            raise request_error(
                "too_many_pushes",
                f"stream {stream.id} already pushes to {len(pushes)} destinations",
            )
        holder: dict[str, Any] = {}
        push = RtmpPush(
            stream.id,
            url,
            self._push_status,
            lambda: holder["enc"].request_keyframe(),
            self.metrics.pushed_frames,
        )
        holder["enc"] = stream.add_sink(push)
        pushes[push.id] = push
        push.start()
        self.metrics.pushes.inc()
        self.metrics.pushes_active.inc()
        return push.describe()

    async def _stop_push(self, stream: LiveStream, push: RtmpPush) -> None:
        if self.pushes.get(stream.id, {}).pop(push.id, None) is None:
            return
        stream.remove_sink(push)
        self.metrics.pushes_active.dec()
        await push.stop()

    def _push_status(self, push: RtmpPush, state: str, error: str | None) -> None:
        self.metrics.push_states.labels(state).inc()
        stream = self.server.streams.get(push.stream_id)
        if stream is not None:
            stream.broadcast(push.describe())

    # -- HTTP ---------------------------------------------------------------------------------
    def _stream(self, request: web.Request) -> LiveStream:
        stream = self.server.streams.get(request.match_info["stream"])
        if stream is None or stream.ended:
            raise _fail(404, f"no live stream {request.match_info['stream']!r}")
        return stream

    def _viewer(self, request: web.Request, keys, param: str = "token") -> str:
        token = request.query.get(param)
        if not token:
            raise _fail(401, f"?{param}=<view token> is needed")
        if role_of(keys, token) is None:
            raise _fail(403, f"that token does not open stream {keys.id}")
        return token

    async def _play(self, request: web.Request) -> web.Response:
        """The OBS page: the video only; the page itself connects over WHEP."""
        stream = self._stream(request)
        self._viewer(request, stream, "view")
        page = (self.server.static / "play.html").read_bytes()
        return web.Response(body=page, content_type="text/html", headers=OPEN)

    def _segmenter(self, stream: LiveStream) -> HlsSegmenter:
        hls = self.hls.get(stream.id)
        if hls is None or hls.closed:
            cfg = self.server.config
            hls = HlsSegmenter(
                stream,
                self.metrics,
                cfg.hls_segment_seconds,
                cfg.hls_keep_segments,
                cfg.hls_idle_seconds,
            )
            hls.encoder = stream.add_sink(hls)
            self.hls[stream.id] = hls
            self.metrics.hls_active.inc()
        hls.touch()
        return hls

    async def _playlist(self, request: web.Request) -> web.Response:
        stream = self._stream(request)
        token = self._viewer(request, stream)
        self.metrics.hls_requests.labels("playlist").inc()
        hls = self._segmenter(stream)
        try:
            ready = await hls.wait_segments(2, HLS_FIRST_WAIT)
        except TimeoutError:
            ready = False
        if not ready:
            raise _fail(503, "no HLS segments yet; retry shortly", {"Retry-After": "1"})
        return web.Response(
            text=hls.playlist(token), content_type="application/vnd.apple.mpegurl", headers=OPEN
        )

    async def _segment(self, request: web.Request) -> web.Response:
        stream = self._stream(request)
        self._viewer(request, stream)
        self.metrics.hls_requests.labels("segment").inc()
        hls = self.hls.get(stream.id)
        segment = hls.segment(int(request.match_info["seq"])) if hls is not None else None
        if segment is None:
            raise _fail(404, "no such segment (they are kept for a few seconds)")
        hls.touch()
        return web.Response(body=segment.data, content_type="video/mp2t", headers=OPEN)

    async def _recording(self, request: web.Request) -> web.StreamResponse:
        name = RECORDING_NAME.match(request.match_info["name"])
        rec = self.recordings.find(name.group(1)) if name else None
        if rec is None:
            raise _fail(404, "no such recording")
        self._viewer(request, rec.keys)
        if not rec.finished:
            raise _fail(409, "this recording is still being written; stop it first")
        if not rec.path.is_file():
            raise _fail(404, "this recording holds no frames")
        return web.FileResponse(rec.path, headers={**OPEN, "Content-Type": "video/mp4"})


def _fail(status: int, text: str, headers: dict | None = None) -> web.HTTPException:
    error = web.HTTPException(text=text + "\n", headers={**OPEN, **(headers or {})})
    error.set_status(status)
    return error
