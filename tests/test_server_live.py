"""The live server end to end: real engine (tiny, random init), aiortc viewers on loopback."""

from __future__ import annotations

import asyncio
import urllib.request

import numpy as np
import pytest
import torch
from aiortc.codecs import h264, vpx
from conftest import prompt_sensitive, timeout
from prometheus_client.parser import text_string_to_metric_families

from memory.stream import Stream
from model.bundle import VideoModel
from model.tinyworld.reading import FrameReader
from model.tinyworld.spec import BACKGROUND_NAMES

A = "a big red circle bouncing over the ocean"
B = "a small blue square moving left in the snow"


# Tests that compare received frames with an offline Stream's run unmarked (watermark=False):
# the mark is measured by tests/test_watermark.py, here it would only blur the comparison.
async def watched(live_server, session, prompt=A, **config):
    server = await live_server(**config)
    s = await session(server.ws_url)
    created = await s.create(prompt)
    viewer = await s.watch(created["stream"])
    return server, s, created["stream"], viewer


def mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a.astype(np.float64) - b) ** 2).mean())


async def test_viewer_receives_48_frames_at_24fps_with_increasing_timestamps(live_server, session):
    """A viewer decodes >= 48 frames at ~24 fps whose 90 kHz timestamps step by 3750."""
    server, s, stream, viewer = await watched(live_server, session)
    frames = (await viewer.wait_frames(60, timeout(15)))[:60]
    pts = [f.pts for f in frames]
    assert all(b > a for a, b in zip(pts, pts[1:], strict=False))
    steps = [round((b - a) / 3750) for a, b in zip(pts, pts[1:], strict=False)]
    assert steps.count(1) >= 0.9 * len(steps)  # one media tick per frame
    fps = (len(frames) - 1) / (frames[-1].received - frames[0].received)
    assert 20 <= fps <= 28
    indices = [viewer.index_of(f) for f in frames]
    assert indices[0] is not None and all(
        b >= a for a, b in zip(indices, indices[1:], strict=False)
    )


async def test_prompt_switch_is_acknowledged_with_its_frame_and_visible(
    live_server, session, tiny_model
):
    """prompt_applied names the first unplayed chunk's frame; received frames from it
    on are nearer the new prompt's frames than the old prompt's (same seed)."""
    server, s, stream, viewer = await watched(
        live_server, session, bitrate=1_500_000, watermark=False
    )
    await viewer.wait_frames(30, timeout(15))
    shown = max(viewer.index_of(f) for f in viewer.frames)
    applied = await s.prompt(stream, B)
    frame = applied["frame"]
    fpc = s.hello["frames_per_chunk"]
    assert applied["type"] == "prompt_applied" and frame % fpc == 0 and frame > shown
    assert frame - shown <= fpc + 1  # the first unplayed boundary, not after the buffer
    await viewer.wait_index(frame + 24, timeout(20))

    k = frame // fpc  # what the engine gives for each timeline, offline
    ref = Stream(tiny_model, A, seed=0)
    old = np.concatenate([ref.next_chunk() for _ in range(k + 2)])
    ref.rewind(k)
    ref.set_prompt(B, at_chunk=k)
    new = np.concatenate([old[: k * fpc], ref.next_chunk(), ref.next_chunk()])
    assert np.array_equal(old[:frame], new[:frame]) and not np.array_equal(old, new)

    margins, separation = [], []
    for f in viewer.frames:
        i = viewer.index_of(f)
        if i is not None and frame <= i < len(new):
            margins.append(mse(f.image, old[i]) - mse(f.image, new[i]))
            separation.append(mse(old[i], new[i]))
    assert len(margins) >= 20
    # nearly every frame from the switch on is nearer the new prompt's frame, by a clear
    # margin (the random-init model's two prompts differ by little: MSE ~12)
    assert np.mean(np.array(margins) > 0) >= 0.9
    assert np.mean(margins) > 0.15 * np.mean(separation)
    assert np.mean(np.array(margins) > 0) >= 0.9


async def test_server_sampling_settings_reach_hello_and_every_stream(
    live_server, session, tiny_model
):
    """Sampling set on the server (`endless serve --steps 2 --guidance 4
    --guidance-interval 0.5 1 --guidance-chunks 2 --warmup-chunks 1 --context-noise
    0.05 --motion-guidance 1.5 --motion-guidance-from 0.9`) is announced in
    hello, and a stream's frames are the ones it makes: nearer them than the model's
    default sampling."""
    guided = prompt_sensitive(VideoModel.from_seed(0, "tiny"))
    settings = {
        "steps": 2,
        "guidance": 4.0,
        "guidance_interval": (0.5, 1.0),
        "guidance_chunks": 2,
        "warmup_chunks": 1,
        "context_noise": 0.05,
        "motion_guidance": 1.5,
        "motion_guidance_from": 0.9,
    }
    server = await live_server(model=guided, bitrate=1_500_000, watermark=False, **settings)
    s = await session(server.ws_url)
    assert s.hello["sampling"] == {**settings, "guidance_interval": [0.5, 1.0]}
    assert s.hello["dtype"] == "float32"  # the model's compute precision (--dtype)
    viewer = await s.watch((await s.create(A))["stream"])
    await viewer.wait_index(36, timeout(20))

    def offline(model):
        stream = Stream(model, A, seed=0)
        return np.concatenate([stream.next_chunk() for _ in range(4)])

    want, default = offline(guided), offline(tiny_model)
    margins, separation = [], []
    for f in viewer.frames:
        i = viewer.index_of(f)
        if i is not None and i < len(want):
            margins.append(mse(f.image, default[i]) - mse(f.image, want[i]))
            separation.append(mse(default[i], want[i]))
    assert len(margins) >= 24
    # nearly every frame from the switch on is nearer the new prompt's frame, by a clear
    # margin (the random-init model's two prompts differ by little: MSE ~12)
    assert np.mean(np.array(margins) > 0) >= 0.9
    assert np.mean(margins) > 0.15 * np.mean(separation)
    assert np.mean(np.array(margins) > 0) >= 0.9


async def test_two_viewers_of_one_stream_get_the_same_frames_from_one_encode(
    live_server, session, monkeypatch
):
    """Two viewers share one encoder: encoder calls == media ticks, not twice as many."""
    calls = {"n": 0}
    real_encode = vpx.Vp8Encoder.encode

    def counting(self, frame, force_keyframe=False):
        calls["n"] += 1
        return real_encode(self, frame, force_keyframe)

    monkeypatch.setattr(vpx.Vp8Encoder, "encode", counting)
    server, s1, stream, v1 = await watched(live_server, session)
    s2 = await session(server.ws_url)
    v2 = await s2.watch(stream, token=s1.tokens[stream])
    await v2.wait_frames(48, timeout(15))
    live = server.streams[stream]
    (encoder,) = live.encoders.values()  # one (stream, codec) encoder
    assert encoder.subscribers == {v.track for v in live.viewers.values()}
    ticks = live.playout.tick
    # the encoder thread may be inside one encode (counted in calls, not yet in encodes)
    assert calls["n"] - encoder.encodes in (0, 1) and encoder.encodes <= ticks
    assert len(v1.frames) + len(v2.frames) > encoder.encodes  # fan-out, not re-encoding
    by_tick = {v1.tick_of(f): f.image for f in v1.frames}
    common = [(by_tick[v2.tick_of(f)], f.image) for f in v2.frames if v2.tick_of(f) in by_tick]
    assert len(common) >= 40
    assert all(np.array_equal(a, b) for a, b in common)  # same bitstream, same pictures


async def test_vp8_and_h264_viewers_get_one_encode_per_codec(live_server, session, monkeypatch):
    """Viewers that negotiated different codecs get exactly one encoder per codec."""
    calls = {"vp8": 0, "h264": 0}
    for name, cls in (("vp8", vpx.Vp8Encoder), ("h264", h264.H264Encoder)):
        real = cls.encode

        def counting(self, frame, force_keyframe=False, _real=real, _name=name):
            calls[_name] += 1
            return _real(self, frame, force_keyframe)

        monkeypatch.setattr(cls, "encode", counting)
    server, s, stream, v8 = await watched(live_server, session)
    v264 = await s.watch(stream, codec="h264")
    assert (v8.codec, v264.codec) == ("vp8", "h264")
    await v264.wait_frames(30, timeout(15))
    live = server.streams[stream]
    assert sorted(live.encoders) == ["video/H264", "video/VP8"]
    for codec, mime in (("h264", "video/H264"), ("vp8", "video/VP8")):
        encodes = live.encoders[mime].encodes  # one encode may be in flight (not counted yet)
        assert calls[codec] - encodes in (0, 1) and encodes <= live.playout.tick


async def test_a_viewer_disconnecting_leaves_the_stream_and_other_viewers_running(
    live_server, session
):
    """A viewer whose connection vanishes is removed; the stream and the other viewer go on."""
    server, s1, stream, v1 = await watched(live_server, session)
    s2 = await session(server.ws_url)
    v2 = await s2.watch(stream, token=s1.tokens[stream])
    await v2.wait_frames(12, timeout(15))
    s2.ws.transport.abort()  # vanishes: no close frame, no goodbye
    await v2.pc.close()
    live = server.streams[stream]
    async with asyncio.timeout(timeout(5)):
        while len(live.viewers) != 1:
            await asyncio.sleep(0.05)
    before = len(v1.frames)
    await v1.wait_frames(before + 24, timeout(5))
    assert stream in server.streams and not live.ended


async def test_an_abandoned_stream_ends_after_the_grace_period_and_frees_everything(
    live_server, session
):
    """When its last controller and viewer leave, a stream ends and releases its resources."""
    server, s, stream, viewer = await watched(live_server, session, grace_seconds=0.3)
    await viewer.wait_frames(12, timeout(15))
    live = server.streams[stream]
    await s.close()
    async with asyncio.timeout(timeout(5)):
        while stream in server.streams or stream in server.engine.stream_ids:
            await asyncio.sleep(0.05)
    assert live.ended and not live.viewers and not live.encoders
    assert live._task.done()
    other = await session(server.ws_url)
    listing = await other.request({"type": "streams"})
    assert listing["streams"] == []


async def test_storyboard_schedules_prompts_at_stream_times(live_server, session):
    """Storyboard items apply at the nearest chunk boundary to their time; events report it."""
    server, s, stream, viewer = await watched(live_server, session)
    reply = await s.storyboard(stream, [{"at": 1.5, "prompt": B}, {"at": 0, "prompt": A}])
    frames = [item["frame"] for item in reply["items"]]
    assert (
        frames[0] == 36 and frames[1] == server.streams[stream].playout.first_unplayed_chunk() * 12
    )
    assert server.streams[stream].playout.plan.prompt_at(3) == B
    await viewer.wait_index(40, timeout(15))
    stats = await s.stats(stream)
    assert stats["prompt"] == B and stats["frame"] > 36


async def test_pause_holds_the_picture_and_resume_continues(live_server, session):
    """While paused the media clock runs but the frame index stays; resume moves on."""
    server, s, stream, viewer = await watched(live_server, session)
    await viewer.wait_frames(12, timeout(15))
    paused = await s.pause(stream)
    n = len(viewer.frames)
    await viewer.wait_frames(n + 24, timeout(5))
    held = [viewer.index_of(f) for f in viewer.frames[n + 2 :]]
    assert len(set(held)) == 1 and held[0] <= paused["frame"]
    await s.resume(stream)
    await viewer.wait_index(held[0] + 12, timeout(5))
    assert server.metrics.held_frames.labels("pause")._value.get() >= 20


def _get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read()


async def test_two_servers_in_one_process_serve_their_own_metrics_health_and_page(
    live_server, session
):
    """/metrics (per-server registry), /healthz and the page are plain HTTP GETs."""
    a = await live_server()
    b = await live_server()
    s = await session(a.ws_url)
    await s.create(A)
    status, kind, body = await asyncio.to_thread(_get, a.url + "metrics")
    assert status == 200 and kind.startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert families["endless_streams"].samples[0].value == 1
    assert families["endless_chunk_seconds"].type == "histogram"
    for name in ("endless_realtime_factor", "endless_queue_depth", "endless_cache_bytes"):
        assert families[name].type == "gauge", name
    assert families["endless_stalls"].type == "counter"
    _, _, other = await asyncio.to_thread(_get, b.url + "metrics")
    others = {f.name: f for f in text_string_to_metric_families(other.decode())}
    assert others["endless_streams"].samples[0].value == 0
    assert (await asyncio.to_thread(_get, a.url + "healthz"))[0] == 200
    status, kind, page = await asyncio.to_thread(_get, a.url)
    assert status == 200 and kind.startswith("text/html") and b"<video" in page
    assert (await asyncio.to_thread(_get, a.url + "app.js"))[0] == 200
    assert (await asyncio.to_thread(_get, a.url + "../pyproject.toml"))[0] == 404


@pytest.mark.parametrize("keyframe_seconds", [1.0])
async def test_keyframes_come_at_least_every_interval_and_at_each_switch(
    live_server, session, keyframe_seconds
):
    """The shared encoder sends a keyframe at least every interval and at a prompt switch."""
    server, s, stream, viewer = await watched(
        live_server, session, keyframe_seconds=keyframe_seconds
    )
    live = server.streams[stream]
    await viewer.wait_frames(12, timeout(15))
    (encoder,) = live.encoders.values()
    keys = []
    real = encoder.plan_keyframe

    def spy(tick, forced):
        key = real(tick, forced)
        if key:
            keys.append((tick, forced))
        return key

    encoder.plan_keyframe = spy
    applied = await s.prompt(stream, B)
    await viewer.wait_index(applied["frame"] + 36, timeout(15))
    ticks = [t for t, _ in keys]
    assert any(forced for _, forced in keys)  # the switch's first frame
    assert all(b - a <= keyframe_seconds * 24 for a, b in zip(ticks, ticks[1:], strict=False))


async def test_with_trained_weights_the_evaluator_reads_the_new_prompt_from_its_frame(
    live_server, session
):
    """Shipped weights: received frames show the old background before the applied frame
    and the new one from it on, as the TinyWorld evaluator reads them. Live, streams start
    without a warm-up unless the server is told (`--warmup-chunks`), whatever the
    checkpoint's sampling says: it would cost time to the first frame."""
    model = VideoModel.load_default(dtype=torch.float32).with_sampler(warmup_chunks=2)
    server = await live_server(model=model, bitrate=1_500_000, watermark=False)
    s = await session(server.ws_url)
    assert s.hello["sampling"]["warmup_chunks"] == 0
    stream = (await s.create("a big red circle bouncing over the ocean"))["stream"]
    viewer = await s.watch(stream)
    await viewer.wait_frames(36, timeout(20))
    applied = await s.prompt(stream, "a big red circle bouncing in the snow")
    frame = applied["frame"]
    await viewer.wait_index(frame + 24, timeout(20))
    reader = FrameReader(s.hello["width"])
    before, after = [], []
    for f in viewer.frames:
        i = viewer.index_of(f)
        if i is not None and frame - 24 <= i < frame + 24:
            bg = BACKGROUND_NAMES[reader.read(f.image).background]
            (before if i < frame else after).append(bg)
    assert before.count("ocean") >= 0.8 * len(before) and len(before) >= 12
    assert after.count("snow") >= 0.8 * len(after) and len(after) >= 12


def test_keyframe_requests_inside_the_gap_share_one_keyframe_served_when_it_passes(
    monkeypatch,
):
    """Viewer B asking 0.1 s after viewer A is not left waiting for the periodic keyframe
    (2 s): its request is served once the 0.25 s gap has passed, and a burst of requests
    inside the gap still gives one keyframe, not one per request."""
    from server import fanout

    clock = [100.0]
    monkeypatch.setattr(fanout.time, "monotonic", lambda: clock[0])
    enc = fanout.SharedEncoder("video/VP8", 500_000, keyframe_ticks=48, ticks_per_frame=3750)
    assert enc.plan_keyframe(0, False)  # the first frame
    assert not enc.plan_keyframe(1, False)
    enc.request_keyframe()  # viewer A
    assert enc.plan_keyframe(2, False)
    clock[0] += 0.1
    for _ in range(3):
        enc.request_keyframe()  # viewer B, inside the gap, more than once
    assert not enc.plan_keyframe(3, False)
    clock[0] += 0.2  # 0.3 s after A's request
    assert enc.plan_keyframe(4, False)
    assert not enc.plan_keyframe(5, False)
