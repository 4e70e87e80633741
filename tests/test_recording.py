"""Recordings: the H.264 encode remuxed to MP4, finished on stop, stream end and shutdown."""

from __future__ import annotations

import asyncio
import io

import aiohttp
import av
import pytest
from conftest import timeout

from client.session import ServerError
from server.provenance.c2pa_sign import read_manifest

PROMPT = "a big red circle bouncing over the ocean"


async def _stream(live_server, session, tmp_path, **config):
    server = await live_server(record_dir=str(tmp_path / "rec"), **config)
    s = await session(server.ws_url)
    return server, s, await s.create(PROMPT)


def _decode(data: bytes) -> tuple[int, float]:
    """(frames decoded, the container's duration in seconds) of an MP4 in memory."""
    with av.open(io.BytesIO(data)) as c:
        v = c.streams.video[0]
        n = sum(1 for _ in c.decode(v))
        return n, float(c.duration / av.time_base)


async def test_a_recording_is_remuxed_from_the_encode_and_downloadable_with_the_view_token(
    live_server, session, tmp_path
):
    """record start/stop with the control token; the MP4 at the url decodes to one frame
    per media tick recorded, lasting frames / fps; the view token downloads it."""
    server, s, created = await _stream(live_server, session, tmp_path)
    stream, control = created["stream"], created["control_token"]
    msg = {"type": "record", "stream": stream, "token": control}
    started = await s.request({**msg, "action": "start"})
    assert started["type"] == "recording" and started["url"] == f"/recordings/{started['id']}.mp4"
    (live,) = server.streams.values()
    tick0 = live.playout.tick
    assert list(live.encoders) == ["video/H264"]  # made for the recording, no viewer needed
    async with aiohttp.ClientSession() as http:
        url = server.url.rstrip("/") + started["url"]
        async with http.get(url, params={"token": created["view_token"]}) as r:
            assert r.status == 409  # still being written
        await asyncio.sleep(3.0)
        stopped = await s.request({**msg, "action": "stop"})
        ticks = live.playout.tick - tick0  # media ticks shown while recording
        assert stopped["state"] == "stopped" and stopped["id"] == started["id"]
        assert live.encoders == {}  # nobody needs H.264 any more: no encode
        async with http.get(url) as r:
            assert r.status == 401
        async with http.get(url, params={"token": "wrong"}) as r:
            assert r.status == 403
        async with http.get(url, params={"token": created["view_token"]}) as r:
            assert r.status == 200 and r.content_type == "video/mp4"
            data = await r.read()
    frames, duration = _decode(data)
    assert frames == stopped["frames"]
    assert ticks > 24 and abs(frames - ticks) <= 3  # every shown tick, once (one in flight)
    saved = tmp_path / "downloaded.mp4"
    saved.write_bytes(data)
    manifest = read_manifest(saved)  # signed on finishing: endless, the model, the stream
    assert manifest is not None and manifest["title"] == "endless recording"
    assert manifest["provenance"]["stream"] == stream
    assert abs(duration - frames / created["fps"]) < 0.1
    text = server.metrics.render().decode()
    assert "endless_recordings_total 1.0" in text and "endless_recordings_active 0.0" in text


async def test_record_needs_the_control_token(live_server, session, tmp_path):
    """No token: unauthorized; the view token: forbidden; stop with nothing running."""
    _, s, created = await _stream(live_server, session, tmp_path)
    msg = {"type": "record", "stream": created["stream"], "action": "start"}
    with pytest.raises(ServerError) as no_token:
        await s.request(msg)
    assert no_token.value.code == "unauthorized"
    with pytest.raises(ServerError) as view:
        await s.request({**msg, "token": created["view_token"]})
    assert view.value.code == "forbidden"
    with pytest.raises(ServerError) as idle:
        await s.request({**msg, "action": "stop", "token": created["control_token"]})
    assert idle.value.code == "not_recording"


async def test_a_recording_is_finished_when_its_stream_ends_and_at_shutdown(
    live_server, session, tmp_path
):
    """A recording never stopped is finished, playable, when its stream stops and when
    the server shuts down."""
    server, s, created = await _stream(live_server, session, tmp_path)
    rec = {"type": "record", "action": "start"}
    first = await s.request({**rec, "stream": created["stream"], "token": created["control_token"]})
    other = await s.create(PROMPT, seed=1)
    second = await s.request({**rec, "stream": other["stream"], "token": other["control_token"]})
    running = server.outputs.recordings.running
    async with asyncio.timeout(timeout(30)):  # both streams share one model: wait for both
        while min(running[c["stream"]].frames for c in (created, other)) < 24:
            await asyncio.sleep(0.05)
    await s.request(
        {"type": "stop", "stream": created["stream"], "token": created["control_token"]}
    )
    ended = await s.wait_event(lambda e: e["type"] == "recording", timeout(10))
    assert ended["id"] == first["id"] and ended["reason"] == "stream_ended"
    await server.close()
    for made in (first, second):
        path = tmp_path / "rec" / f"{made['id']}.mp4"
        frames, _ = _decode(path.read_bytes())
        assert frames > 12
    assert not list((tmp_path / "rec").glob("*.part"))
