"""The stutter diagnostic: even motion reads 1, a staircase track reads far more."""

from __future__ import annotations

import numpy as np

from model.tinyworld.render import render_clip
from model.tinyworld.steadiness import object_track, steps_by_phase, stutter


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
