"""OSC control over UDP: python-osc's client and liblo's `oscsend` drive a live stream."""

from __future__ import annotations

import asyncio
import shutil
import subprocess

import numpy as np
import pytest
from conftest import timeout
from pythonosc.udp_client import SimpleUDPClient
from test_server_live import A, B, mse

from memory.stream import Stream

OSCSEND = shutil.which("oscsend") or "/usr/bin/oscsend"
KEY = "osc-secret"


async def _osc_stream(live_server, session, **config):
    server = await live_server(osc_port=0, bitrate=1_500_000, **config)
    s = await session(server.ws_url)
    created = await s.create(A)
    return server, s, created, SimpleUDPClient("127.0.0.1", server.outputs.osc.port)


async def _until(condition, seconds: float = 10.0) -> None:
    async with asyncio.timeout(timeout(seconds)):
        while not condition():
            await asyncio.sleep(0.02)


async def test_an_osc_prompt_switches_the_stream_and_an_aiortc_viewer_sees_it(
    live_server, session, tiny_model
):
    """/endless/<stream>/prompt text from python-osc (on loopback: no key) switches the
    prompt at the next unplayed chunk; the websocket hears prompt_changed, and a WebRTC
    viewer's frames from that frame on are nearer the new prompt's frames than the old."""
    server, s, created, osc = await _osc_stream(live_server, session)
    stream = created["stream"]
    viewer = await s.watch(stream)
    await viewer.wait_frames(30, timeout(15))
    osc.send_message(f"/endless/{stream}/prompt", B)
    changed = await s.wait_event(lambda e: e["type"] == "prompt_changed", timeout(10))
    frame, fpc = changed["frame"], created["frames_per_chunk"]
    assert changed["prompt"] == B and frame % fpc == 0
    await viewer.wait_index(frame + 24, timeout(20))

    k = frame // fpc
    ref = Stream(tiny_model, A, seed=0)
    old = np.concatenate([ref.next_chunk() for _ in range(k + 2)])
    ref.rewind(k)
    ref.set_prompt(B, at_chunk=k)
    new = np.concatenate([old[: k * fpc], ref.next_chunk(), ref.next_chunk()])
    margins = [
        mse(f.image, old[i]) - mse(f.image, new[i])
        for f in viewer.frames
        if (i := viewer.index_of(f)) is not None and frame <= i < len(new)
    ]
    assert len(margins) >= 20 and np.mean(np.array(margins) > 0) >= 0.9
    text = server.metrics.render().decode()
    assert 'endless_osc_messages_total{result="ok"} 1.0' in text


async def test_oscsend_from_liblo_drives_prompt_pause_resume_storyboard_and_cue(
    live_server, session
):
    """Debian's oscsend (liblo) sends prompt, pause, resume, a storyboard and a cue, each
    led by the --osc-key; the short address /endless/prompt reaches the newest stream."""
    server, s, created, _ = await _osc_stream(live_server, session, osc_key=KEY)
    stream, token = created["stream"], KEY
    (live,) = server.streams.values()
    port = str(server.outputs.osc.port)

    def send(address: str, types: str, *args: str) -> None:
        subprocess.run([OSCSEND, "127.0.0.1", port, address, types, *args], check=True)

    await asyncio.to_thread(send, f"/endless/{stream}/pause", "s", token)
    await _until(lambda: live.playout.paused)
    await asyncio.to_thread(send, f"/endless/{stream}/resume", "s", token)
    await _until(lambda: not live.playout.paused)
    await asyncio.to_thread(send, f"/endless/{stream}/prompt", "ss", token, B)
    await _until(lambda: any(t == B for _, t in live.playout.plan.as_tuple()))
    story = ("a green ring standing still in the forest", "a yellow triangle in the desert")
    await asyncio.to_thread(
        send, f"/endless/{stream}/storyboard", "sfsfs", token, "600", story[0], "700", story[1]
    )
    await _until(lambda: [t for _, t in live.storyboard] == list(story))
    await asyncio.to_thread(send, f"/endless/{stream}/cue", "si", token, "1")
    await _until(lambda: any(t == story[1] for k, t in live.playout.plan.as_tuple() if k < 100))
    await asyncio.to_thread(send, "/endless/prompt", "ss", token, A)
    await _until(lambda: server.outputs.osc.handled == 6)
    assert server.outputs.osc.last_error is None
    p = live.playout
    assert p.plan.prompt_at(p.first_unplayed_chunk()) == A


async def test_bad_osc_input_is_counted_and_never_stops_the_stream(live_server, session):
    """Garbage, unknown addresses and streams, a missing or wrong --osc-key, unknown words,
    bad cues and a flood are refused and counted; the stream plays on and a good message
    afterwards still works."""
    server, s, created, osc = await _osc_stream(live_server, session, osc_key=KEY)
    stream, control = created["stream"], KEY
    (live,) = server.streams.values()
    await _until(lambda: live.playout.tick > 0)
    sock = osc._sock
    sock.sendto(b"\x00garbage\xff", ("127.0.0.1", server.outputs.osc.port))
    sock.sendto(b"#bundle\x00" + b"\x01" * 3, ("127.0.0.1", server.outputs.osc.port))
    bad = [
        ("/nowhere", ["x"]),
        (f"/endless/{stream}/explode", [control]),
        ("/endless/nosuch/prompt", [control, B]),
        (f"/endless/{stream}/prompt", []),
        (f"/endless/{stream}/prompt", ["not the key", B]),
        (f"/endless/{stream}/prompt", [B]),
        (f"/endless/{stream}/prompt", [control, "a glittering unicorn"]),
        (f"/endless/{stream}/prompt", [control, 42]),
        (f"/endless/{stream}/cue", [control, 5]),
        (f"/endless/{stream}/storyboard", [control, 1.0]),
    ]
    for address, args in bad:
        osc.send_message(address, args)
    await _until(lambda: _errors(server) >= 2 + len(bad))
    assert server.outputs.osc.last_error[0] == "bad_message"
    for i in range(400):  # a flood: past the rate limits, refused, not queued
        osc.send_message(f"/endless/{stream}/prompt", [control, (A, B)[i % 2]])
    tick = live.playout.tick
    await asyncio.sleep(1.0)
    assert not live.ended and live.playout.tick > tick
    assert _errors(server) > 2 + len(bad) + 100
    await asyncio.sleep(2.5)  # the limits refill
    osc.send_message(f"/endless/{stream}/prompt", [control, "a magenta ring in the night"])
    await _until(
        lambda: (
            live.playout.plan.prompt_at(live.playout.first_unplayed_chunk())
            == "a magenta ring in the night"
        )
    )


def _errors(server) -> float:
    return server.outputs.metrics.osc_messages.labels("error")._value.get()


def test_osc_beyond_loopback_needs_a_key():
    """OSC bound beyond loopback without --osc-key is refused with a clear error; with a
    key, or on loopback, it is accepted."""
    from model.errors import ConfigError
    from server.config import ServerConfig

    with pytest.raises(ConfigError, match="without --osc-key"):
        ServerConfig(osc_port=0, osc_host="0.0.0.0")
    ServerConfig(osc_port=0, osc_host="0.0.0.0", osc_key="k")
    ServerConfig(osc_port=0)  # 127.0.0.1
