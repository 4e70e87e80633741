"""How evenly the object moves from frame to frame: a diagnostic beside the evaluator.

A causal VAE that packs `period` frames into one latent frame can draw the object almost
still within those frames and jump between them, a staircase track. The evaluator reads
motion from the object's track over a chunk, so a staircase blurs the line between
motions (bouncing, circling and the straight ones differ by a few pixels over a chunk).
The *stutter* is the object's mean frame-to-frame step across latent-frame boundaries
over its mean step within latent frames: 1.0 on rendered truth, more for a staircase.

From chunk to chunk: `chunk_velocities` fits the object's velocity in each chunk and
`turns` the angle its direction turns from one chunk to the next. A bounce keeps its
direction except at an edge, circling turns 45 degrees per half-second chunk, and the
straight motions never turn; a model that keeps its speed but not its direction turns
a little in every chunk.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from model.tinyworld.reading import FrameReader


def object_track(frames: Iterable[np.ndarray]) -> np.ndarray:
    """The object's centre per frame, (n, 2) in [0, 1), NaN where none is found."""
    reader, out = None, []
    for img in frames:
        reader = reader or FrameReader(img.shape[0])
        centre = reader.read(img).centre
        out.append(centre if centre is not None else (np.nan, np.nan))
    return np.asarray(out, dtype=float).reshape(-1, 2)


def steps_by_phase(track: np.ndarray, period: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame-to-frame steps (frame widths, across the wrap-around edges) of a track that
    starts on a latent-frame boundary: (steps across boundaries, steps within)."""
    dx = np.diff(track, axis=0)
    dx = (dx + 0.5) % 1.0 - 0.5  # the shorter way round the wrapping world
    step = np.hypot(dx[:, 0], dx[:, 1])
    found = ~np.isnan(step)
    across = (np.arange(len(step)) % period) == period - 1
    return step[found & across], step[found & ~across]


def stutter(tracks: Iterable[np.ndarray], period: int) -> float | None:
    """Pooled mean step across latent-frame boundaries / mean step within them; None
    when the object hardly moves within latent frames (e.g. all standing still)."""
    across, within = [np.empty(0)], [np.empty(0)]
    for track in tracks:
        a, w = steps_by_phase(track, period)
        across.append(a)
        within.append(w)
    a, w = np.concatenate(across), np.concatenate(within)
    if len(a) == 0 or len(w) == 0 or w.mean() <= 1e-4:
        return None
    return float(a.mean() / w.mean())


def chunk_velocities(track: np.ndarray, chunk_frames: int, fps: int) -> np.ndarray:
    """The object's least-squares velocity (frame widths per second) in each whole chunk
    of `track` (n, 2), unwrapped across the edges: (n // chunk_frames, 2), NaN for a
    chunk where fewer than 3 frames hold the object."""
    n = len(track) // chunk_frames
    out = np.full((n, 2), np.nan)
    t = np.arange(chunk_frames) / fps
    for k in range(n):
        seg = track[k * chunk_frames : (k + 1) * chunk_frames]
        found = ~np.isnan(seg[:, 0])
        if found.sum() < 3:
            continue
        p = np.unwrap(seg[found], period=1.0, axis=0)
        out[k] = np.polyfit(t[found], p, 1)[0]
    return out


def angles_between(a: np.ndarray, b: np.ndarray, min_speed: float = 0.05) -> np.ndarray:
    """Degrees (0..180) between the velocities a[i] and b[i] (both (n, 2)); NaN where
    either is missing or slower than `min_speed` fw/s."""
    sa, sb = np.hypot(*a.T), np.hypot(*b.T)
    cos = (a * b).sum(1) / np.maximum(sa * sb, 1e-12)
    angle = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
    return np.where((sa >= min_speed) & (sb >= min_speed), angle, np.nan)


def turns(velocities: np.ndarray, min_speed: float = 0.05) -> np.ndarray:
    """Degrees (0..180) the direction turns between consecutive chunks' velocities; NaN
    where either chunk has no velocity or moves slower than `min_speed` fw/s."""
    return angles_between(velocities[:-1], velocities[1:], min_speed)
