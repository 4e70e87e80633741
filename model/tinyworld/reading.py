"""What one TinyWorld frame shows, and what motion a track of object centres follows.

A frame is read on its own (`FrameReader`): background = the base colour nearest to most
border pixels; colour = the palette colour nearest to most pixels far from their row's
background; then the largest wrap-aware connected region of that colour gives the shape
(best match of its coverage against the four shapes at its area and centroid), the size
(side of that shape) and the centre. Coverage is measured along the line from background
to colour, so blur from anti-aliasing or H.264's chroma subsampling moves it without
losing it. `read_motion` fits a chunk's unwrapped track of centres to each motion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from model.tinyworld.render import (
    BOUNCE_SPEED,
    CIRCLE_RADIUS,
    CIRCLE_TURNS_PER_S,
    DIRECTIONS,
    base_rows,
    shape_distance,
)
from model.tinyworld.spec import BACKGROUND_NAMES, COLOUR_NAMES, COLOURS, MOTIONS, SHAPES, SIZES

FAR_FROM_BACKGROUND = 30.0  # RGB distance from the row's own background (its median)
NEAR_COLOUR = 75.0  # RGB distance to a palette colour (palette colours are >= 128 apart)
OFF_LINE = 60.0  # RGB distance off the background->colour line still counted as a blend
MIN_OBJECT_FRACTION = 0.2  # of a small square's area, to say "there is an object"
MAX_TRACK_RMS = 0.02  # fw; worse fits than this read as "no recognisable motion"


# --- one frame -------------------------------------------------------------------------


@dataclass(frozen=True)
class FrameRead:
    """What one frame shows; indices into the spec tables, -1 for "nothing readable"."""

    background: int
    colour: int = -1
    shape: int = -1
    size: int = -1
    centre: tuple[float, float] | None = None  # (x, y) in [0, 1)


# Area of each shape over its bounding box (ring: inner diameter 0.5 x outer).
_FILL = {"circle": math.pi / 4, "square": 1.0, "triangle": 0.5, "ring": math.pi / 4 * 0.75}


def _sq(a: np.ndarray) -> np.ndarray:
    """Squared length over a trailing axis of 3 (faster than a reduce)."""
    return a[..., 0] ** 2 + a[..., 1] ** 2 + a[..., 2] ** 2


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a[..., 0] * b[..., 0] + a[..., 1] * b[..., 1] + a[..., 2] * b[..., 2]


def _blur(a: np.ndarray) -> np.ndarray:
    """[1, 2, 1] / 4 blur along both axes (zero outside)."""
    b = 2 * a
    b[1:] += a[:-1]
    b[:-1] += a[1:]
    c = 2 * b
    c[:, 1:] += b[:, :-1]
    c[:, :-1] += b[:, 1:]
    return c / 16


def _arc(occupied: np.ndarray) -> tuple[int, int]:
    """Shortest circular interval (start, length) covering every True entry."""
    idx = np.flatnonzero(occupied)
    n = occupied.size
    gaps = np.diff(idx, append=idx[0] + n)
    k = int(np.argmax(gaps))
    if gaps[k] == 1:  # every index occupied
        return 0, n
    return int(idx[(k + 1) % idx.size]), n - int(gaps[k]) + 1


def _components(s: np.ndarray, e: np.ndarray, r: np.ndarray, size: int) -> np.ndarray:
    """Label 4-connected runs (row r, columns [s, e)) on a torus; returns a label per run."""
    n = s.size
    w = size + 1
    key_s, key_e = r * w + s, r * w + e
    above = (r - 1) % size
    lo = np.searchsorted(key_e, above * w + s, side="right")
    hi = np.searchsorted(key_s, above * w + e, side="left")
    counts = np.maximum(hi - lo, 0)
    b = np.repeat(np.arange(n), counts)
    a = (
        np.repeat(lo, counts)
        + np.arange(counts.sum())
        - np.repeat(np.cumsum(counts) - counts, counts)
    )
    left, right = np.flatnonzero(s == 0), np.flatnonzero(e == size)  # across the side edge
    both = np.intersect1d(r[left], r[right])
    if both.size:
        a = np.concatenate([a, left[np.isin(r[left], both)]])
        b = np.concatenate([b, right[np.isin(r[right], both)]])
    labels = np.arange(n)
    if a.size == 0:
        return labels
    while True:
        m = np.minimum(labels[a], labels[b])
        new = labels.copy()
        np.minimum.at(new, a, m)
        np.minimum.at(new, b, m)
        new = new[new]
        if np.array_equal(new, labels):
            return labels
        labels = new


class FrameReader:
    """Reads frames of one size; precomputes the per-row colours of every background."""

    def __init__(self, size: int):
        self.size = size
        s = size
        self.rows = np.stack([base_rows(b, s) for b in BACKGROUND_NAMES])  # (6, S, 3)
        border = np.zeros((s, s), bool)
        border[[0, -1], :] = True
        border[:, [0, -1]] = True
        self.border_r, self.border_c = np.nonzero(border)
        self.border_expect = self.rows[:, self.border_r]  # (6, nb, 3)
        self.palette = np.asarray([COLOURS[c] for c in COLOUR_NAMES], np.float32)  # (6, 3)
        self.min_pixels = max(4, int(MIN_OBJECT_FRACTION * (SIZES["small"] * s) ** 2))
        self.big_side = (SIZES["small"] + SIZES["big"]) / 2 * s  # threshold, pixels

    def read(self, frame: np.ndarray) -> FrameRead:
        s = self.size
        px = frame[self.border_r, self.border_c].astype(np.float32)  # (nb, 3)
        d = _sq(px[None] - self.border_expect)  # (6, nb)
        bg = int(np.bincount(d.argmin(0), minlength=6).argmax())
        # Each row's background is its median (follows gradients and drifting bands).
        # Planar (3, S, S) arithmetic: numpy is slow on a trailing axis of 3.
        img = frame.transpose(2, 0, 1).astype(np.float32)
        local = np.partition(img[:, :, ::2], s // 4, axis=2)[:, :, s // 4]  # (3, S)
        diff = img - local[:, :, None]
        far = diff[0] ** 2 + diff[1] ** 2 + diff[2] ** 2 > FAR_FROM_BACKGROUND**2
        ys, xs = np.nonzero(far)
        if ys.size < self.min_pixels:
            return FrameRead(bg)
        p = frame[ys, xs].astype(np.float32)  # (k, 3)
        dp = _sq(p[:, None] - self.palette[None])  # (k, 6)
        nearest = dp.argmin(1)
        near = dp[np.arange(ys.size), nearest] < NEAR_COLOUR**2
        votes = np.bincount(nearest[near], minlength=6)
        colour = int(votes.argmax())
        if votes[colour] < self.min_pixels:
            return FrameRead(bg)
        # Coverage of each pixel: its position on the line from the background to the
        # colour. Edges blurred by anti-aliasing or chroma subsampling stay on that line.
        bg_px = local.T[ys]  # (k, 3)
        q = p - bg_px
        line = self.palette[colour] - bg_px
        alpha = _dot(q, line) / np.maximum(_sq(line), 1.0)
        on_line = _sq(q - alpha[:, None] * line) < OFF_LINE**2
        cover = np.zeros((s, s), np.float32)
        cover[ys[on_line], xs[on_line]] = np.clip(alpha[on_line], 0.0, 1.0)
        pick = on_line & (alpha > 0.5)
        if not pick.any():  # colour seen only as faint blur: no region to measure
            return FrameRead(bg, colour)
        mask = np.zeros((s, s), np.int8)
        mask[ys[pick], xs[pick]] = 1
        return self._region(mask, cover, bg, colour)

    def _region(self, mask: np.ndarray, cover: np.ndarray, bg: int, colour: int) -> FrameRead:
        """Shape, size and centre of the largest region of mask (wrap-aware).

        Measured on the coverage image around the region's bounding box, so that blur
        (anti-aliasing, chroma subsampling) moves coverage around without changing it.
        """
        s = self.size
        edges = np.diff(mask, axis=1, prepend=0, append=0)
        r, st = np.nonzero(edges == 1)
        _, en = np.nonzero(edges == -1)
        labels = _components(st, en, r, s)
        area = np.bincount(labels, weights=en - st)
        keep = labels == int(area.argmax())
        r, st, en = r[keep], st[keep], en[keep]
        cols = np.zeros(s + 1, np.int32)
        np.add.at(cols, st, 1)
        np.add.at(cols, en, -1)
        rows = np.zeros(s, bool)
        rows[r] = True
        c0, bw = _arc(np.cumsum(cols[:s]) > 0)
        r0, bh = _arc(rows)
        m = 2  # margin (pixels) kept around the box, where blur spreads the coverage
        mr, mc = min(m, (s - bh) // 2), min(m, (s - bw) // 2)
        c0, bw, r0, bh = c0 - mc, bw + 2 * mc, r0 - mr, bh + 2 * mr
        win = cover[np.ix_((r0 + np.arange(bh)) % s, (c0 + np.arange(bw)) % s)]  # (bh, bw)
        area = float(win.sum())
        if area <= 0.0:
            return FrameRead(bg, colour)
        xs = np.arange(bw, dtype=np.float32) + 0.5
        ys = np.arange(bh, dtype=np.float32) + 0.5
        xc = float((win.sum(0) * xs).sum()) / area
        yc = float((win.sum(1) * ys).sum()) / area
        soft = _blur(win)  # compare blurred: compression already blurred the frame
        best = (math.inf, 0, 0.0, 0.0)
        for k, shape in enumerate(SHAPES):
            side = math.sqrt(area / _FILL[shape])
            cy = yc - (side / 6 if shape == "triangle" else 0.0)  # centroid -> box centre
            d = shape_distance(shape, (xs - xc)[None, :], (ys - cy)[:, None], side / 2)
            err = float(np.abs(soft - _blur(np.clip(0.5 - d, 0.0, 1.0))).sum())
            best = min(best, (err, k, side, cy))
        _, k, side, cy = best
        size = 1 if side >= self.big_side else 0
        x, y = ((c0 + xc) / s) % 1.0, ((r0 + cy) / s) % 1.0
        return FrameRead(bg, colour, k, size, (x, y))


# --- motion ----------------------------------------------------------------------------


def _rms_offset(res: np.ndarray) -> float:
    """RMS of residuals after the best constant offset (per column)."""
    return float(np.sqrt(((res - res.mean(0)) ** 2).mean()))


def _bounce_axis_ms(x: np.ndarray, t: np.ndarray, speed: float) -> float:
    """Mean square misfit of x = a +- speed * |t - t0|, the reflection t0 anywhere in the
    chunk or before it (no reflection)."""
    t0 = np.concatenate([[t[0] - 1.0], np.linspace(t[0], t[-1], 4 * len(t))])
    ramp = np.abs(t[None, :] - t0[:, None])  # (m, n)
    ramp -= ramp.mean(1, keepdims=True)
    xc = x - x.mean()
    res = xc[None, None, :] - np.asarray([speed, -speed])[:, None, None] * ramp[None]
    return float((res**2).mean(-1).min())


def read_motion(track: np.ndarray, t: np.ndarray) -> int:
    """Motion index from centres (n, 2) in [0, 1) at times t (s); -1 if none fits."""
    if len(track) < 3:
        return -1
    p = np.unwrap(track, period=1.0, axis=0)
    t = t - t[0]
    fits = {}
    for name, v in DIRECTIONS.items():  # the renderer's own velocities
        fits[name] = _rms_offset(p - t[:, None] * np.asarray(v))
    fits["bouncing"] = math.sqrt(
        (
            _bounce_axis_ms(p[:, 0], t, BOUNCE_SPEED[0])
            + _bounce_axis_ms(p[:, 1], t, BOUNCE_SPEED[1])
        )
        / 2
    )
    w = 2 * math.pi * CIRCLE_TURNS_PER_S
    cos, sin = np.cos(w * t), np.sin(w * t)
    # x = cx + A cos - B sin ; y = cy - B cos - A sin  (counter-clockwise on screen)
    n = len(t)
    basis = np.zeros((2 * n, 4))
    basis[:n, 0], basis[n:, 1] = 1.0, 1.0
    basis[:n, 2], basis[:n, 3] = cos, -sin
    basis[n:, 2], basis[n:, 3] = -sin, -cos
    (_, _, a, b), *_ = np.linalg.lstsq(basis, np.concatenate([p[:, 0], p[:, 1]]), rcond=None)
    scale = CIRCLE_RADIUS / max(math.hypot(a, b), 1e-9)
    a, b = a * scale, b * scale
    model = np.stack([a * cos - b * sin, -b * cos - a * sin], axis=1)
    fits["circling"] = _rms_offset(p - model)
    name = min(fits, key=fits.get)
    return MOTIONS.index(name) if fits[name] <= MAX_TRACK_RMS else -1
