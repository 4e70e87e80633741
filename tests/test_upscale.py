"""The 2x upscaling stage: shapes, causality across chunks, the shipped weights against
bicubic, and `--upscale 2` through the stream, the render CLI, the engine's batching
worker (watermark after the stage) and the live server (frame ring, sizes, viewer)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from conftest import timeout

from memory.stream import Stream
from model.bundle import VideoModel
from model.errors import CheckpointError, ConfigError
from model.tinyworld.render import render_clip
from model.upscale import (
    UPSCALE_WEIGHTS,
    BicubicUpscaler,
    LearnedUpscaler2x,
    UpscaleNet,
    UpscalerConfig,
    load_net,
    resolve_upscaler,
)
from model.vae import frames_to_tensor, tensor_to_frames
from server.cli import main
from server.engine import OpenStream, StreamOpened
from server.engine_child import EngineParams, worker_for
from server.frame_ring import FrameRing
from server.provenance.watermark import detect_frames
from server.video_file import read_frames

CLIP = render_clip("a small green triangle bouncing in the desert", 1.0, 64, seed=4)  # held out


@pytest.fixture(scope="module")
def shipped():
    return LearnedUpscaler2x.load()


def test_the_shipped_weights_are_a_small_file_that_loads_strictly(tmp_path):
    """upscale2x.safetensors is under 1 MB; a file that is not an upscaler is refused."""
    assert UPSCALE_WEIGHTS.stat().st_size < 1_000_000
    assert isinstance(resolve_upscaler(2), LearnedUpscaler2x) and resolve_upscaler(1) is None
    with pytest.raises(ConfigError):
        resolve_upscaler(3)
    with pytest.raises(CheckpointError):
        load_net(tmp_path / "missing.safetensors")
    with pytest.raises(CheckpointError, match="not an endless upscaler"):
        load_net(UPSCALE_WEIGHTS.parent / "tiny.safetensors")


def test_upscaled_frames_are_twice_as_wide_and_high(shipped):
    """(T, H, W, 3) uint8 -> (T, 2H, 2W, 3) uint8, for the learned stage and bicubic."""
    for up in (shipped, BicubicUpscaler(2)):
        out, _ = up.upscale(CLIP[:5], None)
        assert out.shape == (5, 128, 128, 3) and out.dtype == np.uint8


def test_upscaling_chunk_by_chunk_equals_upscaling_the_whole_video(shipped):
    """Fed the same frames, chunks of 12 (with the carried state) give the whole's frames."""
    whole, _ = shipped.upscale(CLIP, None)
    state, parts = None, []
    for i in range(0, len(CLIP), 12):
        part, state = shipped.upscale(CLIP[i : i + 12], state)
        parts.append(part)
    assert np.array_equal(np.concatenate(parts), whole)


def test_frame_t_depends_on_frames_t_and_t_minus_1_only(shipped):
    """Changing frame 5 changes the output at frames 5 and 6 and nowhere else (causal)."""
    before, _ = shipped.upscale(CLIP[:10], None)
    changed = CLIP[:10].copy()
    changed[5] = 255 - changed[5]
    after, _ = shipped.upscale(changed, None)
    differs = [i for i in range(10) if not np.array_equal(before[i], after[i])]
    assert differs == [5, 6]


def test_an_untrained_network_is_exactly_bicubic():
    """The zero-initialised output layer makes a fresh network bicubic upsampling."""
    net = UpscaleNet(UpscalerConfig())
    ours, _ = LearnedUpscaler2x(net).upscale(CLIP[:3], None)
    base, _ = BicubicUpscaler(2).upscale(CLIP[:3], None)
    assert np.array_equal(ours, base)


def test_the_shipped_weights_are_nearer_the_renderers_256_frames_than_bicubic(shipped):
    """On a held-out scene as a stream shows it (rendered at 128, through the shipped VAE),
    the learned stage is nearer than bicubic to the same scene rendered at 256."""
    model = VideoModel.load_default(torch.float32)
    prompt = "a big cyan square moving right in the night"
    low = render_clip(prompt, 0.5, 128, seed=7)
    with torch.no_grad():
        z, _ = model.vae.encode(frames_to_tensor(low))
        shown = tensor_to_frames(model.vae.decode(z)[0])
    high = render_clip(prompt, 0.5, 256, seed=7)
    ours, _ = shipped.upscale(shown, None)
    base, _ = BicubicUpscaler(2).upscale(shown, None)

    def mse(a):
        return float(((a.astype(np.float64) - high) ** 2).mean())

    assert mse(ours) < 0.95 * mse(base)


def test_a_stream_with_the_stage_upscales_every_chunk_and_rewinds_exactly(shipped):
    """Stream(upscaler=) returns 2x frames; a rewind regenerates identical frames (the
    stage's state is kept per chunk like the decoder's)."""
    torch.manual_seed(0)
    model = VideoModel.from_seed(0, "micro")
    s = Stream(model, "a red circle", seed=1, upscaler=shipped)
    assert (s.out_height, s.out_width) == (128, 128)
    chunks = [s.next_chunk() for _ in range(3)]
    assert chunks[0].shape == (s.frames_per_chunk, 128, 128, 3)
    assert "upscale" in s.stats.ms
    s.rewind(1)
    assert np.array_equal(s.next_chunk(), chunks[1])
    assert np.array_equal(s.next_chunk(), chunks[2])


def test_render_cli_upscale_2_writes_frames_twice_the_size(tmp_path, capsys):
    """`endless render --upscale 2` on a 64x64 model writes a 128x128 video."""
    out = tmp_path / "up.mp4"
    args = [
        "render",
        "a red circle",
        "--model",
        "random:micro",
        "--seconds",
        "1",
        "--quiet",
        "--threads",
        "1",
    ]
    assert main([*args, "--upscale", "2", "-o", str(out)]) == 0
    assert "128x128" in capsys.readouterr().out
    frames = list(read_frames(out))
    assert len(frames) == 24 and frames[0].shape == (128, 128, 3)


def test_a_batching_engine_worker_upscales_each_stream_as_alone_then_marks_it(tiny_model):
    """The engine's worker (worker_for) with upscale 2, a watermark and batches of 3: the
    three streams (one started from an image) share forward passes, and each chunk sent is
    its offline Stream's upscaled chunk with the stream's mark added after the stage (so
    the mark is on the frames viewers get)."""
    # degrade off: on a loaded machine the load policy could take steps off (other frames)
    params = EngineParams(ahead_chunks=1, max_batch=3, upscale=2, watermark="test", degrade=False)
    worker = worker_for(tiny_model, params)
    marker = worker._mark.__self__  # the engine's StreamMarker
    image = render_clip("a big blue ring standing still in the snow", 0.05, 128)[0]
    prompts = {"a": "a red circle moving left", "b": "a blue ring moving up", "c": "a cyan square"}
    images = {"b": image}
    worker.start()
    got: dict[str, dict[int, np.ndarray]] = {k: {} for k in prompts}
    batched = 0
    try:
        for i, (k, p) in enumerate(prompts.items()):
            assert worker.submit(OpenStream(k, p, i, image=images.get(k)))
        deadline = time.monotonic() + timeout(60)
        while any(len(g) < 3 for g in got.values()) and time.monotonic() < deadline:
            r = worker.results.get(timeout=timeout(30))
            if isinstance(r, StreamOpened):
                assert (r.height, r.width) == (256, 256)
                continue
            got[r.stream_id].setdefault(r.chunk.index, r.chunk.frames)
            batched += r.ms.get("batch", 1) > 1
            assert "upscale" in r.ms
            worker.set_progress(r.stream_id, max(got[r.stream_id]))
    finally:
        assert worker.stop(timeout(10))
    assert batched > 0
    up = LearnedUpscaler2x.load()
    for i, (k, p) in enumerate(prompts.items()):
        offline = Stream(tiny_model, p, seed=i, image=images.get(k), upscaler=up)
        for c in range(3):
            expected = marker.watermarker.mark(offline.next_chunk(), marker.payload(k))
            assert got[k][c].shape == (12, 256, 256, 3)
            assert np.abs(got[k][c].astype(int) - expected.astype(int)).max() <= 2, (k, c)


async def test_serve_upscale_2_reports_and_sends_the_output_size(live_server, session, monkeypatch):
    """With upscale=2: hello and created report 256x256, the engine's frame ring has
    slots for 256x256 chunks and every chunk travels in one, and an aiortc viewer decodes
    256x256 frames that carry the stream's watermark."""
    shapes = []
    ring_read = FrameRing.read

    def read(self, slot, shape):
        shapes.append(tuple(shape))
        return ring_read(self, slot, shape)

    monkeypatch.setattr(FrameRing, "read", read)
    server = await live_server(upscale=2, server_name="test-server")
    assert server.engine.slot_bytes == 12 * 256 * 256 * 3
    s = await session(server.ws_url)
    hello = await s.request({"type": "hello"})
    assert (hello["width"], hello["height"], hello["upscale"]) == (256, 256, 2)
    created = await s.create("a red circle bouncing")
    assert (created["width"], created["height"]) == (256, 256)
    viewer = await s.watch(created["stream"])
    frames = await viewer.wait_frames(48, timeout(30))
    assert frames[0].image.shape == (256, 256, 3)
    found = detect_frames(np.stack([f.image for f in frames[:48]]))
    assert found.found and found.payload == server.marker.payload(created["stream"])
    assert shapes and set(shapes) == {(12, 256, 256, 3)}
