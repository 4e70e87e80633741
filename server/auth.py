"""Stream tokens: a stream's control token steers it, its view token only watches it.

Tokens are compared in constant time; every endpoint checks them through `role_of` or
`require`, never by comparing strings itself.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Literal

from server.protocol import request_error

Role = Literal["control", "view"]


def new_token() -> str:
    """A fresh unguessable token (128 bits, URL-safe)."""
    return secrets.token_urlsafe(16)


def role_of(stream, token: object) -> Role | None:
    """ "control", "view" or None for `token` on `stream` (the control token also views)."""
    if not isinstance(token, str) or not token:
        return None
    given = token.encode()
    control = hmac.compare_digest(given, (stream.control_token or "").encode())
    view = hmac.compare_digest(given, (stream.view_token or "").encode())
    if control:
        return "control"
    return "view" if view else None


def require(stream, token: object, need: Role) -> Role:
    """The token's role if it may do what `need` names; else ProtocolError
    `unauthorized` (no valid token) or `forbidden` (a view token where control is needed)."""
    role = role_of(stream, token)
    if role is None:
        raise request_error("unauthorized", f"a valid token of stream {stream.id} is needed")
    if need == "control" and role != "control":
        raise request_error("forbidden", f"this needs the control token of stream {stream.id}")
    return role
