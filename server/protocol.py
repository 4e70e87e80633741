"""The websocket protocol, sans-I/O: parsing and checking requests, building replies.

Every request is a JSON object with a "type"; an optional "seq" (any JSON number or
string) is echoed in its reply and in any error it causes. docs/protocol.md is the spec.
Errors raised here are `ProtocolError`s whose `.code` is the protocol error code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from model.errors import EndlessError, ProtocolError, StoryboardError

PROTOCOL_VERSION = 1
REQUEST_TYPES = (
    "hello",
    "create",
    "watch",
    "unwatch",
    "join",
    "leave",
    "prompt",
    "storyboard",
    "pause",
    "resume",
    "stop",
    "streams",
    "stats",
    "ping",
    "record",
    "push",
)
MAX_STORYBOARD_ITEMS = 256
MAX_STORYBOARD_SECONDS = 24 * 3600.0


def request_error(code: str, message: str, value: object = None) -> ProtocolError:
    """A ProtocolError carrying a protocol error code (bad_json, unknown_type, ...)."""
    return ProtocolError(code, message, value)


def decode(raw: str | bytes, max_bytes: int, read_bytes: int = 0) -> dict[str, Any]:
    """Decode one websocket message into a JSON object (raises with a code).

    A message over `max_bytes` is too_big. One up to `read_bytes` is read first, so that a
    `create` with an image may pass (`check_size` says, and a refusal can echo its seq);
    if it is not a JSON object it is too_big all the same."""
    size = len(raw.encode() if isinstance(raw, str) else raw)
    if size <= max_bytes:
        return _parse(raw)
    too_big = request_error("too_big", f"message of {size} bytes; the limit is {max_bytes}", size)
    if size > read_bytes:
        raise too_big
    try:
        return _parse(raw)
    except ProtocolError:
        raise too_big from None


def _parse(raw: str | bytes) -> dict[str, Any]:
    try:
        msg = json.loads(raw, parse_constant=_not_json)
    except (ValueError, UnicodeDecodeError) as exc:
        raise request_error("bad_json", f"not JSON: {exc}") from None
    except RecursionError:
        raise request_error("bad_json", "not JSON we read: nested too deeply") from None
    if not isinstance(msg, dict):
        raise request_error("bad_message", "a message must be a JSON object")
    return msg


def check_size(msg: dict[str, Any], raw: str | bytes, max_bytes: int) -> None:
    """Only a `create` carrying an "image" may be over `max_bytes` (up to the connection's
    hard limit; its image has a limit of its own); any other message that big is too_big."""
    size = len(raw.encode() if isinstance(raw, str) else raw)
    if size > max_bytes and not (msg.get("type") == "create" and msg.get("image") is not None):
        raise request_error("too_big", f"message of {size} bytes; the limit is {max_bytes}", size)


def _not_json(name: str) -> None:
    """NaN and Infinity: Python's json reads them, but JSON (and browsers) do not."""
    raise ValueError(f"{name} is not a JSON value")


def check_type(msg: dict[str, Any]) -> str:
    """The request's type, if it is one this server knows (raises with a code)."""
    kind = msg.get("type")
    if not isinstance(kind, str):
        raise request_error("bad_message", 'a message needs a string "type"')
    if kind not in REQUEST_TYPES:
        raise request_error(
            "unknown_type",
            f"unknown message type {kind!r}; known: {', '.join(REQUEST_TYPES)}",
            kind,
        )
    return kind


def seq_of(msg: object) -> object:
    seq = msg.get("seq") if isinstance(msg, dict) else None
    return seq if isinstance(seq, (int, float, str)) and not isinstance(seq, bool) else None


def field(msg: dict, name: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    """A field of the request, type-checked; missing and required raises bad_message."""
    if name not in msg or msg[name] is None:
        if default is ...:
            raise request_error("bad_message", f"{msg['type']!r} needs a {name!r} field")
        return default
    value = msg[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise request_error("bad_message", f"{name!r} must be {names}", value)
    return value


def storyboard_items(msg: dict) -> list[tuple[float, str]]:
    """[{"at": seconds, "prompt": text}, ...] -> [(seconds, text)] (raises bad_storyboard)."""
    items = msg.get("items")
    if not isinstance(items, list) or not items:
        raise StoryboardError('a storyboard needs a non-empty "items" list', items)
    if len(items) > MAX_STORYBOARD_ITEMS:
        raise StoryboardError(f"at most {MAX_STORYBOARD_ITEMS} storyboard items", len(items))
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise StoryboardError(f"item {i} must be an object with 'at' and 'prompt'", item)
        at, text = item.get("at"), item.get("prompt")
        if isinstance(at, bool) or not isinstance(at, (int, float)):
            raise StoryboardError(f"item {i}: 'at' must be a number of seconds", at)
        if not 0 <= at <= MAX_STORYBOARD_SECONDS:
            raise StoryboardError(f"item {i}: 'at' must be in [0, 86400] seconds", at)
        if not isinstance(text, str):
            raise StoryboardError(f"item {i}: 'prompt' must be a string", text)
        out.append((float(at), text))
    return out


def error(err: EndlessError, seq: object = None, **extra: Any) -> dict[str, Any]:
    msg: dict[str, Any] = {"type": "error", "code": err.code, "message": err.message}
    words = getattr(err, "words", None)
    if words is not None:
        msg["words"] = list(words)
    if seq is not None:
        msg["seq"] = seq
    msg.update(extra)
    return msg


@dataclass
class TokenBucket:
    """Rate limit, sans-I/O: `rate` tokens a second, up to `burst`; time passed in."""

    rate: float
    burst: float
    tokens: float = -1.0
    last: float = 0.0

    def take(self, now: float) -> bool:
        if self.tokens < 0:
            self.tokens, self.last = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    def retry_after(self) -> float:
        return max(0.0, (1 - self.tokens) / self.rate)
