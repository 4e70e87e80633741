"""Frame arithmetic of chunks whose first holds fewer frames (Wan's VAE: 9, then 12), and
the playout and evaluator that use it."""

from __future__ import annotations

import numpy as np

from model.chunk_frames import ChunkFrames
from model.storyboard import chunk_at
from server.playout import Chunk, Playout

WAN = ChunkFrames(9, 12)


def test_starts_and_chunks_of_frames():
    """Chunk k starts at 0, 9, 21, 33, ...; frames map back to their chunk and offset."""
    assert [WAN.start(k) for k in range(4)] == [0, 9, 21, 33]
    assert [WAN.chunk_of(f) for f in (0, 8, 9, 20, 21, 32, 33)] == [0, 0, 1, 1, 2, 2, 3]
    assert [WAN.offset(f) for f in (0, 8, 9, 20, 21)] == [0, 8, 0, 11, 0]
    assert WAN.chunks_for(33) == 3 and WAN.chunks_for(34) == 4 and WAN.chunks_for(9) == 1


def test_switch_times_land_on_the_first_boundary_at_or_after_them():
    """At 16 fps a switch at 0.5 s (frame 8) starts chunk 1 (frame 9), at 0.5625 s too,
    at 0.6 s chunk 2 (frame 21); a constant count keeps the old arithmetic."""
    assert [chunk_at(t, 16, WAN) for t in (0, 0.5, 0.5625, 0.6)] == [0, 1, 1, 2]
    assert chunk_at(20.01, 24, 12) == 41 == chunk_at(20.01, 24, ChunkFrames(12, 12))


def chunk(k: int, epoch: int = 0) -> Chunk:
    return Chunk(k, epoch, np.full((WAN.count(k), 2, 2, 3), k, np.uint8))


def test_playout_plays_a_9_frame_first_chunk_then_12s_and_switches_on_boundaries():
    """Frames come out in order across the 9-frame first chunk; a prompt switch lands on
    the next boundary (9 + 12k) and a storyboard time on the nearest one."""
    p = Playout("a cat", WAN, 16, ahead_chunks=2)
    for k in range(3):
        assert p.accept(chunk(k))
    shown = [p.step() for _ in range(10)]
    assert [s.index for s in shown] == list(range(10))
    assert [int(s.image[0, 0, 0]) for s in shown] == [0] * 9 + [1]
    assert p.play_chunk == 1 and p.buffered_frames == 11 + 12
    frame, change = p.set_prompt("a dog")
    assert (frame, change.rewind_to) == (21, 2)
    frames, _ = p.set_storyboard([(2.0, "a bird")])  # frame 32: nearest boundary 33
    assert frames == [33]


def test_the_evaluator_scores_chunks_as_the_vae_cut_them():
    """33 frames are 3 whole chunks of 9 + 12 + 12 but only 2 of 12: the evaluator scores
    the chunks it is told of, and reads rendered truth as its prompt either way."""
    from model.tinyworld.evaluate import evaluate_frames
    from model.tinyworld.render import render_clip

    prompt = "a big red circle bouncing over the ocean"
    frames = render_clip(prompt, 33 / 24, size=64, seed=1)
    wan = evaluate_frames(frames, [(0.0, prompt)], chunk_frames=WAN)
    tiny = evaluate_frames(frames, [(0.0, prompt)], chunk_frames=12)
    assert (wan.chunks_scored, tiny.chunks_scored) == (3, 2)
    assert wan.adherence["colour"] == tiny.adherence["colour"] == 1.0
