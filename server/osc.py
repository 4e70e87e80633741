"""OSC control over UDP (`endless serve --osc-port P`): what TouchDesigner, Resolume or a
lighting desk sends, mapped onto the same stream controls as the websocket requests.

    /endless/<stream>/prompt      text          switch the prompt now
    /endless/<stream>/storyboard  at text ...   set the storyboard (pairs: seconds, prompt)
    /endless/<stream>/cue         i             play storyboard item i now
    /endless/<stream>/pause
    /endless/<stream>/resume
    /endless/prompt               text          the same, on the most recently created stream

OSC listens on loopback by default (`--osc-host 127.0.0.1`): only this machine's senders
reach it. Bound beyond loopback it needs `--osc-key KEY`, and then every message's first
argument is that key (checked in constant time); ServerConfig refuses the one without the
other.

Bad input (a malformed packet, an unknown address or stream, a wrong token, a prompt with
unknown words, a flood past the rate limit) is counted in /metrics, logged at most once a
second, and dropped: OSC has no reply channel, and nothing it sends can stop a stream.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from typing import TYPE_CHECKING, Any

from pythonosc.osc_packet import OscPacket

from model.errors import EndlessError
from server import protocol
from server.protocol import request_error

if TYPE_CHECKING:
    from server.app import LiveServer
    from server.live import LiveStream
    from server.output_metrics import OutputMetrics

log = logging.getLogger(__name__)
MAX_DATAGRAM = 64 * 1024


class OscControl(asyncio.DatagramProtocol):
    def __init__(self, server: LiveServer, metrics: OutputMetrics):
        self.server = server
        self.metrics = metrics
        cfg = server.config
        self.messages = protocol.TokenBucket(cfg.message_rate, cfg.message_burst)
        self.prompts = protocol.TokenBucket(cfg.prompt_rate, cfg.prompt_burst)
        self.transport: asyncio.DatagramTransport | None = None
        self.port: int | None = None
        self.handled = 0
        self.last_error: tuple[str, str] | None = None
        self._logged_at = 0.0
        self._unlogged = 0

    async def start(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=(host, port)
        )
        self.port = self.transport.get_extra_info("sockname")[1]
        return self.port

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # -- datagrams ------------------------------------------------------------------------------
    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            if len(data) > MAX_DATAGRAM:
                raise request_error("too_big", f"an OSC packet of {len(data)} bytes")
            try:
                messages = [timed.message for timed in OscPacket(data).messages]
            except Exception as exc:  # python-osc raises several kinds on garbage
                raise request_error("bad_osc", f"not an OSC packet: {exc}") from None
            for msg in messages:
                if not self.messages.take(time.monotonic()):
                    raise request_error("rate_limited", "too many OSC messages")
                self._handle(msg.address, list(msg.params))
                self.handled += 1
                self.metrics.osc_messages.labels("ok").inc()
        except EndlessError as err:
            self._refuse(err.code, err.message, addr)
        except Exception as exc:
            log.exception("OSC message from %s failed", addr)
            self._refuse("internal", str(exc), addr)

    def _refuse(self, code: str, message: str, addr: Any) -> None:
        self.metrics.osc_messages.labels("error").inc()
        self.last_error = (code, message)
        now = time.monotonic()
        if now - self._logged_at >= 1.0:
            more = f" (+{self._unlogged} more)" if self._unlogged else ""
            log.warning("OSC from %s refused: %s: %s%s", addr, code, message, more)
            self._logged_at, self._unlogged = now, 0
        else:
            self._unlogged += 1

    # -- messages -------------------------------------------------------------------------------
    def _handle(self, address: str, args: list[Any]) -> None:
        parts = address.strip("/").split("/")
        if len(parts) == 2 and parts[:2] == ["endless", "prompt"]:
            if not self.server.streams:
                raise request_error("unknown_stream", "no live stream")
            stream, action = list(self.server.streams.values())[-1], "prompt"
        elif len(parts) == 3 and parts[0] == "endless":
            stream = self.server.streams.get(parts[1])
            if stream is None or stream.ended:
                raise request_error("unknown_stream", f"no live stream {parts[1]!r}", parts[1])
            action = parts[2]
        else:
            raise request_error("unknown_address", f"unknown OSC address {address[:200]!r}")
        handler = getattr(self, "_on_" + action, None)
        if handler is None:
            raise request_error("unknown_address", f"unknown OSC address {address[:200]!r}")
        handler(stream, self._authorized(args))

    def _authorized(self, args: list[Any]) -> list[Any]:
        """The message's arguments after the --osc-key (none to check on loopback)."""
        key = self.server.config.osc_key
        if key is None:
            return args
        given = args[0] if args and isinstance(args[0], str) else ""
        if not hmac.compare_digest(given.encode(), key.encode()):
            raise request_error("unauthorized", "the first argument must be the --osc-key")
        return args[1:]

    def _limit(self) -> None:
        if not self.prompts.take(time.monotonic()):
            raise request_error("rate_limited", "too many OSC prompts")

    def _switch(self, stream: LiveStream, text: object) -> None:
        self._limit()
        text = self.server.check_prompt(text)
        frame = stream.set_prompt(text)
        stream.broadcast(
            {"type": "prompt_changed", "stream": stream.id, "frame": frame, "prompt": text}
        )

    def _on_prompt(self, stream: LiveStream, args: list[Any]) -> None:
        if len(args) != 1:
            raise request_error("bad_message", "prompt takes one string: the text")
        self._switch(stream, args[0])

    def _on_cue(self, stream: LiveStream, args: list[Any]) -> None:
        if len(args) != 1 or not isinstance(args[0], int) or isinstance(args[0], bool):
            raise request_error("bad_message", "cue takes one integer: the storyboard item")
        if not 0 <= args[0] < len(stream.storyboard):
            raise request_error(
                "bad_message",
                f"no storyboard item {args[0]}; the stream has {len(stream.storyboard)}",
                args[0],
            )
        self._switch(stream, stream.storyboard[args[0]][1])

    def _on_storyboard(self, stream: LiveStream, args: list[Any]) -> None:
        if not args or len(args) % 2:
            raise request_error("bad_message", "storyboard takes pairs: seconds, prompt")
        pairs = zip(args[::2], args[1::2], strict=True)
        msg = {"items": [{"at": at, "prompt": text} for at, text in pairs]}
        items = protocol.storyboard_items(msg)
        self._limit()
        for _, text in items:
            self.server.check_prompt(text)
        stream.set_storyboard(items)

    def _on_pause(self, stream: LiveStream, args: list[Any]) -> None:
        stream.pause()
        stream.broadcast(
            {"type": "paused", "stream": stream.id, "frame": stream.playout.next_frame}
        )

    def _on_resume(self, stream: LiveStream, args: list[Any]) -> None:
        stream.resume()
        stream.broadcast(
            {"type": "resumed", "stream": stream.id, "frame": stream.playout.next_frame}
        )
