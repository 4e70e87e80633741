"""RTMP push: FLV from the H.264 encode to a real RTMP server (Debian's nginx with its RTMP
module, started here on 127.0.0.1), read back with PyAV; reconnection when it goes away."""

from __future__ import annotations

import asyncio
import socket
import subprocess
from pathlib import Path

import av
import pytest
from conftest import timeout

from client.session import ServerError

NGINX = "/usr/sbin/nginx"
RTMP_MODULE = "/usr/lib/nginx/modules/ngx_rtmp_module.so"
CONF = """daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
load_module {module};
events {{ worker_connections 64; }}
rtmp {{
  server {{
    listen 127.0.0.1:{port};
    application live {{ live on; record off; }}
  }}
}}
"""

PROMPT = "a big red circle bouncing over the ocean"


class RtmpServer:
    """nginx-rtmp on 127.0.0.1:port, started and stopped by the test."""

    def __init__(self, directory: Path):
        if not (Path(NGINX).exists() and Path(RTMP_MODULE).exists()):
            raise RuntimeError("nginx with libnginx-mod-rtmp is missing: run ./ops/test.sh")
        self.dir = directory
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        conf = CONF.format(dir=directory, module=RTMP_MODULE, port=self.port)
        (directory / "nginx.conf").write_text(conf)
        self.proc: subprocess.Popen | None = None

    async def start(self) -> RtmpServer:
        self.proc = subprocess.Popen(
            [NGINX, "-p", str(self.dir), "-c", str(self.dir / "nginx.conf"), "-e", "stderr"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        async with asyncio.timeout(timeout(10)):
            while True:
                try:
                    _, w = await asyncio.open_connection("127.0.0.1", self.port)
                    w.close()
                    return self
                except OSError:
                    assert self.proc.poll() is None, (self.dir / "error.log").read_text()
                    await asyncio.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def url(self, key: str) -> str:
        return f"rtmp://127.0.0.1:{self.port}/live/{key}"


@pytest.fixture
async def rtmp_server(tmp_path):
    made = RtmpServer(tmp_path)
    yield made
    made.stop()


def _read(url: str, n: int) -> list:
    with av.open(url, timeout=timeout(15)) as c:
        frames = []
        for frame in c.decode(video=0):
            frames.append(frame)
            if len(frames) >= n:
                break
        return frames


def _status(state: str):
    return lambda e: e["type"] == "push_status" and e["state"] == state


async def test_a_push_reaches_a_real_rtmp_server_and_reads_back_with_pyav(
    live_server, session, rtmp_server
):
    """push with the control token: connecting, then live; PyAV reads the stream back from
    nginx-rtmp and decodes frames of the stream's size; stop ends it."""
    await rtmp_server.start()
    server = await live_server()
    s = await session(server.ws_url)
    created = await s.create(PROMPT)
    msg = {"type": "push", "stream": created["stream"], "token": created["control_token"]}
    started = await s.request({**msg, "url": rtmp_server.url("show")})
    assert started["type"] == "push_status" and started["state"] == "connecting"
    assert started["url"].endswith("/live/***")  # the stream key is not echoed
    await s.wait_event(_status("live"), timeout(15))
    frames = await asyncio.to_thread(_read, rtmp_server.url("show"), 24)
    assert len(frames) == 24
    assert (frames[0].width, frames[0].height) == (created["width"], created["height"])
    (live,) = server.streams.values()
    assert list(live.encoders) == ["video/H264"]
    stopped = await s.request({**msg, "action": "stop"})
    assert stopped["stopped"] == [started["push"]]
    await s.wait_event(_status("stopped"), timeout(10))
    assert live.encoders == {} and server.outputs.pushes[live.id] == {}
    text = server.metrics.render().decode()
    assert (
        "endless_pushes_total 1.0" in text and 'endless_push_states_total{state="live"} 1.0' in text
    )


async def test_a_push_retries_while_the_rtmp_server_is_away_and_resumes_when_back(
    live_server, session, rtmp_server
):
    """With no server listening the push retries with an error; the stream plays on; once
    the server is up it goes live, and after the server dies it retries and comes back."""
    server = await live_server()
    s = await session(server.ws_url)
    created = await s.create(PROMPT)
    msg = {"type": "push", "stream": created["stream"], "token": created["control_token"]}
    await s.request({**msg, "url": rtmp_server.url("again")})
    retry = await s.wait_event(_status("retrying"), timeout(15))
    assert retry["error"]
    (live,) = server.streams.values()
    tick = live.playout.tick
    await rtmp_server.start()
    n = s.event_count
    await s.wait_event(_status("live"), timeout(20), start=n)
    assert live.playout.tick > tick and not live.ended
    rtmp_server.stop()
    n = s.event_count
    await s.wait_event(_status("retrying"), timeout(20), start=n)
    await rtmp_server.start()
    await s.wait_event(_status("live"), timeout(30), start=n)
    frames = await asyncio.to_thread(_read, rtmp_server.url("again"), 12)
    assert len(frames) == 12


async def test_push_refuses_other_schemes_and_the_view_token(live_server, session):
    """An http:// URL is bad_url; the view token is forbidden; stop with no push."""
    server = await live_server()
    s = await session(server.ws_url)
    created = await s.create(PROMPT)
    msg = {"type": "push", "stream": created["stream"], "token": created["control_token"]}
    for req, code in (
        ({**msg, "url": "http://127.0.0.1/x"}, "bad_url"),
        ({**msg, "token": created["view_token"], "url": "rtmp://127.0.0.1/x"}, "forbidden"),
        ({**msg, "action": "stop"}, "not_pushing"),
    ):
        with pytest.raises(ServerError) as err:
            await s.request(req)
        assert err.value.code == code
