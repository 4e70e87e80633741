"""`endless verify` on files endless rendered and on files it never touched; live viewers'
frames carry their stream's mark."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

import numpy as np
import pytest
from conftest import timeout

from model.tinyworld.render import render_clip
from server.cli import main
from server.provenance.marking import StreamMarker
from server.provenance.payload import Payload
from server.provenance.watermark import detect_frames
from server.video_file import Mp4Writer
from server.worker import ChunkReady, GenerationWorker, OpenStream

PROMPT = "a big red circle bouncing over the ocean"


def render(tmp_path, name: str, *extra: str) -> str:
    out = str(tmp_path / name)
    args = ["render", PROMPT, "--seconds", "2", "-o", out, "--model", "random:tiny"]
    assert main([*args, "--threads", "1", "--quiet", *extra]) == 0
    return out


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """A 2 s render with the watermark and a (development-key) C2PA manifest."""
    tmp = tmp_path_factory.mktemp("render")
    return render(tmp, "marked.mp4", "--state-dir", str(tmp / "state"))


def verify(path, capsys) -> tuple[int, dict]:
    rc = main(["verify", path])
    return rc, json.loads(capsys.readouterr().out)


def test_verify_finds_the_mark_and_manifest_of_a_render(rendered, capsys):
    """A rendered file: exit 0, the payload printed as JSON, and the C2PA manifest naming
    endless and the model."""
    rc, report = verify(rendered, capsys)
    assert rc == 0
    mark = report["watermark"]
    assert mark["found"] and mark["frames"] == 48
    assert set(mark["payload"]) == {"server", "stream", "time"}
    c2pa = report["c2pa"]
    assert c2pa["generator"] == ["endless"] and c2pa["provenance"]["model"] == "random:tiny"
    assert c2pa["provenance"]["watermark"] == mark["payload"]


def test_verify_exits_1_on_a_file_endless_did_not_make(tmp_path, capsys):
    """A renderer clip written straight to MP4 (never marked): exit 1, no payload, no manifest."""
    path = tmp_path / "foreign.mp4"
    with Mp4Writer(path, 24, 128, 128) as w:
        w.write(render_clip("a small green triangle moving up in the snow", 3.0, seed=2))
    rc, report = verify(str(path), capsys)
    assert rc == 1
    assert not report["watermark"]["found"] and "payload" not in report["watermark"]
    assert report["c2pa"] is None


def test_verify_exits_2_on_a_file_that_is_not_a_video(tmp_path, capsys):
    """Not a video (or missing): exit 2 with an error, no traceback."""
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all")
    assert main(["verify", str(junk)]) == 2
    assert main(["verify", str(tmp_path / "missing.mp4")]) == 2
    assert "error" in capsys.readouterr().err


def test_no_watermark_render_is_logged_and_not_found(tmp_path, capsys, caplog):
    """--no-watermark: a WARNING says so, and verify finds nothing in the file."""
    with caplog.at_level(logging.WARNING):
        out = render(tmp_path, "plain.mp4", "--no-watermark", "--no-c2pa")
    assert any("watermark OFF" in r.message for r in caplog.records)
    capsys.readouterr()
    rc, report = verify(out, capsys)
    assert rc == 1 and report["c2pa"] is None


async def test_live_viewer_frames_carry_the_streams_mark(live_server, session):
    """What a WebRTC viewer decodes (VP8) carries the server's payload for that stream."""
    server = await live_server(server_name="test-server")
    s = await session(server.ws_url)
    created = await s.create(PROMPT)
    viewer = await s.watch(created["stream"])
    frames = await viewer.wait_frames(48, timeout(20))
    found = detect_frames(np.stack([f.image for f in frames[:48]]))
    assert found.found
    assert found.payload == server.marker.payload(created["stream"])
    live = server.streams[created["stream"]]
    assert found.payload.minutes == Payload.make("test-server", live.id, live.created).minutes
    assert live.restore_command().started == live.created  # a new engine marks the same


def test_the_engine_marks_with_the_streams_creation_time_not_its_own(tiny_model):
    """A stream's payload carries the minute it was created, handed to the engine with the
    stream (so an engine started later, after a crash, marks the very same payload)."""
    created = datetime(2025, 6, 1, 12, 30, 5, tzinfo=UTC).timestamp()
    worker = GenerationWorker(tiny_model, 8, 8, 16, 1, lambda: None, StreamMarker("srv").mark)
    worker.start()
    frames = []
    try:
        assert worker.submit(OpenStream("s1", PROMPT, 0, started=created))
        while len(frames) < 48:
            r = worker.results.get(timeout=timeout(20))
            if isinstance(r, ChunkReady):
                frames.extend(r.chunk.frames)
    finally:
        assert worker.stop(timeout(10))
    found = detect_frames(np.stack(frames[:48]))
    assert found.found and found.payload == Payload.make("srv", "s1", created)
    assert found.payload.as_dict()["time"] == "2025-06-01T12:30Z"


async def test_live_no_watermark_is_logged(live_server, caplog):
    """watermark=False (serve --no-watermark): no marker, and a WARNING says so."""
    with caplog.at_level(logging.WARNING):
        server = await live_server(watermark=False)
    assert server.marker is None
    assert any("watermark OFF" in r.message for r in caplog.records)
