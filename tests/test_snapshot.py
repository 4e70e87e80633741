"""Stream snapshots (memory.snapshot): what they hold, that they round-trip, and that a
restored stream continues the same scene."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from memory.snapshot import SnapshotError, StreamSnapshot
from memory.stream import Stream
from model.bundle import VideoModel
from model.tinyworld.steadiness import object_track

A = "a big red circle bouncing over the ocean"
B = "a small blue square moving left in the snow"


@pytest.fixture(scope="module")
def shipped():
    """The shipped tiny weights, in fp32 (exact comparisons)."""
    return VideoModel.load_default(torch.float32)


def wrap_distance(a, b) -> float:
    dx, dy = (abs(u - v) % 1.0 for u, v in zip(a, b, strict=True))
    return math.hypot(min(dx, 1 - dx), min(dy, 1 - dy))


def test_a_snapshot_round_trips_through_bytes_and_is_small(tiny_model):
    """to_bytes/from_bytes give back every field and tensor; the tiny model's is < 400 kB."""
    s = Stream(tiny_model, A, seed=3)
    for _ in range(4):
        s.next_chunk()
    s.set_prompt(B)
    snap = s.snapshot()
    data = snap.to_bytes()
    back = StreamSnapshot.from_bytes(data)
    assert (back.chunk, back.seed, back.timeline) == (4, 3, ((0, A), (4, B)))
    assert back.head == s.cache.head
    assert back.frames == tuple(s.cache.context_frames())
    assert torch.equal(back.latents, snap.latents)
    assert all(torch.equal(a, b) for a, b in zip(back.decoder, snap.decoder, strict=True))
    assert len(data) < 400_000 and snap.nbytes <= len(data)


def test_a_restored_stream_makes_the_chunks_of_the_original_after_a_recache(shipped):
    """Restored mid-stream, a stream's next chunks equal, bit for bit, the original's when
    the original re-caches at the same chunk (what a restore does); the snapshot is all
    the state there is."""
    orig = Stream(shipped, A, seed=1)
    for _ in range(5):
        orig.next_chunk()
    restored = Stream.restore(shipped, StreamSnapshot.from_bytes(orig.snapshot().to_bytes()))
    orig.cache.prompt_key = None  # the original re-caches too
    for _ in range(3):
        assert np.array_equal(restored.next_chunk(), orig.next_chunk())
    assert restored.chunk_index == orig.chunk_index == 8


def test_a_restored_stream_keeps_the_object_where_it_was(shipped):
    """Against the original (no re-cache), a restore at chunk 4 moves the object by
    <= 0.05 frame widths at the resume point (median over seeds)."""
    jumps = []
    for seed in range(3):
        orig = Stream(shipped, A, seed=seed)
        for _ in range(4):
            orig.next_chunk()
        restored = Stream.restore(shipped, orig.snapshot())
        same = orig.next_chunk()
        after = restored.next_chunk()
        a, b = object_track([same[0]])[0], object_track([after[0]])[0]
        if not np.isnan(a).any() and not np.isnan(b).any():
            jumps.append(wrap_distance(a, b))
    assert jumps and float(np.median(jumps)) <= 0.05, jumps


def test_a_restored_stream_cannot_rewind_before_its_snapshot_but_can_after(tiny_model):
    """min_rewind_chunk starts at the snapshot's chunk; a rewind to it regenerates exactly."""
    orig = Stream(tiny_model, A, seed=2)
    for _ in range(4):
        orig.next_chunk()
    restored = Stream.restore(tiny_model, orig.snapshot())
    assert restored.min_rewind_chunk == 4
    first = restored.next_chunk()
    restored.next_chunk()
    restored.rewind(4)
    assert np.array_equal(restored.next_chunk(), first)


def test_foreign_and_corrupt_snapshots_are_refused_with_a_snapshot_error(tiny_model):
    """Garbage, a truncated file and another model's snapshot raise SnapshotError."""
    s = Stream(tiny_model, A)
    s.next_chunk()
    data = s.snapshot().to_bytes()
    for bad in (b"", b"not a snapshot at all", data[: len(data) // 2]):
        with pytest.raises(SnapshotError):
            StreamSnapshot.from_bytes(bad)
    snap = StreamSnapshot.from_bytes(data)
    foreign = StreamSnapshot(**{**snap.__dict__, "model": "wan-1.3b"})
    with pytest.raises(SnapshotError):
        Stream.restore(tiny_model, foreign)
    misfit = StreamSnapshot(**{**snap.__dict__, "latents": snap.latents[:1]})
    with pytest.raises(SnapshotError):
        Stream.restore(tiny_model, misfit)
