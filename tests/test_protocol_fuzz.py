"""Property-based fuzzing of the protocol (hypothesis): random and mutated messages get a
reply or a coded error, never a crash or silence, and another stream keeps its frame rate.

The sans-I/O parts (decoding, type and field checks, storyboards, tokens) take most of the
examples; a real server takes a few hundred over one websocket while an aiortc viewer
counts the frames of a stream the fuzzing connection may watch but not control.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
import uvloop
from aiortc import RTCPeerConnection
from conftest import timeout
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import connect

from model.errors import EndlessError, ProtocolError
from server import auth, protocol

CODES = {
    "bad_json",
    "bad_message",
    "unknown_type",
    "too_big",
    "rate_limited",
    "unknown_stream",
    "unknown_viewer",
    "bad_sdp",
    "bad_prompt",
    "unknown_words",
    "bad_storyboard",
    "too_many_streams",
    "too_many_viewers",
    "busy",
    "unauthorized",
    "forbidden",
}  # fmt: skip; every documented code but "internal" (a server bug)
EVENTS = {"timeline", "viewer_started", "viewer_closed", "prompt_changed", "prompt_shown"}
EVENTS |= {"stream_ended", "stats"}
PROMPTS = [
    "a big red circle bouncing over the ocean",
    "a small blue square moving left in the snow",
    "a purple elephant",
    "a red blue circle",
    "",
    "a red " + "circle " * 80,  # over max_prompt_chars
]
MAX_BYTES = 4096
SANS_IO = settings(max_examples=1000, deadline=None, database=None)

leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=6,
)
plain_chars = st.characters(blacklist_categories=("Cs",))  # a websocket text frame is UTF-8


def fields(stream_ids: list[str], tokens: list[str], sdps: list[str]):
    """Each request field: a value that makes sense, a near miss, or any JSON value."""
    prompt = st.sampled_from(PROMPTS) | st.text(plain_chars, max_size=30)
    item = st.fixed_dictionaries({"at": st.floats(-10, 1e5) | json_values, "prompt": prompt})
    return {
        "stream": st.sampled_from(stream_ids + ["deadbeef", ""]) | json_values,
        "token": st.sampled_from(tokens) | st.text(max_size=44) | json_values,
        "text": prompt | json_values,
        "prompt": prompt | json_values,
        "items": st.lists(item | json_values, max_size=6) | json_values,
        "sdp": st.sampled_from(sdps) | st.text(plain_chars, max_size=30) | json_values,
        "viewer": st.text(max_size=10) | json_values,
        "codec": st.sampled_from(["vp8", "h264", "av1"]) | json_values,
        "seed": st.integers(-5, 2**64) | json_values,
        "key": st.text(max_size=20) | json_values,
    }


def requests(stream_ids=("s1",), tokens=("t",), sdps=("v=0",)):
    """Requests of any shape, and (half of them) of a known type on a known stream with a
    known token, so that the handlers past the token check are reached too."""
    kinds = st.sampled_from(protocol.REQUEST_TYPES) | st.text(max_size=12) | json_values
    each = fields(list(stream_ids), list(tokens), list(sdps))
    shaped = st.fixed_dictionaries(
        {
            "type": st.sampled_from(protocol.REQUEST_TYPES),
            "stream": st.sampled_from(stream_ids),
            "token": st.sampled_from(tokens),
        },
        optional={k: v for k, v in each.items() if k not in ("stream", "token")},
    )
    body = st.fixed_dictionaries({"type": kinds}, optional=each) | shaped
    extra = st.dictionaries(st.text(max_size=6), json_values, max_size=2)
    return st.builds(lambda b, e: {**e, **b}, body, extra)


@st.composite
def wire(draw, messages):
    """One websocket frame: a request as JSON, or mutated (cut, spliced, bytes, junk,
    oversized, deeply nested)."""
    msg = draw(messages)
    msg["seq"] = draw(st.integers(0, 2**31))
    text = json.dumps(msg)
    how = draw(st.sampled_from(["json"] * 4 + ["cut", "splice", "bytes", "junk", "big", "deep"]))
    if how == "cut":
        return text[: draw(st.integers(0, max(0, len(text) - 1)))]
    if how == "splice":
        at = draw(st.integers(0, len(text)))
        return text[:at] + draw(st.text(plain_chars, min_size=1, max_size=8)) + text[at:]
    if how == "bytes":
        return text.encode() + draw(st.binary(max_size=8))
    if how == "junk":
        return draw(st.binary(max_size=64) | st.text(plain_chars, max_size=64))
    if how == "big":
        return json.dumps({**msg, "pad": "x" * MAX_BYTES})
    if how == "deep":
        return "[" * draw(st.integers(1, 5000)) + text
    return text


def coded(err: Exception) -> None:
    assert isinstance(err, EndlessError) and err.code in CODES, repr(err)
    assert isinstance(err.message, str) and err.message


# -- the sans-I/O parts ------------------------------------------------------------------------
@SANS_IO
@given(wire(requests()))
def test_any_frame_decodes_to_a_request_or_a_coded_error(raw):
    """decode + check_type: any frame is an object with a known type, or a coded error."""
    try:
        msg = protocol.decode(raw, MAX_BYTES)
        assert isinstance(msg, dict)
        assert protocol.check_type(msg) in protocol.REQUEST_TYPES
    except ProtocolError as err:
        coded(err)


class Tokens:
    id = "s1"
    control_token = auth.new_token()
    view_token = auth.new_token()


@settings(SANS_IO, max_examples=800)
@given(requests(["s1"], [Tokens.control_token, Tokens.view_token]))
def test_any_request_body_passes_its_checks_or_gets_a_coded_error(msg):
    """The checks a request goes through (its token, stream field, storyboard items) take
    any JSON: a value of the right kind, or a coded error; a role only for the two tokens."""
    kind = msg["type"]
    token = msg.get("token")
    if isinstance(kind, str) and kind in auth.NEEDS:
        try:
            role = auth.require(Tokens, token, auth.NEEDS[kind])
            assert token in (Tokens.control_token, Tokens.view_token)
            assert role == ("control" if token == Tokens.control_token else "view")
        except ProtocolError as err:
            coded(err)
            assert token != Tokens.control_token
            assert err.code == "unauthorized" or token == Tokens.view_token
            assert Tokens.control_token not in err.message
            assert Tokens.view_token not in err.message
    for check in (
        lambda: protocol.field(msg, "stream", str),
        lambda: protocol.field(msg, "seed", int, 0),
        lambda: protocol.storyboard_items(msg),
    ):
        try:
            check()
        except EndlessError as err:
            coded(err)


# -- a real server ---------------------------------------------------------------------------------
class ServerThread:
    """A LiveServer on its own event loop thread, for a synchronous hypothesis test; the
    watched stream W belongs to an owner session (with an aiortc viewer) on that loop."""

    def __init__(self, model, **config):
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.call(self._start(model, config))

    def call(self, coro, seconds: float = 60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout(seconds))

    async def _start(self, model, config):
        from client.session import LiveSession
        from server.app import LiveServer
        from server.config import ServerConfig

        self.server = await LiveServer(ServerConfig(**config), model).start()
        self.owner = await LiveSession(self.server.ws_url).connect(timeout(10))
        self.w = await self.owner.create(PROMPTS[0])
        self.viewer = await self.owner.watch(self.w["stream"], keep_images=False)
        await self.viewer.wait_frames(12, timeout(20))
        pc = RTCPeerConnection()
        pc.addTransceiver("video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        self.offer = pc.localDescription.sdp
        await pc.close()

    def close(self) -> None:
        async def stop():
            await self.owner.close()
            await self.server.close()

        self.call(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout(10))


@pytest.fixture(scope="module")
def fuzzed(tiny_model):
    srv = ServerThread(
        tiny_model,
        max_message_bytes=MAX_BYTES,
        message_rate=1e6,
        message_burst=10**6,
        auth_failure_burst=10**6,
        max_streams=2,
        max_streams_per_key=1,
        connect_timeout=3.0,
        grace_seconds=10,
    )
    yield srv
    srv.close()


def answered(ws, seq: str, first: bool = False) -> list[dict]:
    """Everything the server sent up to the message with `seq` (the sentinel pong; with
    `first`, the reply itself, returned alone)."""
    got = []
    while True:
        msg = json.loads(ws.recv(timeout=timeout(30)))
        if msg.get("seq") == seq:
            return [msg] if first else got
        got.append(msg)


def expected_seq(raw: str | bytes) -> object:
    """The seq the reply echoes: a message's own, when it reads as JSON (a message over
    MAX_BYTES too: it is read, as a create with an image may be bigger, and its too_big
    echoes the seq); None for one that does not read."""
    try:
        return protocol.seq_of(json.loads(raw))
    except (ValueError, RecursionError):
        return None


# aiortc and aioice draw from `random` on the server's thread while hypothesis generates
@pytest.mark.filterwarnings("ignore:Do not use the `random` module")
def test_a_real_server_answers_every_fuzzed_message_and_the_other_stream_keeps_up(fuzzed):
    """Hundreds of random and mutated frames on one websocket (with a stream of its own, a
    view token of another and a real offer in the mix): each gets its reply or a coded
    error before the next, never "internal", never a token in an error; meanwhile the
    other stream's viewer receives frames at the stream's rate."""
    srv, w = fuzzed, fuzzed.w
    with connect(srv.server.ws_url, max_size=2**22) as ws:
        assert json.loads(ws.recv(timeout=timeout(10)))["type"] == "hello"
        ws.send(json.dumps({"type": "create", "prompt": PROMPTS[1], "seq": "f"}))
        (f,) = answered(ws, "f", first=True)
        assert f["type"] == "created"
        secret = {f["control_token"], f["view_token"], w["control_token"], w["view_token"]}
        ids = [f["stream"], w["stream"]]
        tokens = [f["control_token"], f["view_token"], w["view_token"], auth.new_token()]
        count = {"n": 0}

        @settings(
            max_examples=300,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(wire(requests(ids, tokens, [srv.offer, "v=0"])))
        def one(raw):
            count["n"] += 1
            sentinel = f"sentinel-{count['n']}"
            ws.send(raw)
            ws.send(json.dumps({"type": "ping", "seq": sentinel}))
            got = answered(ws, sentinel)
            seq = expected_seq(raw)
            if seq is not None:
                replies = [m for m in got if m.get("seq") == seq]
            else:
                replies = [m for m in got if "seq" not in m and m.get("type") not in EVENTS]
                replies = replies or [m for m in got if m.get("type") == "stats"]
            assert replies, (raw, got)
            for m in got:
                if m.get("type") == "error":
                    assert m.get("code") in CODES and m.get("message"), m
                    assert not any(t in json.dumps(m) for t in secret), m

        t0, n0 = time.monotonic(), srv.viewer.received
        one()
        elapsed, received = time.monotonic() - t0, srv.viewer.received - n0
    assert count["n"] >= 300
    live = srv.server.streams.get(w["stream"])
    assert live is not None and not live.ended and not live.playout.paused
    assert live.playout.plan.prompt_at(10**6) == PROMPTS[0]
    assert received >= 0.75 * 24 * elapsed, (received, elapsed)
