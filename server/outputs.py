"""The stream's outputs beyond the websocket viewer, each fed by the stream's one encode
per codec: WHEP viewers (server/whep.py), the OBS page (/play), HLS (server/hls.py),
recordings (server/recording.py), RTMP pushes (server/rtmp.py) and OSC control
(server/osc.py). `Outputs` hangs off the LiveServer and owns them all."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from aiohttp import web

from server.auth import role_of
from server.output_metrics import OutputMetrics
from server.whep import WhepEndpoint

if TYPE_CHECKING:
    from server.app import LiveServer
    from server.live import LiveStream

log = logging.getLogger(__name__)


class Outputs:
    def __init__(self, server: LiveServer):
        self.server = server
        self.metrics = OutputMetrics(server.metrics.registry)
        self.whep = WhepEndpoint(server, self.metrics)

    def add_routes(self, router: web.UrlDispatcher) -> None:
        self.whep.add_routes(router)
        router.add_get("/play/{stream}", self._play)

    def stream_ended(self, stream: LiveStream) -> None:
        """The stream ended: finish what it fed."""

    async def finish_all(self) -> None:
        """At shutdown, after the streams ended: finish files and pushes."""

    async def _play(self, request: web.Request) -> web.Response:
        """The OBS page: the video only; the page itself connects over WHEP."""
        stream = self.server.streams.get(request.match_info["stream"])
        if stream is None or stream.ended:
            return web.Response(status=404, text="no such live stream\n")
        if role_of(stream, request.query.get("view")) is None:
            return web.Response(status=403, text="?view=<view token> is needed\n")
        page = (self.server.static / "play.html").read_bytes()
        return web.Response(
            body=page, content_type="text/html", headers={"Cache-Control": "no-store"}
        )
