"""Start from an image: reading it safely, the render CLI's --image, a live create's
"image", and the shipped model continuing what the image shows."""

from __future__ import annotations

import base64
import io
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from memory.snapshot import StreamSnapshot
from memory.stream import Stream, continue_from, prepare_start_image
from model.bundle import VideoModel
from model.chunk_frames import ChunkFrames
from model.errors import ImageError
from model.still import fit_image, read_image, read_image_file
from model.tinyworld.reading import FrameReader
from model.tinyworld.render import World, render_clip
from model.tinyworld.spec import COLOUR_NAMES, SHAPES, parse_prompt
from model.upscale import LearnedUpscaler2x
from server.cli import main
from server.video_file import read_frames


def encoded(image: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt)
    return buf.getvalue()


def scene(prompt: str, seed: int = 0, size: int = 128) -> np.ndarray:
    return World(parse_prompt(prompt).attributes, seed, size).frame(0)


NOISE = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def micro():
    return VideoModel.from_seed(0, "micro")


def test_png_and_jpeg_decode_to_rgb_and_fit_the_frame():
    """A PNG reads back exactly, a JPEG closely; fitting covers the frame and crops."""
    img = scene("a big red circle standing still in the desert")
    assert np.array_equal(read_image(encoded(img)), img)
    jpeg = read_image(encoded(img, "JPEG"))
    assert jpeg.shape == img.shape and np.abs(jpeg.astype(int) - img).mean() < 4
    wide = np.zeros((100, 300, 3), np.uint8)
    wide[:, 100:200] = 255  # the middle third: what a centre crop keeps
    fitted = fit_image(wide, 64, 64)
    assert fitted.shape == (64, 64, 3) and fitted[:, 4:60].min() > 200


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "empty"),
        (b"GIF89a" + b"\0" * 40, "not a PNG or JPEG"),
        (b"hello, I am text", "not a PNG or JPEG"),
        (encoded(NOISE)[:1000], "cannot be decoded"),  # truncated
        (encoded(np.zeros((1, 4097, 3), np.uint8)), "limit is 4096x4096"),
        (b"\x89PNG" + b"\0" * (4 * 1024 * 1024), "the limit is"),  # over 4 MiB
    ],
)
def test_bad_huge_or_non_image_data_is_refused_with_bad_image(data, why):
    """Empty, foreign, truncated, too many pixels or too many bytes: ImageError (bad_image)."""
    with pytest.raises(ImageError) as err:
        read_image(data)
    assert err.value.code == "bad_image" and why in err.value.message


@pytest.mark.parametrize("side", [5000, 20000])
def test_a_huge_image_is_refused_before_its_pixels_are_decoded(side):
    """A tiny PNG whose header claims side x side pixels is refused from the header alone."""
    png = bytearray(encoded(np.zeros((2, 2, 3), np.uint8)))
    png[16:24] = side.to_bytes(4, "big") * 2  # IHDR width, height...
    png[29:33] = zlib.crc32(bytes(png[12:29])).to_bytes(4, "big")  # ...and its CRC
    with pytest.raises(ImageError, match="4096x4096"):
        read_image(bytes(png))


def test_the_prompt_keeps_said_words_and_takes_unsaid_colour_and_shape_from_the_image(micro):
    """'moving left' over a green ring becomes 'a green ring moving left'; said words win."""
    img = fit_image(scene("a big green ring standing still in the ocean"), 64, 64)
    assert micro.text.complete_from_image("moving left", img) == "a green ring moving left"
    assert micro.text.complete_from_image("a red ring", img) == "a red ring"
    assert micro.text.complete_from_image("", img) == "a green ring"


def test_an_image_start_shows_the_image_as_chunk_0_and_continues_from_it(micro):
    """An image start (no warm-up before it, though the sampler has one) is teacher
    forcing: continue_from with the image held for one chunk, chunk 0 shown; a rewind to
    chunk 0 gives the image again."""
    model = micro.with_sampler(warmup_chunks=1)
    img = scene("a big red square standing still in the snow", size=64)
    s = Stream(model, "moving left", seed=3, image=img)
    chunks = [s.next_chunk() for _ in range(3)]
    held = np.repeat(img[None], 3 * s.frames_per_chunk, axis=0)
    expect = continue_from(model.with_sampler(warmup_chunks=0), "moving left", held, 1, seed=3)
    assert np.array_equal(np.concatenate(chunks), expect)
    s.rewind(0)  # the image is given again, not generated
    assert np.array_equal(s.next_chunk(), chunks[0])
    model.with_sampler(warmup_chunks=0)


def test_a_snapshot_of_an_image_start_restores_its_sink_and_carries(micro):
    """A stream started from an image (no warm-up, though the sampler has one) and
    upscaled: its snapshot says so, and the restored stream's next chunks equal the
    original's after the same re-cache, bit for bit (the image is in the sink; the
    upscaler's carry travels too)."""
    model = micro.with_sampler(warmup_chunks=1)
    try:
        up = LearnedUpscaler2x.load()
        img = scene("a big cyan ring standing still in the sunset", size=64)
        orig = Stream(model, "moving down", seed=2, image=img, upscaler=up)
        for _ in range(3):
            orig.next_chunk()
        snap = StreamSnapshot.from_bytes(orig.snapshot().to_bytes())
        assert snap.warmup_chunks == 0 and snap.upscaler is not None
        restored = Stream.restore(model, snap, upscaler=up)
        assert restored.frames == orig.frames and restored.warmup_chunks == 0
        orig.cache.prompt_key = None  # the original re-caches where the restore does
        for _ in range(2):
            assert np.array_equal(restored.next_chunk(), orig.next_chunk())
    finally:
        micro.with_sampler(warmup_chunks=0)


def test_an_image_start_on_wan_parts_goes_through_wans_vae():
    """On Wan parts (Wan's VAE: 1 + 4k frames at a video's start) the image is held for
    the 9 frames of chunk 0 and the stream continues it as teacher forcing would; with an
    image there is no warm-up, so chunk 0 is the decoder's start (9 frames) even when the
    sampler has one."""
    from wan_tiny import tiny_stream_model

    model = tiny_stream_model()
    img = np.random.default_rng(1).integers(0, 255, (50, 90, 3), dtype=np.uint8)
    model.with_sampler(warmup_chunks=1)
    s = Stream(model, "a cat walking in the rain", seed=4, image=img)
    assert s.frames == ChunkFrames(9, 12)
    chunks = [s.next_chunk() for _ in range(2)]
    assert [c.shape for c in chunks] == [(9, 32, 64, 3), (12, 32, 64, 3)]
    held = np.repeat(fit_image(img, 32, 64)[None], 21, axis=0)
    model.with_sampler(warmup_chunks=0)
    expect = continue_from(model, "a cat walking in the rain", held, 1, seed=4)
    assert np.array_equal(np.concatenate(chunks), expect)


def test_render_cli_starts_from_an_image_and_refuses_a_bad_one(tmp_path, capsys):
    """`endless render --image` writes the video; a non-image file exits 2 with a reason."""
    good, bad = tmp_path / "start.png", tmp_path / "start.jpg"
    good.write_bytes(encoded(scene("a big blue circle standing still in the night", size=64)))
    bad.write_bytes(b"not an image at all")
    out = tmp_path / "a.mp4"
    args = [
        "render",
        "moving up",
        "--model",
        "random:micro",
        "--seconds",
        "1",
        "--quiet",
        "--threads",
        "1",
    ]
    assert main([*args, "--image", str(bad), "-o", str(out)]) == 2
    assert "not a PNG or JPEG" in capsys.readouterr().err
    assert main([*args, "--image", str(tmp_path / "none.png"), "-o", str(out)]) == 2
    assert "cannot read the image" in capsys.readouterr().err
    assert main([*args, "--image", str(good), "-o", str(out)]) == 0
    assert "a blue circle moving up" in capsys.readouterr().out
    assert len(list(read_frames(out))) == 24


@pytest.mark.parametrize(
    ("image", "why"),
    [
        ("%%% not base64 %%%", "base64"),
        (base64.b64encode(b"plain text, no image").decode(), "not a PNG or JPEG"),
        (base64.b64encode(b"x" * (5 * 1024 * 1024)).decode(), "over"),
    ],
)
async def test_live_create_refuses_a_bad_image_with_bad_image(live_server, session, image, why):
    """create with a bad "image" gets a bad_image error; the connection keeps working."""
    from client.session import ServerError

    server = await live_server()
    s = await session(server.ws_url)
    with pytest.raises(ServerError) as err:
        await s.request({"type": "create", "prompt": "moving up", "image": image})
    assert err.value.code == "bad_image" and why in err.value.message
    assert (await s.request({"type": "ping"}))["type"] == "pong"


async def test_live_create_starts_from_an_image(live_server, session):
    """create with a PNG "image" opens a stream whose prompt is completed from the image."""
    server = await live_server()
    s = await session(server.ws_url)
    png = encoded(scene("a small yellow triangle standing still in the forest"))
    created = await s.request(
        {"type": "create", "prompt": "moving up", "image": base64.b64encode(png).decode()}
    )
    assert created["prompt"] == "a yellow triangle moving up"
    assert (created["width"], created["height"]) == (128, 128)


@pytest.fixture(scope="module")
def shipped():
    return VideoModel.load_default(torch.float32)


@pytest.mark.parametrize(
    ("scene_prompt", "seed"),
    [
        ("a big magenta triangle standing still in the desert", 1),
        ("a small cyan ring standing still in the night", 2),  # a held-out triple
    ],
)
def test_the_first_chunk_after_an_image_start_reads_the_images_colour_and_shape(
    shipped, scene_prompt, seed
):
    """Shipped weights, prompt 'moving right' only: chunk 1 reads the image's colour,
    shape and background, its object within 0.1 frame widths of the image's."""
    attrs = parse_prompt(scene_prompt).attributes
    world = World(attrs, seed, 128)
    (x, y), _ = world.state(0)
    prompt, still = prepare_start_image(shipped, "moving right", world.frame(0))
    s = Stream(shipped, prompt, seed=seed, image=still)
    s.next_chunk()
    first = s.next_chunk()
    reader = FrameReader(128)
    reads = [reader.read(f) for f in first]
    colours = [COLOUR_NAMES[r.colour] for r in reads if r.colour >= 0]
    shapes = [SHAPES[r.shape] for r in reads if r.shape >= 0]
    assert colours.count(attrs.colour) >= 0.75 * len(first)
    assert shapes.count(attrs.shape) >= 0.75 * len(first)
    cx, cy = reads[0].centre
    assert np.hypot(cx - x % 1.0, cy - y % 1.0) < 0.1


def test_read_image_file_reads_a_rendered_frame(tmp_path):
    """A frame the renderer drew, saved as PNG, reads back as those pixels."""
    frame = render_clip("a big red circle bouncing over the ocean", 0.05, 32)[0]
    path = tmp_path / "f.png"
    path.write_bytes(encoded(frame))
    assert np.array_equal(read_image_file(str(path)), frame)


async def test_only_a_create_with_an_image_may_pass_the_message_limit(live_server, session):
    """A 100 KB ping (even one carrying "image") is too_big; a 100 KB create's image is read."""
    from client.session import ServerError

    server = await live_server()
    s = await session(server.ws_url)
    pad = base64.b64encode(b"x" * 100_000).decode()
    with pytest.raises(ServerError) as err:
        await s.request({"type": "ping", "image": pad})
    assert err.value.code == "too_big"
    with pytest.raises(ServerError) as err:
        await s.request({"type": "create", "prompt": "moving up", "image": pad})
    assert err.value.code == "bad_image"
