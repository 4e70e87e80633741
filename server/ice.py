"""Which addresses the server offers ICE candidates on.

aioice gathers a host candidate on every address of every interface (loopback excepted),
so an answer would tell a viewer the machine's internal addresses. The server offers only
the addresses it is configured for: `--ice-address` (repeatable), else the address it
serves on (127.0.0.1 for a loopback server); a wildcard host (0.0.0.0, ::) keeps aioice's
list.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Sequence

from aiortc import RTCPeerConnection

WILDCARDS = ("", "0.0.0.0", "::")


async def offered_addresses(host: str, configured: Sequence[str] | None) -> tuple[str, ...] | None:
    """The addresses to gather host candidates on (None: every one aioice finds)."""
    if configured:
        return tuple(str(ipaddress.ip_address(a)) for a in configured)  # checked by the config
    if host in WILDCARDS:
        return None
    if host.lower() in ("localhost", "localhost."):
        return ("127.0.0.1",)
    try:
        return (str(ipaddress.ip_address(host.strip("[]"))),)
    except ValueError:  # a host name: the addresses it resolves to
        infos = await asyncio.get_running_loop().getaddrinfo(host, None)
        return tuple(dict.fromkeys(info[4][0] for info in infos))


def restrict_gathering(pc: RTCPeerConnection, addresses: Sequence[str] | None) -> None:
    """Make `pc` gather host candidates on `addresses` only; call it after its transceivers
    exist and before setLocalDescription. aioice's Connection takes the addresses as an
    argument of get_component_candidates, which gather_candidates calls with every address
    it found: the override passes ours instead."""
    if addresses is None:
        return
    wanted = list(addresses)
    for transceiver in pc.getTransceivers():
        connection = transceiver.sender.transport.transport.iceGatherer._connection
        gather = getattr(connection, "get_component_candidates", None)
        if gather is None:  # an aioice without it: refuse rather than offer every address
            raise RuntimeError("this aioice cannot restrict its host candidates")

        async def ours(component: int, addresses: list[str], timeout: int = 5, _gather=gather):
            return await _gather(component=component, addresses=wanted, timeout=timeout)

        connection.get_component_candidates = ours
