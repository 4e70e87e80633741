"""A spread-spectrum watermark across frames: embedded in every frame, found by correlation.

The mark lives on a coarse grid tied to the picture, `GRID` cells along its short side (a
128x128 frame: 2x2-pixel cells; 832x480: 7.5-pixel cells), so it follows a rescale. From a
key come 88 pseudo-random +-1 grid patterns: 16 for a sync word the key also fixes, 72 for
the payload's coded bits (payload.py). The mark is their signed sum (bit 1: +, bit 0: -),
smoothed up to the frame (bilinear) and added to luma, the same mark on every frame, with a
per-pixel strength (`strength_map`) that grows with local texture (up to 7x where the
picture is busy) and falls to nothing on and within 2 pixels of object outlines: places of
high colour contrast made of little fine detail (edges, ramps, blobs), where a reader of
the picture decides which pixels belong to an object.

Detection keeps each frame's luma on the grid, high-passed, and correlates the sum over
frames with the dual basis of the patterns (so they do not leak into each other), after
whitening by the residuals' own spectrum. 64 decoy patterns from the same key, never
embedded, measure on the very file what correlation an unmarked pattern gets, so the sync
score is a z-score: z = (sync word . correlations) / (4 * decoy rms), close to a unit
normal on video without the mark. A video counts as marked only when z >= Z_FOUND and the
payload's CRC-16 holds (after trying flips of its 8 least certain bits): z alone gives a
false alarm with a probability of about 2e-9 (the better of two readings, each under 1e-9),
and the CRC lets through 1 in 256 of those, about 1e-11 per file.
See docs/provenance.md for the measurements behind each choice.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from threadpoolctl import threadpool_limits

from server.provenance.payload import CODED_BITS, Payload

DEFAULT_KEY = b"endless watermark v1"
GRID = 64  # grid cells along the frame's short side
SYNC_BITS = 16
DECOYS = 64
Z_FOUND = 6.0  # sync z-score at or above which (with a valid CRC) a video is marked
WHITEN = 0.25  # the detector divides residual spectra by their power to this exponent
CLIP = 3.0  # robust deviations at which the second reading clips residuals
STRENGTH = 1.8  # rms luma change (of 255) in flat regions
TEXTURE_GAIN = 3.0  # up to (1 + 2 * this) times stronger where the picture is textured
TEXTURE_STD = 8.0  # local luma std (5x5) at which the gain is half way up
OUTLINE_LO, OUTLINE_HI = 12.0, 20.0  # outline contrast (RGB std, 5x5): mark fades out between
OUTLINE_REACH = 2  # pixels around an outline that the fade covers too
SMOOTH_RATIO = (0.4, 0.7)  # fine detail / contrast: below the first, all of it is outline
CHASE_BITS = 8  # on a CRC miss, also try flipping up to this many least certain bits
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def one_blas_thread():
    """The mark's matrices are small: a BLAS thread pool only fights the model for cores."""
    return threadpool_limits(1, user_api="blas")


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
    lead = [(0, 0)] * (g.ndim - 2)
    h, w = g.shape[-2:]
    p = np.pad(g, [*lead, (2, 2), (0, 0)], mode="edge")
    g = sum(k[i] * p[..., i : i + h, :] for i in range(5))
    p = np.pad(g, [*lead, (0, 0), (2, 2)], mode="edge")
    return sum(k[i] * p[..., i : i + w] for i in range(5))


def high_pass(g: np.ndarray) -> np.ndarray:
    return g - _smooth(g)


def _box_mean(a: np.ndarray, r: int) -> np.ndarray:
    """Mean over a (2r+1)^2 window of the last two axes (edges repeated): sums of shifts."""
    n, (h, w) = 2 * r + 1, a.shape[-2:]
    p = np.pad(a, [(0, 0)] * (a.ndim - 2) + [(r, r), (r, r)], mode="edge")
    rows = sum(p[..., i : i + h, :] for i in range(n))  # (..., H, W + 2r)
    return sum(rows[..., j : j + w] for j in range(n)) / (n * n)


def _box_max(a: np.ndarray, r: int) -> np.ndarray:
    """Maximum over a (2r+1)^2 window of a 2-D array (edges repeated)."""
    (h, w), p = a.shape, np.pad(a, r, mode="edge")
    rows = p[:h].copy()
    for i in range(1, 2 * r + 1):
        np.maximum(rows, p[i : i + h], out=rows)
    out = rows[:, :w].copy()
    for j in range(1, 2 * r + 1):
        np.maximum(out, rows[:, j : j + w], out=out)
    return out


def strength_map(rgb: np.ndarray, texture_gain: float = TEXTURE_GAIN) -> np.ndarray:
    """Per-pixel multiple of the flat strength for one float32 (H, W, 3) RGB frame.

    Texture raises it: 1 + gain * min(luma std (5x5) / TEXTURE_STD, 2). Object outlines
    take it away: where a 5x5 window's colour contrast (the RGB std) is high but little of
    it is fine detail (what a [1 4 6 4 1] blur removes, as a fraction of that contrast:
    a soft or sharp edge, a colour ramp, a blob), the mark fades to nothing, and so it does
    within OUTLINE_REACH pixels of such a place. Busy texture (mostly fine detail) keeps
    its gain."""
    y = rgb @ LUMA
    luma_std = np.sqrt(np.maximum(_box_mean(y * y, 2) - _box_mean(y, 2) ** 2, 0))
    gain = 1 + texture_gain * np.minimum(luma_std / TEXTURE_STD, 2)
    var, fine = 0, 0  # one colour plane at a time: small arrays stay in cache
    for c in range(3):
        a = np.ascontiguousarray(rgb[..., c])
        var = var + np.maximum(_box_mean(a * a, 2) - _box_mean(a, 2) ** 2, 0)
        fine = fine + high_pass(a) ** 2
    contrast = np.sqrt(var)
    detail = np.sqrt(_box_mean(fine, 2)) / (contrast + 1e-3)
    lo, hi = SMOOTH_RATIO
    outline = _box_max(contrast * np.clip((hi - detail) / (hi - lo), 0, 1), OUTLINE_REACH)
    return gain * np.clip((OUTLINE_HI - outline) / (OUTLINE_HI - OUTLINE_LO), 0, 1)


MAP_SIDE = 128  # the short side at which the strength map is measured


def scaled_strength_map(rgb: np.ndarray, texture_gain: float = TEXTURE_GAIN) -> np.ndarray:
    """`strength_map` measured at about MAP_SIDE pixels along the short side (an integer
    box reduction), then repeated up to the frame: its 5x5 windows and 2-pixel reach keep
    their meaning on a frame that shows the same picture larger (an upscaled or a Wan
    frame), and a large frame costs a small one's time."""
    h, w = rgb.shape[:2]
    s = max(1, round(min(h, w) / MAP_SIDE))
    if s == 1:
        return strength_map(rgb, texture_gain)
    hs, ws = h // s, w // s
    small = rgb[: hs * s, : ws * s].reshape(hs, s, ws, s, 3).mean((1, 3))
    m = np.repeat(np.repeat(strength_map(small, texture_gain), s, 0), s, 1)
    return np.pad(m, ((0, h - hs * s), (0, w - ws * s)), mode="edge")


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
def _seen(key: bytes, height: int, width: int, grid: int) -> np.ndarray:
    """Every pattern as the detector sees it: up to the frame, back to the grid, high-passed."""
    gh, gw = grid_shape(height, width, grid)
    _, embedded, decoys = patterns(key, gh, gw)
    th = _area_matrix(gh, height) @ _bilinear_matrix(height, gh)  # (gh, gh)
    tw = _area_matrix(gw, width) @ _bilinear_matrix(width, gw)
    return high_pass(th @ np.concatenate([embedded, decoys]) @ tw.T)


@lru_cache(maxsize=8)
def _detector_tables(key: bytes, height: int, width: int, grid: int):
    """(sync signs, Ah, Aw): the sync word and the frame -> grid area matrices."""
    gh, gw = grid_shape(height, width, grid)
    return patterns(key, gh, gw)[0], _area_matrix(gh, height), _area_matrix(gw, width)


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
        with one_blas_thread():
            return self._mark(frames, payload)

    def _mark(self, frames: np.ndarray, payload: Payload) -> np.ndarray:
        t, h, w, _ = frames.shape
        f = self.field(h, w, payload)
        out = np.empty_like(frames)
        for i in range(t):
            rgb = frames[i].astype(np.float32)
            delta = (self.strength * scaled_strength_map(rgb, self.texture_gain) * f)[..., None]
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
    """Takes frames one by one (keeping each frame's grid residual only); `result()` at any
    point. Two readings of the same residuals, and the stronger one counts (so the false
    alarm rate at most doubles):

    - whitened: divided by their own mean power spectrum to the 1/4 (WHITEN), so a host's
      strong frequencies (stripes, edges that repeat frame after frame) weigh less;
    - clipped, then whitened: each residual clipped at CLIP robust deviations first, so a
      few sparse bright points (stars at night) cannot drown the mark."""

    def __init__(self, key: bytes = DEFAULT_KEY, grid: int = GRID, z_found: float = Z_FOUND):
        self.key, self.grid, self.z_found = key, grid, z_found
        self._residuals: list[np.ndarray] = []
        self._size: tuple[int, int] | None = None

    @property
    def frames(self) -> int:
        return len(self._residuals)

    def add(self, rgb: np.ndarray) -> None:
        """One uint8 (H, W, 3) RGB frame."""
        h, w = rgb.shape[:2]
        if self._size is None:
            self._size = (h, w)
        elif self._size != (h, w):  # a resolution change mid-file: keep the first size
            return
        with one_blas_thread():
            _, ah, aw = _detector_tables(self.key, h, w, self.grid)
            y = rgb.astype(np.float32) @ LUMA
            self._residuals.append(high_pass(ah @ y @ aw.T))  # (gh, gw)

    def correlations(self, clip: float | None = None) -> np.ndarray:
        """Each pattern's correlation with the whitened residuals: (88 embedded + 64 decoys,)."""
        r = np.stack(self._residuals)  # (T, gh, gw)
        if clip:
            tau = clip * 1.4826 * np.median(np.abs(r), axis=(1, 2), keepdims=True) + 1e-3
            r = np.clip(r, -tau, tau)
        spec = np.fft.rfft2(r)
        psd = np.mean(np.abs(spec) ** 2, 0)
        gain = (psd + 1e-3 * psd.mean() + 1e-12) ** -WHITEN
        white = np.fft.irfft2(spec.sum(0) * gain, s=r.shape[1:])
        seen = _seen(self.key, *self._size, self.grid)  # (n, gh, gw)
        seen_w = np.fft.irfft2(np.fft.rfft2(seen) * gain, s=r.shape[1:])
        sw = seen_w.reshape(len(seen_w), -1)  # (n, cells)
        # through the dual basis (sw sw^T)^-1 sw: no pattern leaks into another's reading
        return np.linalg.solve(sw @ sw.T, sw @ white.ravel())

    def result(self) -> Detection:
        if not self._residuals:
            return Detection(False, 0.0, 0, None, 0.0)
        sync = _detector_tables(self.key, *self._size, self.grid)[0]
        n = SYNC_BITS + CODED_BITS
        best = None
        for clip in (None, CLIP):
            with one_blas_thread():
                corr = self.correlations(clip)
            c, d = corr[:n], corr[n:]
            null = float(np.sqrt(np.mean(d * d))) or 1.0
            z = float(sync @ c[:SYNC_BITS]) / (np.sqrt(SYNC_BITS) * null)
            if best is None or z > best[0]:
                best = (z, c[SYNC_BITS:] / null)
        z, coded = best
        payload = decode_bits(coded) if z >= self.z_found else None
        return Detection(payload is not None, z, self.frames, payload, float(np.min(np.abs(coded))))


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
