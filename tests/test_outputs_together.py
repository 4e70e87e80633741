"""Every output of one stream at once: one H.264 encode feeds them all; /metrics counts
them and passes Prometheus' own checker; a client vanishing disturbs no other."""

from __future__ import annotations

import asyncio
import shutil
import subprocess

import aiohttp
from conftest import timeout
from test_rtmp import RtmpServer, _status
from test_whep import _whep

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"

PROMPT = "a big red circle bouncing over the ocean"


async def test_websocket_whep_hls_recording_and_push_share_one_h264_encode(
    live_server, session, tmp_path
):
    """An H.264 websocket viewer, a WHEP viewer, HLS, a recording and an RTMP push run
    together from one encoder making one encode per shown tick; the WHEP peer vanishing
    and HLS going unread leave the others running; promtool accepts /metrics."""
    rtmp = await RtmpServer(tmp_path).start()
    try:
        server = await live_server(
            codec="h264", record_dir=str(tmp_path / "rec"), hls_idle_seconds=2.0
        )
        s = await session(server.ws_url)
        created = await s.create(PROMPT)
        stream, control, view = created["stream"], created["control_token"], created["view_token"]
        viewer = await s.watch(stream, codec="h264")
        async with aiohttp.ClientSession() as http:
            pc, got, _ = await _whep(http, f"{server.url}whep/{stream}", view)
            hls_url = f"{server.url}hls/{stream}/index.m3u8?token={view}"
            async with http.get(hls_url) as r:
                assert r.status == 200
            rec = await s.request({"type": "record", "stream": stream, "token": control})
            await s.request(
                {"type": "push", "stream": stream, "token": control, "url": rtmp.url("all")}
            )
            await s.wait_event(_status("live"), timeout(15))
            await viewer.wait_frames(24, timeout(15))
            await asyncio.wait_for(got, timeout(10))
            (live,) = server.streams.values()
            (enc,) = live.encoders.values()
            assert enc.mime == "video/H264" and len(enc.subscribers) == 5
            encodes, tick = enc.encodes, live.playout.tick
            await asyncio.sleep(2.0)
            assert abs((enc.encodes - encodes) - (live.playout.tick - tick)) <= 2

            await pc.close()  # the WHEP peer vanishes; HLS is no longer read
            async with asyncio.timeout(timeout(40)):
                while len(live.viewers) > 1 or not server.outputs.hls[stream].closed:
                    await asyncio.sleep(0.2)
            n = viewer.received
            await asyncio.sleep(1.0)
            assert viewer.received > n + 12 and len(enc.subscribers) == 3
            assert server.outputs.recordings.running[stream].frames > 48
            assert next(iter(server.outputs.pushes[stream].values())).state == "live"
            stopped = await s.request(
                {"type": "record", "stream": stream, "token": control, "action": "stop"}
            )
            assert stopped["id"] == rec["id"] and stopped["frames"] > 48

            async with http.get(f"{server.url}metrics") as r:
                metrics = await r.read()
        checked = subprocess.run([PROMTOOL, "check", "metrics"], input=metrics, capture_output=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        text = metrics.decode()
        for line in (
            "endless_whep_sessions_total 1.0",
            "endless_recordings_total 1.0",
            "endless_pushes_total 1.0",
            'endless_hls_requests_total{kind="playlist"} 1.0',
        ):
            assert line in text, line
    finally:
        rtmp.stop()
