"""--engine ray: streams placed on Ray actor workers (a local cluster on 127.0.0.1, two
CPU workers standing in for GPUs through logical GPU resources); a worker killed moves its
streams to the other worker from their snapshots, and the viewers keep their connections;
the workers build the upscaling stage and start streams from images."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import urllib.request

import pytest
from conftest import timeout
from PIL import Image

from model.tinyworld.render import render_clip

A = "a big red circle bouncing over the ocean"
B = "a small blue square moving left in the snow"
MOVE_SECONDS = 15.0  # a moved stream's viewer gets new frames this soon


@pytest.fixture(scope="module", autouse=True)
def ray_cluster():
    """One local cluster for the module, started before anything else runs (conftest puts
    these tests first: see pytest_collection_modifyitems there); the engines join it."""
    from server.engine_ray import start_ray

    owned = start_ray(None, workers=2, gpus_per_worker=1.0)
    yield
    if owned:
        import ray

        ray.shutdown()


async def listing(s) -> dict[str, dict]:
    return {e["stream"]: e for e in (await s.request({"type": "streams"}))["streams"]}


async def test_streams_spread_over_workers_and_survive_five_worker_kills(live_server, session):
    """Two streams land on two different workers (each entry names its worker and pid);
    killing the process of a stream's worker five times in a row moves that stream to a
    live worker each time, its viewer gets frames again within 15 s, no stream is lost,
    the killed worker is started again, and /metrics reports each worker."""
    server = await live_server(engine="ray", workers=2, grace_seconds=5)
    s = await session(server.ws_url)
    streams = [(await s.create(p, seed=i))["stream"] for i, p in enumerate((A, B))]
    viewers = [await s.watch(st, keep_images=False) for st in streams]
    for v in viewers:
        await v.wait_frames(12, timeout(30))
    where = await listing(s)
    assert {where[st]["worker"] for st in streams} == {"w0", "w1"}
    assert all(isinstance(where[st]["worker_pid"], int) for st in streams)
    for kill in range(5):
        victim = streams[kill % 2]
        old = where[victim]
        os.kill(old["worker_pid"], signal.SIGKILL)
        viewer = viewers[kill % 2]
        async with asyncio.timeout(timeout(MOVE_SECONDS)):
            while True:
                where = await listing(s)
                now = where.get(victim, {})
                if now.get("worker_pid") not in (None, old["worker_pid"]):
                    break
                await asyncio.sleep(0.1)
        seen = viewer.received
        await viewer.wait_frames(seen + 12, timeout(MOVE_SECONDS))
        assert set(where) == set(streams)  # no stream lost
        async with asyncio.timeout(timeout(60)):  # the killed worker comes back
            while not all(w.up for w in server.engine.workers):
                await asyncio.sleep(0.1)
    for v in viewers:
        await v.wait_frames(v.received + 6, timeout(10))
    body = await asyncio.to_thread(
        lambda: urllib.request.urlopen(server.url + "metrics", timeout=5).read().decode()
    )
    assert 'endless_worker_up{worker="w0"} 1.0' in body
    assert 'endless_worker_up{worker="w1"} 1.0' in body
    restarts = sum(w.generation - 1 for w in server.engine.workers)
    assert restarts == 5


async def test_a_ray_worker_upscales_an_image_stream_and_moves_it_with_its_sink(
    live_server, session
):
    """--engine ray with --upscale 2: the worker builds the stage, so a stream started from
    an image sends 256x256 frames; killed, its worker's stream comes back from its snapshot
    (the image in its sink) on a live worker, still at 256x256."""
    server = await live_server(engine="ray", workers=2, upscale=2, grace_seconds=5)
    s = await session(server.ws_url)
    buf = io.BytesIO()
    Image.fromarray(render_clip("a big green ring standing still in the ocean", 0.05)[0]).save(
        buf, format="PNG"
    )
    created = await s.create("moving left", image=buf.getvalue())
    assert created["prompt"] == "a green ring moving left"
    assert (created["width"], created["height"]) == (256, 256)
    sid = created["stream"]
    viewer = await s.watch(sid)
    assert (await viewer.wait_frames(12, timeout(30)))[0].image.shape == (256, 256, 3)
    old = (await listing(s))[sid]["worker_pid"]
    os.kill(old, signal.SIGKILL)
    async with asyncio.timeout(timeout(MOVE_SECONDS)):
        while (await listing(s)).get(sid, {}).get("worker_pid") in (None, old):
            await asyncio.sleep(0.1)
    seen = viewer.received
    frames = await viewer.wait_frames(seen + 12, timeout(MOVE_SECONDS))
    assert frames[-1].image.shape == (256, 256, 3) and sid in server.streams
