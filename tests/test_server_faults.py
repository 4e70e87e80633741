"""Bad input and faults: each gets an error (or a clean close) to its sender only; the
connection, the stream and every other client carry on."""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets
from conftest import timeout

from client.session import ServerError

A = "a big red circle bouncing over the ocean"


async def started(live_server, session, **config):
    server = await live_server(**config)
    s = await session(server.ws_url)
    stream = (await s.create(A))["stream"]
    return server, s, stream


async def still_alive(server, s, stream) -> None:
    """The connection answers and the stream's play head moves."""
    before = (await s.stats(stream))["tick"]
    assert (await s.request({"type": "ping"}))["type"] == "pong"
    async with asyncio.timeout(timeout(5)):
        while (await s.stats(stream))["tick"] <= before:
            await asyncio.sleep(0.05)
    assert stream in server.streams


async def error_event(s, start: int) -> dict:
    return await s.wait_event(lambda e: e["type"] == "error", timeout(5), start=start)


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("{this is not json", "bad_json"),
        ('"just a string"', "bad_message"),
        ('{"type": "launch_rockets", "seq": 7}', "unknown_type"),
        ('{"type": "prompt", "seq": 8}', "bad_message"),
        ('{"type": "prompt", "stream": 5, "text": "a red ring", "seq": 9}', "bad_message"),
        ('{"type": "join", "stream": "nope", "seq": 10}', "unknown_stream"),
        ('{"type": "watch", "stream": "nope", "sdp": "v=0", "seq": 11}', "unknown_stream"),
        ('{"type": "create", "seed": -1, "seq": 12}', "bad_message"),
        ('{"type": "unwatch", "viewer": "x", "seq": 13}', "unknown_viewer"),
        ("[" * 50_000, "bad_json"),  # nested past what the parser will read
        ('{"type": "ping", "pad": NaN}', "bad_json"),  # not JSON, though Python reads it
    ],
)
async def test_malformed_and_unknown_messages_get_coded_errors(live_server, session, raw, code):
    """Malformed JSON, unknown types and bad fields get an error; the connection survives."""
    server, s, stream = await started(live_server, session)
    start = len(s.events)
    await s.send_raw(raw)
    err = await error_event(s, start)
    assert err["code"] == code and err["message"]
    if '"seq"' in raw:
        assert err["seq"] == json.loads(raw)["seq"]
    await still_alive(server, s, stream)


async def test_oversized_messages_get_too_big_or_a_clean_1009_close(live_server, session):
    """Over the soft limit: a "too_big" error; over the hard limit: close 1009, others unhurt."""
    server, s, stream = await started(
        live_server, session, max_message_bytes=1024, hard_message_bytes=8192
    )
    start = len(s.events)
    await s.send({"type": "ping", "pad": "x" * 2000, "seq": 1})
    assert (await error_event(s, start))["code"] == "too_big"
    await still_alive(server, s, stream)
    other = await session(server.ws_url)
    await other.send({"type": "ping", "pad": "x" * 10000})
    await asyncio.wait_for(other.ws.wait_closed(), timeout(5))
    assert other.ws.close_code == 1009
    await still_alive(server, s, stream)


async def test_bad_sdp_is_rejected_and_the_stream_keeps_playing(live_server, session):
    """An unparseable or video-less offer gets "bad_sdp"; nothing else changes."""
    server, s, stream = await started(live_server, session)
    for sdp in ("hello", "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"):
        with pytest.raises(ServerError) as info:
            await s.request(
                {"type": "watch", "stream": stream, "token": s.tokens[stream], "sdp": sdp}
            )
        assert info.value.code == "bad_sdp"
    assert not server.streams[stream].viewers
    await still_alive(server, s, stream)


async def test_a_message_flood_is_refused_with_errors_that_echo_seq(live_server, session):
    """Past the message burst, requests get "rate_limited" errors that carry their seq, so
    a client waiting on each reply hears back instead of hanging."""
    server, s, stream = await started(live_server, session, message_rate=1.0, message_burst=3)
    replies = await asyncio.wait_for(
        asyncio.gather(
            *(s.request({"type": "ping"}, timeout=timeout(10)) for _ in range(10)),
            return_exceptions=True,
        ),
        timeout(10),
    )
    limited = [r for r in replies if isinstance(r, ServerError) and r.code == "rate_limited"]
    pongs = [r for r in replies if isinstance(r, dict) and r["type"] == "pong"]
    assert len(pongs) + len(limited) == 10 and len(limited) >= 5, replies
    assert stream in server.streams


async def test_a_prompt_flood_is_rate_limited_per_connection(live_server, session):
    """Prompts past the per-connection burst get "rate_limited"; another client is unaffected."""
    server, s, stream = await started(live_server, session, prompt_rate=0.001, prompt_burst=4)
    replies = await asyncio.gather(
        *(s.prompt(stream, f"a {c} circle") for c in ["red", "blue", "green", "cyan"] * 5),
        return_exceptions=True,
    )
    limited = [r for r in replies if isinstance(r, ServerError) and r.code == "rate_limited"]
    applied = [r for r in replies if isinstance(r, dict)]
    assert len(applied) == 4 and len(limited) == 16
    other = await session(server.ws_url)
    applied = await other.prompt(stream, "a yellow ring", token=s.tokens[stream])
    assert applied["type"] == "prompt_applied"
    await still_alive(server, s, stream)


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("", "bad_prompt"),
        ("   ...  ", "bad_prompt"),
        ("a red " + "circle " * 200, "bad_prompt"),
        ("a red blue circle", "bad_prompt"),
        ("a purple elephant circle", "unknown_words"),
    ],
)
async def test_bad_prompts_are_rejected_with_a_reason(live_server, session, text, code):
    """Empty, huge, contradictory prompts and unknown words are refused; the stream plays on."""
    server, s, stream = await started(live_server, session)
    with pytest.raises(ServerError) as info:
        await s.prompt(stream, text)
    assert info.value.code == code
    if code == "unknown_words":
        assert info.value.reply["words"] == ["purple", "elephant"]
    assert server.streams[stream].playout.plan.prompt_at(10**6) == A
    await still_alive(server, s, stream)


async def test_unknown_words_in_create_and_storyboard_are_listed(live_server, session):
    """Creating or scheduling with unknown words lists them; no stream or plan changes."""
    server, s, stream = await started(live_server, session)
    with pytest.raises(ServerError) as info:
        await s.create("a glittering unicorn")
    assert info.value.code == "unknown_words" and info.value.reply["words"] == [
        "glittering",
        "unicorn",
    ]
    assert list(server.streams) == [stream]
    with pytest.raises(ServerError) as info:
        await s.storyboard(
            stream, [{"at": 1, "prompt": "a red ring"}, {"at": 2, "prompt": "a red dragon"}]
        )
    assert info.value.code == "unknown_words" and "item 1" in info.value.message
    with pytest.raises(ServerError) as info:
        await s.storyboard(stream, [{"at": "later", "prompt": "a red ring"}])
    assert info.value.code == "bad_storyboard"
    assert server.streams[stream].playout.plan.as_tuple() == ((0, A),)
    await still_alive(server, s, stream)


async def test_a_client_that_vanishes_mid_stream_is_cleaned_up(live_server, session):
    """A controller+viewer whose socket dies is dropped; another controller keeps the stream."""
    server, s, stream = await started(live_server, session)
    ghost = await session(server.ws_url)
    viewer = await ghost.watch(stream, token=s.tokens[stream])
    await viewer.wait_frames(6, timeout(15))
    ghost.ws.transport.abort()
    live = server.streams[stream]
    async with asyncio.timeout(timeout(5)):
        while live.viewers or len(server.connections) != 1:
            await asyncio.sleep(0.05)
    await still_alive(server, s, stream)


async def test_a_watch_still_being_answered_when_the_stream_ends_is_refused(
    live_server, session, monkeypatch
):
    """Answering an offer takes awaits; if the stream ends meanwhile (another client's
    "stop"), the watch gets "unknown_stream" and leaves no viewer or peer behind."""
    from aiortc import RTCPeerConnection

    server, s, stream = await started(live_server, session)
    live = server.streams[stream]
    answer_offer = RTCPeerConnection.setRemoteDescription

    answering = asyncio.Event()

    async def answer_after_the_end(pc, description):
        if description.type == "offer":  # the server's side: hold it until the stop
            answering.set()
            while not live.ended:
                await asyncio.sleep(0.01)
        return await answer_offer(pc, description)

    monkeypatch.setattr(RTCPeerConnection, "setRemoteDescription", answer_after_the_end)
    watcher = await session(server.ws_url)
    watch = asyncio.ensure_future(watcher.watch(stream, token=s.tokens[stream]))
    await asyncio.wait_for(answering.wait(), timeout(10))  # the server is mid-answer
    await s.stop(stream)
    with pytest.raises(ServerError) as info:
        await asyncio.wait_for(watch, timeout(10))
    assert info.value.code == "unknown_stream"
    assert not live.viewers and all(not c.viewers for c in server.connections)
    assert server.metrics.registry.get_sample_value("endless_viewers") == 0


async def test_one_connection_cannot_take_every_viewer_slot(live_server, session):
    """Past max_viewers_per_connection a connection's watch gets "too_many_viewers", while
    another connection can still watch the same stream."""
    server, s, stream = await started(
        live_server, session, max_viewers_per_connection=2, max_viewers_per_stream=4
    )
    for _ in range(2):
        await s.watch(stream, keep_images=False)
    with pytest.raises(ServerError) as info:
        await s.watch(stream, keep_images=False)
    assert info.value.code == "too_many_viewers" and "limit is 2" in info.value.message
    other = await session(server.ws_url)
    viewer = await other.watch(stream, keep_images=False, token=s.tokens[stream])
    await viewer.wait_frames(2, timeout(15))
    assert len(server.streams[stream].viewers) == 3


async def test_stop_ends_the_stream_for_everyone(live_server, session):
    """ "stop" ends a stream: every attached client gets stream_ended; its id is then unknown."""
    server, s, stream = await started(live_server, session)
    other = await session(server.ws_url)
    await other.join(stream, s.tokens[stream])
    start = len(other.events)
    assert (await s.stop(stream))["type"] == "stopped"
    ended = await other.wait_event(lambda e: e["type"] == "stream_ended", timeout(5), start)
    assert ended["reason"] == "stopped"
    with pytest.raises(ServerError) as info:
        await other.prompt(stream, "a red ring")
    assert info.value.code == "unknown_stream"


async def test_stream_limit_is_enforced(live_server, session):
    """Creating more streams than max_streams gets "too_many_streams"."""
    server, s, stream = await started(live_server, session, max_streams=1)
    with pytest.raises(ServerError) as info:
        await s.create(A)
    assert info.value.code == "too_many_streams"


async def test_plain_websocket_client_gets_hello_and_errors(live_server):
    """A bare websocket client is greeted with hello (vocabulary included)."""
    server = await live_server()
    async with websockets.connect(server.ws_url) as ws:
        hello = json.loads(await ws.recv())
        assert hello["type"] == "hello" and "circle" in hello["vocabulary"]["shape"]
        await ws.send(b"\xff\xfe binary junk")
        err = json.loads(await ws.recv())
        assert err["type"] == "error" and err["code"] == "bad_json"
