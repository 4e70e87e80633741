"""The attacker suite: every stream-scoped request without a token, with the other role's,
a forged or another stream's token gets its error code, and the stream plays on for its
viewer; listing, API keys, limits, floods, and ICE candidates only on loopback."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import urllib.request

import pytest
from aiortc import RTCPeerConnection
from conftest import timeout

from client.session import LiveSession, ServerError
from model.errors import ConfigError
from server import auth
from server.config import ServerConfig
from server.ice import offered_addresses

A = "a big red circle bouncing over the ocean"
B = "a small blue square moving left in the snow"
CONTROL = ["prompt", "storyboard", "pause", "resume", "stop"]
VIEW = ["watch", "unwatch", "join", "leave", "stats"]


async def offer() -> str:
    """A real receive-only video offer (the server answers it if the token lets it)."""
    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


class Scene:
    """A server; the owner's stream A watched by the owner's viewer; stream B of another
    client; an attacker connection with a viewer of its own on A (so unwatch is tried)."""

    async def setup(self, live_server, session, **config):
        config.setdefault("auth_failure_burst", 100)  # tests of the flood set their own
        self.server = await live_server(grace_seconds=10, **config)
        self.errors: list[dict] = []
        url = self.server.ws_url
        self.owner = await session(url)
        self.a = await self.owner.create(A)
        self.viewer = await self.owner.watch(self.a["stream"], keep_images=False)
        self.other = await session(url)
        self.b = await self.other.create(A, seed=1)
        self.attacker = await session(url)
        mine = await self.attacker.watch(
            self.a["stream"], keep_images=False, token=self.a["view_token"]
        )
        self.attacker_viewer = mine.id
        self.sdp = await offer()
        await self.viewer.wait_frames(6, timeout(15))
        return self

    def request(self, kind: str) -> dict:
        """A well-formed request of `kind` on stream A, without a token."""
        stream = self.a["stream"]
        body = {
            "watch": {"stream": stream, "sdp": self.sdp},
            "unwatch": {"viewer": self.attacker_viewer},
            "prompt": {"stream": stream, "text": B},
            "storyboard": {"stream": stream, "items": [{"at": 0, "prompt": B}]},
        }.get(kind, {"stream": stream})
        return {"type": kind, **body}

    async def refused(self, kind: str, code: str, **token) -> ServerError:
        with pytest.raises(ServerError) as info:
            await self.attacker.request({**self.request(kind), **token})
        assert info.value.code == code, (kind, token, info.value.reply)
        self.errors.append(info.value.reply)
        return info.value

    async def unharmed(self) -> None:
        """Stream A plays on for its viewer, its prompt, pause state and owner unchanged,
        and no reply the attacker got carried a token."""
        live = self.server.streams[self.a["stream"]]
        before = self.viewer.received
        await self.viewer.wait_frames(before + 24, timeout(10))
        assert not live.ended and not live.playout.paused
        assert live.playout.plan.prompt_at(10**6) == A
        assert self.owner.tokens[live.id] == live.control_token
        tokens = [self.a["control_token"], self.a["view_token"]]
        tokens += [self.b["control_token"], self.b["view_token"]]
        for said in self.errors + list(self.attacker.events):
            assert not any(t in str(said) for t in tokens), said


@pytest.fixture
async def scene(live_server, session):
    return await Scene().setup(live_server, session)


@pytest.mark.parametrize("token", [{}, {"token": None}], ids=["absent", "null"])
async def test_every_stream_request_without_a_token_is_unauthorized(scene, token):
    """No token (absent or null): every stream-scoped request gets "unauthorized"."""
    for kind in CONTROL + VIEW:
        err = await scene.refused(kind, "unauthorized", **token)
        assert "no token" in err.message
    await scene.unharmed()


async def test_a_view_token_cannot_control_but_can_watch(scene):
    """A view token: every control request gets "forbidden"; the view requests work."""
    view = scene.a["view_token"]
    for kind in CONTROL:
        err = await scene.refused(kind, "forbidden", token=view)
        assert view not in err.message
    await scene.unharmed()
    s = scene.attacker
    assert (await s.stats(scene.a["stream"], token=view))["stream"] == scene.a["stream"]
    assert (await s.join(scene.a["stream"], token=view))["role"] == "view"
    watched = await s.watch(scene.a["stream"], keep_images=False, token=view)
    await watched.wait_frames(2, timeout(15))
    await s.request({"type": "unwatch", "viewer": watched.id, "token": view})
    assert (await s.leave(scene.a["stream"], token=view))["type"] == "left"


def forgeries(real: str) -> list[object]:
    """Tokens an attacker might try: random ones, near misses of the real one, other types."""
    flipped = real[:-1] + ("A" if real[-1] != "A" else "B")
    return [
        auth.new_token(),
        secrets.token_hex(16),
        flipped,
        real[:-1],
        real + "x",
        real.upper() if real.upper() != real else real.lower(),
        "",
        " " + real,
        "\ud800" + real,  # a lone surrogate, as JSON can carry
        123,
        True,
        [real],
        {"token": real},
    ]


async def test_forged_tokens_are_unauthorized(scene):
    """Random tokens, near misses of the real ones and non-strings: "unauthorized" on
    every stream-scoped request, the attacker's connection stays open under the burst."""
    real = scene.a["control_token"]
    for i, forged in enumerate(forgeries(real)):
        kinds = CONTROL + VIEW
        kind = kinds[i % len(kinds)]  # each forgery on one request, every request covered
        err = await scene.refused(kind, "unauthorized", token=forged)
        assert real not in err.message and "unknown token" in err.message
    await scene.unharmed()


async def test_another_streams_tokens_do_nothing_here(scene):
    """Stream B's control and view tokens on stream A: "unauthorized" for every request."""
    for token in (scene.b["control_token"], scene.b["view_token"]):
        for kind in CONTROL + VIEW:
            await scene.refused(kind, "unauthorized", token=token)
    await scene.unharmed()
    assert scene.other.tokens[scene.b["stream"]] == scene.b["control_token"]


async def test_a_stopped_streams_tokens_are_not_replayable(live_server, session):
    """Once stream C is stopped its control token steers nothing: its id is unknown and
    the token does not open the stream created after it."""
    server = await live_server()
    s = await session(server.ws_url)
    c = await s.create(A)
    await s.stop(c["stream"])
    d = await s.create(A)
    replay = {"token": c["control_token"]}
    for stream, code in ((c["stream"], "unknown_stream"), (d["stream"], "unauthorized")):
        with pytest.raises(ServerError) as info:
            await s.request({"type": "prompt", "stream": stream, "text": B, **replay})
        assert info.value.code == code
    assert server.streams[d["stream"]].playout.plan.prompt_at(10**6) == A


async def test_tokens_are_unguessable_distinct_and_never_logged(live_server, session, caplog):
    """Each stream gets two different 256-bit URL-safe tokens; with every logger at DEBUG,
    creating, steering, refusing, listing and a page request with a share link's token
    never write a token into a log line (websockets' wire dumps included)."""
    caplog.set_level(logging.DEBUG)
    server = await live_server()
    s = await session(server.ws_url)
    made = [await s.create(A, seed=i) for i in range(3)]
    tokens = [m[k] for m in made for k in ("control_token", "view_token")]
    assert len(set(tokens)) == 6
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{43}", t) for t in tokens)
    stream = made[0]["stream"]
    await s.prompt(stream, B)
    for bad in (made[1]["control_token"], made[0]["view_token"]):
        with pytest.raises(ServerError):
            await s.request({"type": "pause", "stream": stream, "token": bad})
    await s.streams()
    await s.request({"token": made[2]["view_token"], "type": "stats", "stream": made[2]["stream"]})
    page = f"{server.url}?stream={stream}&view={made[0]['view_token']}"
    await asyncio.to_thread(lambda: urllib.request.urlopen(page, timeout=5).read())
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert logged and not any(t in logged for t in tokens)


async def test_streams_lists_only_the_streams_whose_token_was_presented(scene, session):
    """`streams`: the owner sees A, the other client B, a stranger nothing, a view-token
    holder A (role view); nothing listed carries a token."""
    a, b = scene.a["stream"], scene.b["stream"]
    assert [(x["stream"], x["role"]) for x in await scene.owner.streams()] == [(a, "control")]
    assert [x["stream"] for x in await scene.other.streams()] == [b]
    stranger = await session(scene.server.ws_url)
    assert await stranger.streams() == []
    with pytest.raises(ServerError):  # a refused token presents nothing
        await stranger.join(a, token=scene.b["view_token"])
    assert await stranger.streams() == []
    await stranger.join(a, token=scene.a["view_token"])
    listed = await stranger.streams()
    assert [(x["stream"], x["role"]) for x in listed] == [(a, "view")]
    assert scene.a["view_token"] not in str(listed)


async def test_the_api_key_guards_create_and_lists_every_stream(live_server, session):
    """With an API key, create without it or with a wrong one is "unauthorized"; with it a
    stream is made; `streams` with the key lists every stream, without it only presented."""
    server = await live_server(api_keys=("right-key",))
    s = await session(server.ws_url)
    assert s.hello["key_required"] is True
    for key in (None, "wrong-key", "right-key ", 42):
        msg = {"type": "create", "prompt": A} | ({} if key is None else {"key": key})
        with pytest.raises(ServerError) as info:
            await s.request(msg)
        assert info.value.code == "unauthorized" and "right-key" not in info.value.message
    assert not server.streams
    alice = await session(server.ws_url)
    alice.key = "right-key"
    a = await alice.create(A)
    bob = LiveSession(server.ws_url, key="right-key")
    await bob.connect(timeout(10))
    try:
        b = await bob.create(A, seed=1)
        listed = {x["stream"]: x["role"] for x in await bob.streams()}
        assert listed == {a["stream"]: None, b["stream"]: "control"}
    finally:
        await bob.close()
    assert [x["stream"] for x in await s.streams()] == []
    with pytest.raises(ServerError) as info:
        await s.request({"type": "streams", "key": "wrong-key"})
    assert info.value.code == "unauthorized"


async def test_streams_per_key_and_per_connection_are_limited(live_server, session):
    """max_streams_per_key: a key (or, without keys, a connection) runs at most that many
    streams; another key or connection still can; a stopped stream frees its place."""
    server = await live_server(api_keys=("k1", "k2"), max_streams_per_key=2, max_streams=8)
    s = await session(server.ws_url)
    s.key = "k1"
    first = await s.create(A)
    await s.create(A, seed=1)
    with pytest.raises(ServerError) as info:
        await s.create(A, seed=2)
    assert info.value.code == "too_many_streams" and "API key" in info.value.message
    s.key = "k2"
    await s.create(A, seed=3)
    s.key = "k1"
    await s.stop(first["stream"])
    await s.create(A, seed=4)

    open_server = await live_server(max_streams_per_key=1)
    c1, c2 = await session(open_server.ws_url), await session(open_server.ws_url)
    await c1.create(A)
    with pytest.raises(ServerError) as info:
        await c1.create(A, seed=1)
    assert info.value.code == "too_many_streams" and "connection" in info.value.message
    await c2.create(A, seed=1)


async def test_view_tokens_cannot_take_the_viewer_slots_kept_for_control(live_server, session):
    """With 3 viewer slots and 1 kept for control, view-token holders get 2 and then
    "too_many_viewers"; the control token still gets the last one."""
    server = await live_server(
        max_viewers_per_stream=3, control_viewer_slots=1, max_viewers_per_connection=8
    )
    owner = await session(server.ws_url)
    a = await owner.create(A)
    fans = await session(server.ws_url)
    for _ in range(2):
        await fans.watch(a["stream"], keep_images=False, token=a["view_token"])
    with pytest.raises(ServerError) as info:
        await fans.watch(a["stream"], keep_images=False, token=a["view_token"])
    assert info.value.code == "too_many_viewers" and "kept for control" in info.value.message
    viewer = await owner.watch(a["stream"], keep_images=False)
    await viewer.wait_frames(2, timeout(15))


async def test_a_token_guessing_flood_closes_the_guessers_connection_only(live_server, session):
    """Past auth_failure_burst unauthorized requests the guesser's connection is closed
    (1008) after its last error; the stream and its owner's viewer carry on."""
    scene = await Scene().setup(live_server, session, auth_failure_burst=10)
    s = scene.attacker
    replies = await asyncio.gather(
        *(
            s.request({**scene.request("pause"), "token": auth.new_token()}, timeout(10))
            for _ in range(30)
        ),
        return_exceptions=True,
    )
    refused = [r for r in replies if isinstance(r, ServerError) and r.code == "unauthorized"]
    assert len(refused) == 11  # the burst, then the one that closes it
    assert all(isinstance(r, (ServerError, ConnectionError)) for r in replies)
    await asyncio.wait_for(s.ws.wait_closed(), timeout(5))
    assert s.ws.close_code == 1008
    await scene.unharmed()
    assert (await scene.owner.request({"type": "ping"}))["type"] == "pong"


async def test_an_answer_offers_ice_candidates_on_loopback_only(scene):
    """A loopback server's answer SDP has host candidates, every one on 127.0.0.1 (aioice
    alone lists every other interface and never 127.0.0.1)."""
    reply = await scene.owner.request({**scene.request("watch"), "token": scene.a["control_token"]})
    candidates = re.findall(r"^a=candidate:\S+ \d+ \S+ \d+ (\S+) \d+ typ", reply["sdp"], re.M)
    assert candidates and set(candidates) == {"127.0.0.1"}, candidates
    connection = re.search(r"^c=IN IP4 (\S+)", reply["sdp"], re.M).group(1)
    assert connection == "127.0.0.1"
    assert scene.server.ice_addresses == ("127.0.0.1",)


async def test_ice_addresses_follow_the_host_unless_given():
    """--ice-address wins; else a loopback host offers loopback, an IP itself, a wildcard
    every address aioice finds."""
    assert await offered_addresses("127.0.0.1", None) == ("127.0.0.1",)
    assert await offered_addresses("localhost", None) == ("127.0.0.1",)
    assert await offered_addresses("::1", None) == ("::1",)
    assert await offered_addresses("192.0.2.7", None) == ("192.0.2.7",)
    assert await offered_addresses("0.0.0.0", None) is None
    assert await offered_addresses("0.0.0.0", ("198.51.100.4",)) == ("198.51.100.4",)
    with pytest.raises(ConfigError, match="not an IP address"):
        ServerConfig(ice_addresses=("eth0",))


def test_binding_beyond_loopback_needs_a_key_or_insecure():
    """A non-loopback host without an API key is refused with the way out in the message;
    a key or --insecure lets it be; loopback never needs one."""
    with pytest.raises(ConfigError, match="--api-key KEY .*--insecure"):
        ServerConfig(host="0.0.0.0")
    with pytest.raises(ConfigError):
        ServerConfig(host="192.0.2.2")
    ServerConfig(host="0.0.0.0", api_keys=("k",))
    ServerConfig(host="0.0.0.0", insecure=True)
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        ServerConfig(host=host)
    assert "secret-key" not in repr(ServerConfig(api_keys=("secret-key",)))
