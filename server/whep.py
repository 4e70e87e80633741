"""WHEP (draft-ietf-wish-whep): a WebRTC viewer made by one HTTP POST of an SDP offer.

A WHEP viewer is an ordinary viewer of its stream (`LiveStream.add_viewer`: same fan-out,
same one encode per codec, same limits). Where a websocket viewer belongs to its
`Connection`, a WHEP viewer belongs to a `WhepSession`, which stands in that place: it
takes the stream's events (and drops them: WHEP has no event channel) and, when its viewer
closes for any reason (DELETE, ICE failure, the stream's end), leaves the stream and the
session table.

    POST    /whep/<stream>             offer in, 201 + Location + answer out
    PATCH   /whep/<stream>/<session>   trickled ICE candidates (application/trickle-ice-sdpfrag)
    DELETE  /whep/<stream>/<session>   end the session
    OPTIONS either                     CORS preflight
"""

from __future__ import annotations

import logging
import secrets
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiortc.sdp import candidate_from_sdp

from model.errors import ProtocolError
from server.auth import role_of

if TYPE_CHECKING:
    from server.app import LiveServer
    from server.live import LiveStream
    from server.output_metrics import OutputMetrics

log = logging.getLogger(__name__)
MAX_SDP_BYTES = 64 * 1024
CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, PATCH, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match",
    "Access-Control-Expose-Headers": "Location, ETag, Link",
    "Access-Control-Max-Age": "600",
}
STATUS_OF = {"bad_sdp": 400, "unknown_stream": 404, "too_many_viewers": 503, "busy": 503}


class WhepSession:
    """The owner of one WHEP viewer, where a websocket Connection owns its viewers."""

    def __init__(self, endpoint: WhepEndpoint, stream: LiveStream):
        self.id = secrets.token_urlsafe(12)
        self.endpoint = endpoint
        self.stream = stream
        self.viewer_id: str | None = None
        self.viewers: dict[str, LiveStream] = {}  # filled by LiveStream.add_viewer
        self.streams: set[LiveStream] = set()  # filled by LiveStream.attach
        self.closed = False

    def send(self, msg: dict[str, Any], droppable: bool = False) -> None:
        """Stream events: only the end of this session's viewer matters."""
        if msg.get("type") == "viewer_closed" and msg.get("viewer") == self.viewer_id:
            self.leave()
        elif msg.get("type") == "stream_ended":
            self.leave()

    def leave(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.stream.members.discard(self)
        self.streams.discard(self.stream)
        self.endpoint.forget(self)
        if not self.stream.ended:
            self.stream.release_if_unused()


class WhepEndpoint:
    def __init__(self, server: LiveServer, metrics: OutputMetrics):
        self.server = server
        self.metrics = metrics
        self.sessions: dict[str, WhepSession] = {}

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_route("OPTIONS", "/whep/{stream}", self.options)
        router.add_post("/whep/{stream}", self.post)
        router.add_route("OPTIONS", "/whep/{stream}/{session}", self.options)
        router.add_patch("/whep/{stream}/{session}", self.patch)
        router.add_delete("/whep/{stream}/{session}", self.delete)

    def forget(self, session: WhepSession) -> None:
        if self.sessions.pop(session.id, None) is not None:
            self.metrics.whep_active.dec()

    # -- requests --------------------------------------------------------------------------
    async def options(self, request: web.Request) -> web.Response:
        return web.Response(status=204, headers=CORS)

    async def post(self, request: web.Request) -> web.Response:
        stream = self._stream(request)
        self._authorize(request, stream)
        if request.content_type != "application/sdp":
            raise _error(415, "the offer must be sent as Content-Type: application/sdp")
        offer = await _body(request)
        session = WhepSession(self, stream)
        try:
            viewer_id, answer = await stream.add_viewer(session, offer, None)
        except ProtocolError as err:
            self.metrics.whep_refused.labels(err.code).inc()
            raise _error(STATUS_OF.get(err.code, 400), err.message) from None
        session.viewer_id = viewer_id
        self.sessions[session.id] = session
        self.metrics.whep_sessions.inc()
        self.metrics.whep_active.inc()
        location = f"/whep/{stream.id}/{session.id}"
        log.info("WHEP session %s on stream %s (viewer %s)", session.id, stream.id, viewer_id)
        return web.Response(
            status=201,
            text=answer,
            content_type="application/sdp",
            headers={**CORS, "Location": location, "ETag": f'"{session.id}"'},
        )

    async def patch(self, request: web.Request) -> web.Response:
        session = self._session(request)
        if request.content_type != "application/trickle-ice-sdpfrag":
            raise _error(415, "trickle ICE needs Content-Type: application/trickle-ice-sdpfrag")
        fragment = await _body(request)
        viewer = session.stream.viewers.get(session.viewer_id or "")
        if viewer is None:
            raise _error(404, "this WHEP session has ended")
        mid = None
        for line in fragment.splitlines():
            line = line.strip()
            if line.startswith("a=mid:"):
                mid = line[len("a=mid:") :]
            elif line.startswith("a=candidate:") and ".local " not in line:
                try:
                    candidate = candidate_from_sdp(line[len("a=candidate:") :])
                except (AssertionError, ValueError, IndexError):
                    raise _error(400, f"not an ICE candidate: {line[:120]!r}") from None
                candidate.sdpMid = mid
                candidate.sdpMLineIndex = 0 if mid is None else None
                await viewer.pc.addIceCandidate(candidate)
            elif line == "a=end-of-candidates":
                await viewer.pc.addIceCandidate(None)
        return web.Response(status=204, headers=CORS)

    async def delete(self, request: web.Request) -> web.Response:
        session = self._session(request)
        if session.viewer_id is not None:
            await session.stream.remove_viewer(session.viewer_id, "whep_deleted")
        session.leave()
        return web.Response(status=200, headers=CORS)

    # -- checks ----------------------------------------------------------------------------
    def _stream(self, request: web.Request) -> LiveStream:
        stream = self.server.streams.get(request.match_info["stream"])
        if stream is None or stream.ended:
            raise _error(404, f"no live stream {request.match_info['stream']!r}")
        return stream

    def _authorize(self, request: web.Request, stream: LiveStream) -> None:
        """401 without a bearer token, 403 with one that is not this stream's."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            self.metrics.whep_refused.labels("unauthorized").inc()
            raise _error(401, "Authorization: Bearer <view token> is needed", bearer=True)
        if role_of(stream, token.strip()) is None:
            self.metrics.whep_refused.labels("forbidden").inc()
            raise _error(403, f"that token does not open stream {stream.id}")

    def _session(self, request: web.Request) -> WhepSession:
        stream = self._stream(request)
        session = self.sessions.get(request.match_info["session"])
        if session is None or session.stream is not stream:
            raise _error(404, "no such WHEP session")
        self._authorize(request, stream)
        return session


async def _body(request: web.Request) -> str:
    if (request.content_length or 0) > MAX_SDP_BYTES:
        raise _error(413, f"the body is over {MAX_SDP_BYTES} bytes")
    try:
        raw = await request.content.read(MAX_SDP_BYTES + 1)
    except ConnectionError:
        raise _error(400, "the body was cut off") from None
    if len(raw) > MAX_SDP_BYTES:
        raise _error(413, f"the body is over {MAX_SDP_BYTES} bytes")
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise _error(400, "the body is not UTF-8 text") from None


def _error(status: int, text: str, bearer: bool = False) -> web.HTTPException:
    """An HTTP error carrying the CORS headers (a browser reads no error without them)."""
    headers = dict(CORS)
    if bearer:
        headers["WWW-Authenticate"] = 'Bearer realm="endless"'
    error = web.HTTPException(text=text + "\n", headers=headers)
    error.set_status(status)
    return error
