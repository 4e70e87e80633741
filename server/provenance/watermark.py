"""A spread-spectrum watermark across frames: embedded in every frame, found by correlation.

The mark lives on a coarse grid tied to the picture, `GRID` cells along its short side (a
128x128 frame: 2x2-pixel cells; 832x480: 7.5-pixel cells), so it survives rescaling too.
From a secret key come 88 pseudo-random +-1 grid patterns: 16 for a sync word the key also
fixes, 72 for the payload's coded bits (payload.py). The mark is their signed sum (bit 1:
+, bit 0: -), smoothed up to the frame (bilinear) and added to luma with a per-pixel
strength that grows with local texture, the same mark on every frame of a stream.

Detection sums, over every frame, the correlation of the frame's high-passed luma (on the
grid) with each pattern. 64 decoy patterns from the same key, never embedded, measure on
the very file what correlation an unmarked pattern gets (the null), so the sync score is
a z-score: z = (sync word . correlations) / (4 * decoy rms). A video counts as marked
only when z >= Z_FOUND (8; under the null z is close to a unit normal: a false alarm of
about 1e-15 per file) and the payload's CRC-16 holds.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from server.provenance.payload import CODED_BITS, Payload

DEFAULT_KEY = b"endless watermark v1"
GRID = 64  # grid cells along the frame's short side
SYNC_BITS = 16
DECOYS = 64
Z_FOUND = 7.0  # sync z-score at or above which (with a valid CRC) a video is marked
STRENGTH = 1.4  # rms luma change (of 255) in flat regions
TEXTURE_GAIN = 3.0  # up to (1 + 2 * this) times stronger where the picture is textured
TEXTURE_STD = 8.0  # local luma std (5x5) at which the gain is half way up
CHASE_BITS = 8  # on a CRC miss, also try flipping up to this many least certain bits
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def grid_shape(height: int, width: int, grid: int = GRID) -> tuple[int, int]:
    short = min(height, width)
    return max(1, round(grid * height / short)), max(1, round(grid * width / short))


def _area_matrix(cells: int, pixels: int) -> np.ndarray:
    """(cells, pixels): each row averages the pixels its cell covers (fractional edges)."""
    edges = np.arange(cells + 1) * pixels / cells
    lo, hi = edges[:-1, None], edges[1:, None]
    px = np.arange(pixels)[None, :]
    overlap = np.clip(np.minimum(hi, px + 1) - np.maximum(lo, px), 0, None)
    return (overlap / overlap.sum(1, keepdims=True)).astype(np.float32)


def _bilinear_matrix(pixels: int, cells: int) -> np.ndarray:
    """(pixels, cells): bilinear interpolation of cell centres at pixel centres."""
    pos = np.clip((np.arange(pixels) + 0.5) * cells / pixels - 0.5, 0, cells - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, cells - 1)
    frac = (pos - lo).astype(np.float32)
    m = np.zeros((pixels, cells), np.float32)
    m[np.arange(pixels), lo] += 1 - frac
    m[np.arange(pixels), hi] += frac
    return m


def _smooth(g: np.ndarray) -> np.ndarray:
    """Separable [1 4 6 4 1]/16 blur over the last two axes (edges repeated)."""
    k = np.array([1, 4, 6, 4, 1], np.float32) / 16
    for axis in (-2, -1):
        pad = [(0, 0)] * g.ndim
        pad[axis] = (2, 2)
        p = np.pad(g, pad, mode="edge")
        n = g.shape[axis]
        g = sum(k[i] * np.take(p, np.arange(i, i + n), axis=axis) for i in range(5))
    return g


def high_pass(g: np.ndarray) -> np.ndarray:
    return g - _smooth(g)


def _box_mean(a: np.ndarray, r: int) -> np.ndarray:
    """Mean over a (2r+1)^2 window (edges repeated), via cumulative sums."""
    p = np.pad(a, r, mode="edge")
    c = np.cumsum(np.cumsum(p, 0), 1)
    c = np.pad(c, ((1, 0), (1, 0)))
    n = 2 * r + 1
    s = c[n:, n:] - c[:-n, n:] - c[n:, :-n] + c[:-n, :-n]
    return s / (n * n)


@lru_cache(maxsize=8)
def patterns(key: bytes, gh: int, gw: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sync signs (16,), embedded patterns (88, gh, gw), decoy patterns (64, gh, gw))."""
    seed = int.from_bytes(hashlib.sha256(key + f"/{gh}x{gw}".encode()).digest()[:8], "big")
    rng = np.random.default_rng(seed)
    sync = rng.choice(np.array([-1.0, 1.0], np.float32), SYNC_BITS)
    embedded = rng.choice(np.array([-1.0, 1.0], np.float32), (SYNC_BITS + CODED_BITS, gh, gw))
    decoys = rng.choice(np.array([-1.0, 1.0], np.float32), (DECOYS, gh, gw))
    return sync, embedded, decoys


@lru_cache(maxsize=8)
def _detector_tables(key: bytes, height: int, width: int, grid: int):
    """The detector's filters for one frame size: (sync, Q (patterns, cells), Ah, Aw).

    Q is the dual basis of the patterns as the detector sees them (up to the frame, back to
    the grid, high-passed): Q @ seen.T = I, so each pattern's correlation is free of the
    other patterns' (no cross-talk between the 88 embedded ones and the decoys)."""
    gh, gw = grid_shape(height, width, grid)
    sync, embedded, decoys = patterns(key, gh, gw)
    ah, aw = _area_matrix(gh, height), _area_matrix(gw, width)
    th = ah @ _bilinear_matrix(height, gh)  # (gh, gh): grid -> frame -> grid
    tw = aw @ _bilinear_matrix(width, gw)
    seen = high_pass(th @ np.concatenate([embedded, decoys]) @ tw.T)
    q = np.linalg.pinv(seen.reshape(len(seen), -1).T).astype(np.float32)  # (n, gh * gw)
    return sync, q, ah, aw


class Watermarker:
    """Adds the mark carrying a payload to uint8 (T, H, W, 3) RGB frames."""

    def __init__(
        self,
        key: bytes = DEFAULT_KEY,
        strength: float = STRENGTH,
        texture_gain: float = TEXTURE_GAIN,
        grid: int = GRID,
    ):
        self.key, self.strength, self.texture_gain, self.grid = key, strength, texture_gain, grid
        self._fields: dict[tuple[int, int, Payload], np.ndarray] = {}

    def field(self, height: int, width: int, payload: Payload) -> np.ndarray:
        """The unit-rms mark (H, W) of a payload; cached: a stream reuses it every frame."""
        k = (height, width, payload)
        if k not in self._fields:
            if len(self._fields) >= 64:
                self._fields.pop(next(iter(self._fields)))
            gh, gw = grid_shape(height, width, self.grid)
            sync, embedded, _ = patterns(self.key, gh, gw)
            signs = np.concatenate([sync, payload.bits().astype(np.float32) * 2 - 1])
            g = np.tensordot(signs, embedded, 1)  # (gh, gw)
            f = _bilinear_matrix(height, gh) @ g @ _bilinear_matrix(width, gw).T  # (H, W)
            self._fields[k] = (f / f.std()).astype(np.float32)
        return self._fields[k]

    def mark(self, frames: np.ndarray, payload: Payload) -> np.ndarray:
        """uint8 (T, H, W, 3) -> marked copy, same shape and dtype."""
        t, h, w, _ = frames.shape
        f = self.field(h, w, payload)
        out = np.empty_like(frames)
        for i in range(t):
            rgb = frames[i].astype(np.float32)
            y = rgb @ LUMA
            std = np.sqrt(np.maximum(_box_mean(y * y, 2) - _box_mean(y, 2) ** 2, 0))
            gain = 1 + self.texture_gain * np.minimum(std / TEXTURE_STD, 2)
            delta = (self.strength * gain * f)[..., None]
            out[i] = np.clip(rgb + delta + 0.5, 0, 255).astype(np.uint8)
        return out


@dataclass(frozen=True)
class Detection:
    found: bool
    z: float  # sync z-score (under the null close to a unit normal)
    frames: int
    payload: Payload | None
    bit_margin: float  # weakest payload bit's |correlation| / null rms

    def as_dict(self) -> dict:
        d = {"found": self.found, "z": round(self.z, 2), "frames": self.frames}
        if self.payload is not None:
            d["payload"] = self.payload.as_dict()
        return d


class Detector:
    """Accumulates correlations frame by frame; `result()` at any point."""

    def __init__(self, key: bytes = DEFAULT_KEY, grid: int = GRID, z_found: float = Z_FOUND):
        self.key, self.grid, self.z_found = key, grid, z_found
        self._corr: np.ndarray | None = None
        self._size: tuple[int, int] | None = None
        self.frames = 0

    def add(self, rgb: np.ndarray) -> None:
        """One uint8 (H, W, 3) RGB frame."""
        h, w = rgb.shape[:2]
        if self._size is None:
            self._size = (h, w)
        elif self._size != (h, w):  # a resolution change mid-file: keep the first size
            return
        sync, q, ah, aw = _detector_tables(self.key, h, w, self.grid)
        y = rgb.astype(np.float32) @ LUMA
        c = q @ high_pass(ah @ y @ aw.T).ravel()  # (88 + 64,)
        self._corr = c if self._corr is None else self._corr + c
        self.frames += 1

    def result(self) -> Detection:
        if self._corr is None:
            return Detection(False, 0.0, 0, None, 0.0)
        sync, *_ = _detector_tables(self.key, *self._size, self.grid)
        n = SYNC_BITS + CODED_BITS
        c, d = self._corr[:n], self._corr[n:]
        null = float(np.sqrt(np.mean(d * d))) or 1.0
        z = float(sync @ c[:SYNC_BITS]) / (np.sqrt(SYNC_BITS) * null)
        coded = c[SYNC_BITS:]
        payload = decode_bits(coded) if z >= self.z_found else None
        margin = float(np.min(np.abs(coded)) / null)
        return Detection(payload is not None, z, self.frames, payload, margin)


def decode_bits(soft: np.ndarray) -> Payload | None:
    """Hard decisions from soft correlations, then Chase: if the CRC fails, flip the least
    certain bits (up to CHASE_BITS of them, every combination) until it holds."""
    bits = (soft > 0).astype(np.uint8)
    weakest = np.argsort(np.abs(soft))[:CHASE_BITS]
    for flips in range(1 << CHASE_BITS):
        trial = bits.copy()
        for j, idx in enumerate(weakest):
            if flips >> j & 1:
                trial[idx] ^= 1
        if (p := Payload.from_bits(trial)) is not None:
            return p
    return None


def detect_frames(frames, key: bytes = DEFAULT_KEY) -> Detection:
    det = Detector(key)
    for f in frames:
        det.add(f)
    return det.result()
