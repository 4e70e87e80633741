"""The stutter diagnostic: even motion reads 1, a staircase track reads far more."""

from __future__ import annotations

import numpy as np

from model.tinyworld.render import render_clip
from model.tinyworld.steadiness import (
    angles_between,
    chunk_velocities,
    object_track,
    steps_by_phase,
    stutter,
    turns,
)


def test_rendered_motion_is_even_and_wraps_the_short_way_round():
    frames = render_clip("a big red square moving left over the ocean", 2.0, size=64, seed=3)
    track = object_track(frames)
    assert not np.isnan(track).any()
    across, within = steps_by_phase(track, 4)
    speed = 0.25 / 24  # fw per frame
    assert np.allclose(np.concatenate([across, within]), speed, atol=0.004)  # edge: no 1.0
    assert abs(stutter([track], 4) - 1.0) < 0.1


def test_a_staircase_track_stutters_and_a_still_object_has_no_figure():
    t = np.arange(48)
    stairs = np.stack([(0.2 + 0.01 * (t // 4 * 4)) % 1.0, np.full(48, 0.5)], axis=1)
    assert stutter([stairs], 4) is None  # no step within latent frames at all
    stairs[:, 0] += 0.001 * (t % 4)  # a little motion within, the rest at the boundary
    assert stutter([stairs], 4) > 5
    still = np.full((48, 2), 0.5)
    assert stutter([still], 4) is None
    missing = stairs.copy()
    missing[5] = np.nan  # steps to and from a frame without an object are left out
    across, within = steps_by_phase(missing, 4)
    assert len(across) == 11 and len(within) == 36 - 2 and not np.isnan(within).any()


def test_chunk_velocities_and_turns_follow_the_rendered_motion():
    """Straight motion: its velocity in every chunk, across the edge, and no turn; circling
    turns 45 degrees per half-second chunk (0.25 turns/s); still objects have no turn."""
    left = object_track(
        render_clip("a big red square moving left over the ocean", 6.0, size=64, seed=3)
    )
    v = chunk_velocities(left, 12, 24)
    assert v.shape == (12, 2)
    assert np.allclose(v, [-0.25, 0.0], atol=0.02)  # 6 s at 0.25 fw/s crosses an edge
    assert np.nanmax(turns(v)) < 5
    circle = object_track(
        render_clip("a big red square circling over the ocean", 4.0, size=64, seed=3)
    )
    v = chunk_velocities(circle, 12, 24)
    speed = 2 * np.pi * 0.25 * 0.25  # radius 0.25 W, 0.25 turns/s
    assert np.allclose(np.hypot(*v.T), speed, rtol=0.1)
    assert np.allclose(turns(v), 45, atol=3)
    still = object_track(
        render_clip("a big red square standing still over the ocean", 2.0, size=64, seed=3)
    )
    assert np.isnan(turns(chunk_velocities(still, 12, 24))).all()
    gap = left.copy()
    gap[12:22] = np.nan  # a chunk with 2 frames of the object has no velocity
    v = chunk_velocities(gap, 12, 24)
    assert np.isnan(v[1]).all() and not np.isnan(v[0]).any()


def test_eval_motion_reads_rendered_bounces_as_bounces():
    """ops/experiments/eval_motion.py's per-chunk figures on the renderer's truth: every chunk of a
    bounce read as bouncing, at its speed, turning only where it meets an edge."""
    from ops.experiments.eval_motion import describe, summary

    frames = render_clip("a small red square bouncing over the ocean", 6.0, size=64, seed=5)
    d = describe(object_track(frames), "bouncing")
    assert d["reads"] == ["bouncing"] * 12 and d["read_as_asked"] == 1.0
    s = summary([d])
    assert abs(s["median_speed_fw_s"] - np.hypot(0.25, 0.18)) < 0.02
    assert s["median_turn_deg"] < 5  # straight between edges
    assert describe(object_track(frames), "circling")["read_as_asked"] == 0.0


def test_angles_between_velocities():
    a = np.array([[0.25, 0.0], [0.25, 0.0], [0.01, 0.0], [np.nan, np.nan]])
    b = np.array([[0.0, -0.25], [-0.25, 0.0], [0.25, 0.0], [0.25, 0.0]])
    angles = angles_between(a, b)
    assert np.allclose(angles[:2], [90.0, 180.0])
    assert np.isnan(angles[2:]).all()  # too slow to have a direction, or no velocity
