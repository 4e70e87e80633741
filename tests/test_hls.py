"""HLS: 1-2 s MPEG-TS segments remuxed from the H.264 encode, read live by FFmpeg (PyAV)."""

from __future__ import annotations

import asyncio
import re

import aiohttp
import av
from conftest import timeout

PROMPT = "a big red circle bouncing over the ocean"


async def _stream(live_server, session, **config):
    server = await live_server(**config)
    s = await session(server.ws_url)
    return server, s, await s.create(PROMPT)


def _durations(playlist: str) -> list[float]:
    return [float(x) for x in re.findall(r"#EXTINF:([0-9.]+),", playlist)]


async def test_hls_refuses_missing_and_wrong_tokens_and_unknown_streams(live_server, session):
    """401 without ?token=, 403 with a wrong one, 404 for an unknown stream; nothing is
    encoded for a refused request."""
    server, _, created = await _stream(live_server, session)
    base = f"{server.url}hls/{created['stream']}/index.m3u8"
    async with aiohttp.ClientSession() as http:
        async with http.get(base) as r:
            assert r.status == 401
        async with http.get(base, params={"token": "wrong"}) as r:
            assert r.status == 403
        async with http.get(f"{server.url}hls/nosuch/index.m3u8", params={"token": "x"}) as r:
            assert r.status == 404
        async with http.get(f"{server.url}hls/{created['stream']}/0.ts") as r:
            assert r.status == 401
    (live,) = server.streams.values()
    assert live.encoders == {} and server.outputs.hls == {}


async def test_ffmpeg_reads_the_live_playlist_and_segments_stay_short_and_bounded(
    live_server, session
):
    """PyAV (FFmpeg's HLS demuxer) decodes frames from the live playlist; segments last
    1-2 s; the playlist slides and at most `hls_keep_segments` segments are held."""
    server, _, created = await _stream(live_server, session, hls_keep_segments=5)
    url = f"{server.url}hls/{created['stream']}/index.m3u8?token={created['view_token']}"

    def read(n: int) -> list:
        with av.open(url, timeout=timeout(20)) as c:
            frames = []
            for frame in c.decode(video=0):
                frames.append(frame)
                if len(frames) >= n:
                    return frames
        return frames

    frames = await asyncio.get_running_loop().run_in_executor(None, read, 48)
    assert len(frames) == 48
    assert (frames[0].width, frames[0].height) == (created["width"], created["height"])
    (live,) = server.streams.values()
    hls = server.outputs.hls[live.id]
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as r:
            assert r.status == 200
            assert r.headers["Access-Control-Allow-Origin"] == "*"
            first = await r.text()
        await asyncio.sleep(4.0)
        async with http.get(url) as r:
            later = await r.text()
    seq = [int(re.search(r"MEDIA-SEQUENCE:(\d+)", p).group(1)) for p in (first, later)]
    assert seq[1] >= seq[0] + 3  # the window slides on
    durations = _durations(first) + _durations(later)
    assert durations and all(0.9 <= d <= 2.1 for d in durations), durations
    assert len(hls.segments) == 5 and len(_durations(later)) == 3


async def test_hls_makes_the_h264_encode_only_while_someone_reads(live_server, session):
    """No viewer needs H.264: HLS makes that encode; once no request came for
    `hls_idle_seconds` it stops segmenting and the encode is no longer made."""
    server, _, created = await _stream(live_server, session, hls_idle_seconds=1.0)
    url = f"{server.url}hls/{created['stream']}/index.m3u8?token={created['view_token']}"
    (live,) = server.streams.values()
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as r:
            assert r.status == 200 and "#EXTINF" in await r.text()
    assert list(live.encoders) == ["video/H264"]
    async with asyncio.timeout(timeout(10)):
        while live.encoders:
            await asyncio.sleep(0.1)
    assert server.outputs.hls[live.id].closed
    text = server.metrics.render().decode()
    assert "endless_hls_active 0.0" in text
    assert re.search(r"endless_hls_segments_total [1-9]", text)
