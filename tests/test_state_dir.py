"""`--state-dir`: a server started again on the directory brings its streams back under
the same ids and tokens, with the frame count going on and the scene continuing."""

from __future__ import annotations

import asyncio
import json
import math

import numpy as np
import pytest
import torch
from conftest import timeout

from memory.snapshot import StreamSnapshot
from memory.stream import Stream
from model.bundle import VideoModel
from model.tinyworld.steadiness import object_track
from server.state_dir import StateDir, StreamState

A = "a big red circle bouncing over the ocean"
B = "a small blue square moving left in the snow"


@pytest.fixture(scope="module")
def shipped():
    return VideoModel.load_default(torch.float32)


def wrap_distance(a, b) -> float:
    dx, dy = (abs(u - v) % 1.0 for u, v in zip(a, b, strict=True))
    return math.hypot(min(dx, 1 - dx), min(dy, 1 - dy))


def record_chunks(server) -> dict:
    """Every chunk each stream of `server` accepts, by (stream, chunk index)."""
    got: dict = {}
    for stream in server.streams.values():
        on_chunk = stream.on_chunk

        def hook(ready, stream=stream, on_chunk=on_chunk):
            on_chunk(ready)
            got.setdefault((stream.id, ready.chunk.index), ready.chunk.frames)

        stream.on_chunk = hook
    return got


async def test_a_restarted_server_brings_back_ids_tokens_frame_count_and_scene(
    live_server, session, shipped, tmp_path
):
    """Stop a server with two streams, start another on its state dir: the same ids and
    tokens, each stream's frames go on from the frame after the last one it showed, a
    viewer gets them, and the object moves <= 0.05 frame widths (median) between those
    two frames."""
    first = await live_server(model=shipped, state_dir=str(tmp_path))
    s = await session(first.ws_url)
    ids = [(await s.create(A, seed=k))["stream"] for k in (1, 2)]
    await s.prompt(ids[1], B)
    for k, sid in enumerate(ids):  # known tokens, to find them again after the restart
        first.streams[sid].control_token = f"control-{k}"
        first.streams[sid].view_token = f"view-{k}"
    before = record_chunks(first)
    await s.watch(ids[0], keep_images=False, token="view-0")
    async with asyncio.timeout(timeout(30)):  # each has shown more than a chunk
        while min(first.streams[sid].playout.next_frame for sid in ids) <= 14:
            await asyncio.sleep(0.05)
    shown = {sid: first.streams[sid].playout.next_frame for sid in ids}
    created = {sid: first.streams[sid].created for sid in ids}
    marks = {sid: first.marker.payload(sid) for sid in ids}
    await first.close()  # its clients still connected, as at a real shutdown
    assert any(e["type"] == "shutting_down" for e in s.events)
    saved = {p.name for p in tmp_path.iterdir()}
    assert saved == {f"{sid}{ext}" for sid in ids for ext in (".json", ".safetensors")}
    meta = {sid: json.loads((tmp_path / f"{sid}.json").read_text()) for sid in ids}

    second = await live_server(model=shipped, state_dir=str(tmp_path))
    assert sorted(second.streams) == sorted(ids)
    after = record_chunks(second)
    jumps = []
    for k, sid in enumerate(ids):
        live = second.streams[sid]
        assert (live.control_token, live.view_token) == (f"control-{k}", f"view-{k}")
        # its watermark's time is its creation's, before and after the restart
        assert live.created == meta[sid]["started"] == created[sid]
        assert second.marker.payload(sid) == marks[sid]
        frame = meta[sid]["frame"]
        assert frame >= shown[sid] and live.playout.next_frame == frame
        assert meta[sid]["chunk"] <= frame // live.fpc
        assert live.playout.plan.prompt_at(frame // live.fpc) == (A if k == 0 else B)
    s2 = await session(second.ws_url)
    viewer = await s2.watch(ids[0], token="view-0")  # the saved token watches again
    first_frame = await viewer.wait_index(meta[ids[0]]["frame"], timeout(20))
    assert viewer.index_of(first_frame) >= meta[ids[0]]["frame"]
    fpc = second.streams[ids[0]].fpc
    for sid in ids:
        frame = meta[sid]["frame"]  # > 0: each had shown more than a chunk
        async with asyncio.timeout(timeout(20)):
            while (sid, frame // fpc) not in after:
                await asyncio.sleep(0.05)
        last_shown = before[(sid, (frame - 1) // fpc)][(frame - 1) % fpc]
        a, b = object_track([last_shown, after[(sid, frame // fpc)][frame % fpc]])
        if not (np.isnan(a).any() or np.isnan(b).any()):
            jumps.append(wrap_distance(a, b))
    print("position jump at the resume point (fw):", [round(j, 4) for j in jumps])
    assert jumps and float(np.median(jumps)) <= 0.05, jumps
    metrics = second.metrics.render().decode()
    assert 'endless_state_files_total{result="resumed"} 2.0' in metrics


async def test_corrupt_and_foreign_state_files_are_reported_and_skipped(live_server, tmp_path):
    """A truncated snapshot, garbage JSON, another model's stream and a stray file are each
    logged and counted as skipped; the server starts and serves."""
    tiny = VideoModel.from_seed(0, "tiny")
    s = Stream(tiny, A)
    s.next_chunk()
    snapshot = s.snapshot().to_bytes()
    keeper = StateDir(tmp_path)

    good = StreamState("good", 0, 1, 12, False, ((0, A, "prompt"),), snapshot)
    keeper.save(good)
    keeper.save(StreamState("cut", 0, 1, 12, False, ((0, A, "prompt"),), snapshot))
    data = (tmp_path / "cut.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.json").write_text("{not json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "something else"}))
    snap = s.snapshot()
    foreign = StreamSnapshot(**{**snap.__dict__, "model": "wan-1.3b"}).to_bytes()
    wan = StreamState("wan", 0, 1, 12, False, ((0, A, "prompt"),), foreign)
    keeper.save(wan)
    server = await live_server(state_dir=str(tmp_path))
    assert sorted(server.streams) == ["good"]
    metrics = server.metrics.render().decode()
    assert 'endless_state_files_total{result="skipped"} 4.0' in metrics
    assert server.state == "ready"
