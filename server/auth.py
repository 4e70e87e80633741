"""Who may do what to a stream: its two tokens and the server's API keys (sans-I/O).

Every stream has a control token (steers it) and a view token (watches it); a request on a
stream carries one of them as "token". `role_of` names the role a token gives, comparing in
constant time; `require` turns a missing or weaker role into the protocol's error. Tokens
and keys never appear in an error message or a log line. `NEEDS` says which role each
stream-scoped request needs (docs/protocol.md, "Roles and tokens").
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from typing import Literal, Protocol

from server.protocol import request_error

Role = Literal["control", "view"]
TOKEN_BYTES = 32  # 256 random bits, 43 URL-safe characters

# the role each stream-scoped request type needs; control includes view
NEEDS: dict[str, Role] = {
    "watch": "view",
    "unwatch": "view",
    "join": "view",
    "leave": "view",
    "stats": "view",
    "prompt": "control",
    "storyboard": "control",
    "pause": "control",
    "resume": "control",
    "stop": "control",
    "record": "control",
    "push": "control",
}


class HasTokens(Protocol):
    control_token: str
    view_token: str


def new_token() -> str:
    """An unguessable token (secrets.token_urlsafe, 256 bits)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def _same(given: bytes, secret: str) -> bool:
    return hmac.compare_digest(given, secret.encode())


def _as_bytes(token: object) -> bytes | None:
    if not isinstance(token, str):
        return None
    return token.encode("utf-8", "surrogatepass")  # JSON can carry lone surrogates


def role_of(stream: HasTokens, token: object) -> Role | None:
    """The role `token` gives on `stream`: "control", "view" or None (constant time: both
    tokens are always compared)."""
    given = _as_bytes(token)
    if given is None:
        return None
    control = _same(given, stream.control_token)
    view = _same(given, stream.view_token)
    return "control" if control else "view" if view else None


def require(stream: HasTokens, token: object, need: Role) -> Role:
    """The role `token` gives on `stream`, if it is at least `need`; else ProtocolError
    `unauthorized` (no or unknown token) or `forbidden` (a view token used to control)."""
    role = role_of(stream, token)
    if role is None:
        what = "no token" if token is None else "an unknown token"
        raise request_error("unauthorized", f"{what} for stream {_id(stream)}")
    if need == "control" and role != "control":
        raise request_error(
            "forbidden", f"a view token cannot control stream {_id(stream)}; a control token can"
        )
    return role


def _id(stream: object) -> str:
    return str(getattr(stream, "id", "?"))


def which_key(keys: tuple[str, ...], given: object) -> int | None:
    """Which of the server's API keys `given` is (its index), or None; every key is
    compared, in constant time."""
    as_bytes = _as_bytes(given)
    if as_bytes is None:
        return None
    found = None
    for i, key in enumerate(keys):
        if _same(as_bytes, key) and found is None:
            found = i
    return found


def is_loopback(host: str) -> bool:
    """Whether binding `host` stays on this machine (127.0.0.0/8, ::1, localhost)."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
