"""Start from an image on the live server: the image travels in the create request to the
engine process, an aiortc viewer sees the stream continue it, a bad image is refused
while other streams and viewers go on, and an image stream survives an engine restart
and a server restart (its sink holds the image; before any snapshot, the image itself)."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import signal
import zlib

import numpy as np
import pytest
import torch
from conftest import timeout
from PIL import Image

from client.session import ServerError
from memory.stream import Stream, prepare_start_image
from model.bundle import VideoModel
from model.tinyworld.reading import FrameReader
from model.tinyworld.render import World
from model.tinyworld.spec import COLOUR_NAMES, SHAPES, parse_prompt
from server.live import LiveStream


@pytest.fixture(scope="module")
def shipped():
    return VideoModel.load_default(torch.float32)


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def scene(prompt: str, seed: int = 0) -> np.ndarray:
    return World(parse_prompt(prompt).attributes, seed, 128).frame(0)


def share_reading(frames, colour: str, shape: str) -> float:
    """The share of frames the TinyWorld reader reads as `colour` and `shape` (frames
    larger than 128 are averaged down to 128 first)."""
    reader, hits = FrameReader(128), 0
    for f in frames:
        f = np.asarray(f)
        k = f.shape[0] // 128
        if k > 1:
            f = f.reshape(128, k, 128, k, 3).mean(axis=(1, 3)).round().astype(np.uint8)
        r = reader.read(f)
        hits += (
            r.colour >= 0
            and r.shape >= 0
            and (COLOUR_NAMES[r.colour], SHAPES[r.shape])
            == (
                colour,
                shape,
            )
        )
    return hits / max(1, len(frames))


def record_chunks(monkeypatch) -> list:
    """Every chunk any live stream gets from the engine: [(stream, index, frames)]."""
    got: list = []
    on_chunk = LiveStream.on_chunk

    def hook(self, ready):
        got.append((self.id, ready.chunk.index, ready.chunk.frames))
        on_chunk(self, ready)

    monkeypatch.setattr(LiveStream, "on_chunk", hook)
    return got


async def wait_for(condition, seconds: float) -> None:
    async with asyncio.timeout(timeout(seconds)):
        while not condition():
            await asyncio.sleep(0.02)


async def test_a_live_create_with_an_image_opens_on_it_and_a_viewer_sees_it_go_on(
    live_server, session, shipped, monkeypatch
):
    """create with a PNG: the prompt comes back completed from the image, the engine
    process makes the chunks an offline Stream started from that image makes (chunk 0:
    the image through the VAE), and an aiortc viewer's frames read as the image's
    yellow triangle."""
    got = record_chunks(monkeypatch)
    server = await live_server(model=shipped, watermark=False)
    s = await session(server.ws_url)
    image = scene("a small yellow triangle standing still in the forest")
    created = await s.create("moving up", image=png(image))
    assert created["prompt"] == "a yellow triangle moving up"
    assert (created["width"], created["height"], created["first_chunk_frames"]) == (128, 128, 12)
    sid = created["stream"]
    viewer = await s.watch(sid)
    frames = await viewer.wait_frames(36, timeout(30))
    await wait_for(lambda: {0, 1} <= {k for i, k, _ in got if i == sid}, 10)
    prompt, still = prepare_start_image(shipped, "moving up", image)
    offline = Stream(shipped, prompt, seed=0, image=still)
    for k in (0, 1):
        live = next(f for i, c, f in got if (i, c) == (sid, k))
        assert np.abs(live.astype(int) - offline.next_chunk().astype(int)).max() <= 1, k
    assert np.abs(got[0][2].astype(int) - still).mean() < 12  # chunk 0: the image, held
    assert share_reading([f.image for f in frames], "yellow", "triangle") >= 0.75


async def test_a_bad_image_gets_bad_image_while_the_stream_and_its_viewers_go_on(
    live_server, session
):
    """Not base64, not an image, truncated, or claiming 20000 x 20000 pixels: each create
    gets bad_image and makes no stream; another connection's stream and its viewer keep
    getting frames, and both connections keep working (a good image then opens)."""
    server = await live_server()
    owner = await session(server.ws_url)
    sid = (await owner.create("a big red circle bouncing over the ocean"))["stream"]
    viewer = await owner.watch(sid, keep_images=False)
    await viewer.wait_frames(12, timeout(20))
    good = png(scene("a big blue square standing still in the snow"))
    huge = bytearray(png(np.zeros((2, 2, 3), np.uint8)))
    huge[16:24] = (20000).to_bytes(4, "big") * 2  # IHDR width and height, and its CRC
    huge[29:33] = zlib.crc32(bytes(huge[12:29])).to_bytes(4, "big")
    other = await session(server.ws_url)
    for bad in ("%%% not base64 %%%", b"plain text, no image", good[:300], bytes(huge)):
        text = bad if isinstance(bad, str) else base64.b64encode(bad).decode()
        msg = {"type": "create", "prompt": "moving up", "image": text}
        with pytest.raises(ServerError) as err:
            await other.request(msg)
        assert err.value.code == "bad_image", err.value.message
        received = viewer.received
        await viewer.wait_frames(received + 6, timeout(10))
    assert list(server.streams) == [sid]
    assert (await owner.request({"type": "ping"}))["type"] == "pong"
    created = await other.create("moving up", image=good)
    assert created["prompt"] == "a blue square moving up" and len(server.streams) == 2


async def test_an_image_stream_survives_engine_restarts_from_its_snapshot_and_its_image(
    live_server, session, shipped, monkeypatch
):
    """SIGKILL the engine under an image stream: restored from its snapshot, it goes on
    reading as the image's green ring. SIGKILL it again with no snapshot kept (as when the
    engine dies before one holds the image): the restore command carries the image, and
    the new engine's chunks are those of an offline Stream started from that image."""
    got = record_chunks(monkeypatch)
    server = await live_server(model=shipped, watermark=False, engine_max_deaths=4)
    restarted = server._engine_restarted
    server._engine_restarted = lambda info: (got.clear(), restarted(info))
    s = await session(server.ws_url)
    image = scene("a big green ring standing still in the ocean")
    created = await s.create("moving left", image=png(image))
    assert created["prompt"] == "a green ring moving left"
    sid = created["stream"]
    viewer = await s.watch(sid, history=240)
    await viewer.wait_frames(24, timeout(20))
    live = server.streams[sid]
    prompt, still = prepare_start_image(shipped, "moving left", image)
    assert np.array_equal(live.image, still)

    for kill in range(2):
        if kill == 1:  # as if no snapshot held the image yet
            live.snapshots.clear()
            command = live.restore_command()
            assert command.snapshot is None and np.array_equal(command.image, still)
        os.kill(server.engine.pid, signal.SIGKILL)
        await wait_for(lambda k=kill: len(live.resumes) > k, 20)
        await viewer.wait_index(live.resumes[kill] + 12, timeout(10))
        after = [f for i, _, f in got if i == sid]
        assert share_reading(np.concatenate(after), "green", "ring") >= 0.75, kill
    assert sid in server.streams and server.engine.restarts == 2
    made = sorted({k: f for i, k, f in got if i == sid}.items())
    assert made[0][0] == 0  # the new engine started the stream again, from the image
    offline = Stream(shipped, prompt, seed=0, image=still)
    for k, frames in made:
        expected = offline.next_chunk()
        assert np.abs(frames.astype(int) - expected.astype(int)).max() <= 1, k


async def test_an_upscaled_image_stream_comes_back_from_the_state_dir(
    live_server, session, shipped, tmp_path
):
    """A server with --upscale 2 and a state dir: an image stream saved at shutdown comes
    back under a new server at 256 x 256 (hello and the stream say so) and a viewer's
    frames still read as the image's magenta circle."""
    first = await live_server(model=shipped, state_dir=str(tmp_path), upscale=2)
    s = await session(first.ws_url)
    image = scene("a big magenta circle standing still in the desert")
    created = await s.create("moving right", image=png(image))
    assert created["prompt"] == "a magenta circle moving right"
    assert (created["width"], created["height"]) == (256, 256)
    sid, token = created["stream"], created["view_token"]
    await wait_for(lambda: first.streams[sid].playout.next_frame > 14, 30)
    await first.close()
    assert (tmp_path / f"{sid}.json").is_file()

    second = await live_server(model=shipped, state_dir=str(tmp_path), upscale=2)
    assert list(second.streams) == [sid]
    live = second.streams[sid]
    assert (live.width, live.height) == (256, 256)
    s2 = await session(second.ws_url)
    hello = await s2.request({"type": "hello"})
    assert (hello["width"], hello["height"], hello["upscale"]) == (256, 256, 2)
    viewer = await s2.watch(sid, token=token)
    frames = await viewer.wait_frames(24, timeout(30))
    assert frames[0].image.shape == (256, 256, 3)
    assert share_reading([f.image for f in frames], "magenta", "circle") >= 0.75
