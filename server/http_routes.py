"""The one HTTP port (aiohttp): the websocket at /ws, the GET pages LiveServer answers, and
the outputs' routes (WHEP, the OBS page, HLS, recordings).

websockets alone cannot read request bodies (WHEP posts an SDP offer) nor answer other
methods than GET, so aiohttp owns the socket. `/ws` keeps the API the handlers of
server/app.py were written against: `WebSocketAdapter` gives them `send`, `close` and
`async for` over an aiohttp `WebSocketResponse`, raising websockets' `ConnectionClosed`.
Every other GET that no output claims goes to `LiveServer._http` unchanged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from aiohttp import WSMsgType, web
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request

if TYPE_CHECKING:
    from server.app import LiveServer

log = logging.getLogger(__name__)
HOP_HEADERS = {"connection", "content-length", "transfer-encoding"}


class WebSocketAdapter:
    """An aiohttp websocket seen through the part of websockets' ServerConnection API that
    server/app.py uses."""

    def __init__(self, ws: web.WebSocketResponse, request: web.Request):
        self._ws = ws
        self.request = request
        self.remote_address = request.remote

    @property
    def close_code(self) -> int | None:
        return self._ws.close_code

    async def send(self, message: str | bytes) -> None:
        if self._ws.closed:
            raise ConnectionClosed(None, None)
        try:
            if isinstance(message, str):
                await self._ws.send_str(message)
            else:
                await self._ws.send_bytes(message)
        except (ConnectionError, RuntimeError):
            raise ConnectionClosed(None, None) from None

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self._ws.close(code=code, message=reason.encode())

    def abort(self) -> None:
        """Drop the connection at once (a client whose close cannot go out)."""
        transport = self.request.transport
        if transport is not None:
            transport.abort()

    async def __aiter__(self) -> AsyncIterator[str | bytes]:
        async for msg in self._ws:
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                yield msg.data
            else:  # ERROR (a frame over the size limit: aiohttp closes it with 1009)
                break


class HttpFront:
    """Serves one LiveServer over HTTP and websockets on one port."""

    def __init__(self, server: LiveServer):
        self.server = server
        self.app = web.Application(client_max_size=server.config.max_message_bytes)
        self.app.router.add_get("/ws", self._ws)
        server.outputs.add_routes(self.app.router)
        self.app.router.add_route("*", "/{tail:.*}", self._fallback)
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self.handlers: set[asyncio.Task] = set()

    async def start(self, host: str, port: int) -> int:
        """Listen; returns the port bound (`port` 0 picks a free one)."""
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, host, port, reuse_address=True)
        await self._site.start()
        return self._runner.addresses[0][1]

    def stop_accepting(self) -> None:
        server = self._site._server if self._site is not None else None
        if server is not None:
            server.close()

    async def wait_handlers(self, timeout: float) -> bool:
        """Wait for the websocket handlers to end; False if some did not in `timeout`."""
        if not self.handlers:
            return True
        _, pending = await asyncio.wait(list(self.handlers), timeout=timeout)
        return not pending

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        cfg = self.server.config
        ws = web.WebSocketResponse(max_msg_size=cfg.hard_message_bytes, heartbeat=20.0)
        if not ws.can_prepare(request).ok:
            return web.Response(status=426, text="this is a websocket endpoint\n")
        await ws.prepare(request)
        task = asyncio.current_task()
        self.handlers.add(task)
        try:
            await self.server._handle(WebSocketAdapter(ws, request))
        finally:
            self.handlers.discard(task)
            if not ws.closed:
                await ws.close()
        return ws

    async def _fallback(self, request: web.Request) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return web.Response(status=405, text="method not allowed\n", headers={"Allow": "GET"})
        answer = self.server._http(None, Request(request.path_qs, Headers(request.headers)))
        if answer is None:
            return web.Response(status=404, text="not found\n")
        response = web.Response(status=answer.status_code, body=answer.body)
        for name, value in answer.headers.raw_items():
            if name.lower() not in HOP_HEADERS:
                response.headers[name] = value
        return response
