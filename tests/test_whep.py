"""WHEP over HTTP: status codes, CORS, and an aiortc peer watching through it."""

from __future__ import annotations

import asyncio

import aiohttp
from aiortc import RTCPeerConnection, RTCSessionDescription
from conftest import timeout

PROMPT = "a big red circle bouncing over the ocean"


async def _stream(live_server, session, **config):
    server = await live_server(**config)
    s = await session(server.ws_url)
    created = await s.create(PROMPT)
    return server, s, created


async def _offer() -> tuple[RTCPeerConnection, str]:
    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


async def test_whep_refuses_missing_and_wrong_tokens_unknown_streams_and_bad_sdp(
    live_server, session
):
    """401 without a token, 403 with a wrong one, 404 for an unknown stream, 400 for bad SDP,
    415 for another content type; the stream plays on with no viewer added."""
    server, _, created = await _stream(live_server, session)
    url = f"{server.url}whep/{created['stream']}"
    sdp = {"Content-Type": "application/sdp"}
    view = {**sdp, "Authorization": f"Bearer {created['view_token']}"}
    async with aiohttp.ClientSession() as http:
        async with http.post(url, data="v=0\r\n", headers=sdp) as r:
            assert r.status == 401 and "Bearer" in r.headers["WWW-Authenticate"]
        async with http.post(
            url, data="v=0\r\n", headers={**sdp, "Authorization": "Bearer x"}
        ) as r:
            assert r.status == 403
        async with http.post(f"{server.url}whep/nosuch", data="v=0\r\n", headers=view) as r:
            assert r.status == 404
        async with http.post(url, data="not sdp at all", headers=view) as r:
            assert r.status == 400 and "offer" in await r.text()
        async with http.post(url, data="v=0", headers={**view, "Content-Type": "text/plain"}) as r:
            assert r.status == 415
    (live,) = server.streams.values()
    assert live.viewers == {} and not live.ended
    text = server.metrics.render().decode()
    assert 'endless_whep_refused_total{reason="forbidden"} 1.0' in text
    assert 'endless_whep_refused_total{reason="bad_sdp"} 1.0' in text


async def test_whep_options_answers_cors_preflight(live_server, session):
    """OPTIONS answers 204 with the CORS headers a browser on another origin needs."""
    server, _, created = await _stream(live_server, session)
    async with aiohttp.ClientSession() as http:
        async with http.options(f"{server.url}whep/{created['stream']}") as r:
            assert r.status == 204
            assert r.headers["Access-Control-Allow-Origin"] == "*"
            assert "POST" in r.headers["Access-Control-Allow-Methods"]
            allowed = r.headers["Access-Control-Allow-Headers"]
            assert "Authorization" in allowed and "Content-Type" in allowed
            assert "Location" in r.headers["Access-Control-Expose-Headers"]


async def _whep(http, url: str, token: str):
    """An aiortc WHEP client: (peer, its first track future, Location)."""
    pc, offer = await _offer()
    got = asyncio.get_running_loop().create_future()
    pc.on("track", lambda track: got.set_result(track) if not got.done() else None)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/sdp"}
    async with http.post(url, data=offer, headers=headers) as r:
        assert r.status == 201 and r.content_type == "application/sdp"
        await pc.setRemoteDescription(RTCSessionDescription(await r.text(), "answer"))
        return pc, got, r.headers["Location"]


async def test_whep_viewers_receive_frames_from_the_one_shared_encode_and_delete_ends_one(
    live_server, session
):
    """POST an offer with the view token: 201, a Location and an SDP answer; two WHEP
    viewers decode frames from one encode; DELETE on a Location removes only that viewer."""
    server, s, created = await _stream(live_server, session)
    url = f"{server.url}whep/{created['stream']}"
    auth = {"Authorization": f"Bearer {created['view_token']}"}
    async with aiohttp.ClientSession() as http:
        a, got_a, location = await _whep(http, url, created["view_token"])
        b, got_b, _ = await _whep(http, url, created["control_token"])
        assert location.startswith(f"/whep/{created['stream']}/")
        (live,) = server.streams.values()
        for got in (got_a, got_b):
            track = await asyncio.wait_for(got, timeout(10))
            frame = await asyncio.wait_for(track.recv(), timeout(15))
            assert (frame.width, frame.height) == (created["width"], created["height"])
        assert len(live.viewers) == 2 and len(live.encoders) == 1
        (enc,) = live.encoders.values()
        assert enc.encodes <= live.playout.tick + 1  # one encode per shown tick, not two
        async with http.delete(server.url.rstrip("/") + location, headers=auth) as r:
            assert r.status == 200
        assert len(live.viewers) == 1
        async with http.delete(server.url.rstrip("/") + location, headers=auth) as r:
            assert r.status == 404
    await a.close()
    await b.close()
    text = server.metrics.render().decode()
    assert "endless_whep_sessions_total 2.0" in text and "endless_whep_active 1.0" in text


async def test_a_whep_viewer_alone_keeps_its_stream_and_its_vanishing_ends_nothing_else(
    live_server, session
):
    """A WHEP viewer counts as a viewer: the stream outlives its creator's websocket; when
    the WHEP peer vanishes without DELETE, its session goes and the stream is released."""
    server, s, created = await _stream(live_server, session, grace_seconds=0.5)
    pc, offer = await _offer()
    async with aiohttp.ClientSession() as http:
        headers = {
            "Authorization": f"Bearer {created['view_token']}",
            "Content-Type": "application/sdp",
        }
        async with http.post(
            f"{server.url}whep/{created['stream']}", data=offer, headers=headers
        ) as r:
            await pc.setRemoteDescription(RTCSessionDescription(await r.text(), "answer"))
    await s.close()
    await asyncio.sleep(1.0)
    (live,) = server.streams.values()
    assert len(live.viewers) == 1 and len(server.outputs.whep.sessions) == 1
    await pc.close()  # gone without a DELETE: ICE consent fails on the server side
    async with asyncio.timeout(timeout(40)):
        while server.streams:
            await asyncio.sleep(0.2)
    assert server.outputs.whep.sessions == {}


async def test_whep_patch_takes_trickled_candidates_and_refuses_bad_ones(live_server, session):
    """PATCH with a trickle-ice-sdpfrag adds its candidates (204); a malformed candidate
    is 400, another content type 415, an unknown session 404."""
    server, _, created = await _stream(live_server, session)
    url = f"{server.url}whep/{created['stream']}"
    auth = {"Authorization": f"Bearer {created['view_token']}"}
    frag = {**auth, "Content-Type": "application/trickle-ice-sdpfrag"}
    good = "a=mid:0\r\na=candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host\r\n"
    async with aiohttp.ClientSession() as http:
        pc, _, location = await _whep(http, url, created["view_token"])
        resource = server.url.rstrip("/") + location
        async with http.patch(resource, data=good + "a=end-of-candidates\r\n", headers=frag) as r:
            assert r.status == 204
        async with http.patch(resource, data="a=candidate:garbage\r\n", headers=frag) as r:
            assert r.status == 400
        async with http.patch(resource, data=good, headers={**auth, "Content-Type": "text/x"}) as r:
            assert r.status == 415
        async with http.patch(url + "/nosuchsession", data=good, headers=frag) as r:
            assert r.status == 404
    await pc.close()
