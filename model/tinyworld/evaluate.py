"""Score a TinyWorld video against its prompt timeline (shared/tinyworld.md, last section).

Each frame is read on its own (`FrameReader`): background = the base colour nearest to
most border pixels; colour = the palette colour nearest to most pixels far from their
row's background; then the largest wrap-aware connected region of that colour gives the
shape (best match of its coverage against the four shapes at its area and centroid),
the size (side of that shape) and the centre. Coverage is measured along the line from
background to colour, so blur from anti-aliasing or H.264's chroma subsampling moves it
without losing it.

A video is scored in chunks of `chunk_frames` frames aligned to its start: colour,
shape, size and background by majority vote over the chunk's frames, motion from the
unwrapped track of the centre. Only chunks wholly inside one prompt segment are scored,
on the attributes in force there (said by that prompt or an earlier one, as the world
keeps what a new prompt does not say); the held-out / seen split is by that triple.

Also a CLI: `endless evaluate VIDEO.mp4 TIMELINE.json [--json OUT.json]`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import numpy as np

from model.errors import EndlessError, StoryboardError
from model.storyboard import is_seconds
from model.tinyworld.render import (
    BOUNCE_SPEED,
    CIRCLE_RADIUS,
    CIRCLE_TURNS_PER_S,
    SPEED,
    Segment,
    base_rows,
    shape_distance,
    timeline_segments,
)
from model.tinyworld.spec import (
    ATTRIBUTE_NAMES,
    BACKGROUND_NAMES,
    COLOUR_NAMES,
    COLOURS,
    FPS,
    MOTIONS,
    SHAPES,
    SIZE_NAMES,
    SIZES,
    is_held_out,
)

FAR_FROM_BACKGROUND = 30.0  # RGB distance from the row's own background (its median)
NEAR_COLOUR = 75.0  # RGB distance to a palette colour (palette colours are >= 128 apart)
OFF_LINE = 60.0  # RGB distance off the background->colour line still counted as a blend
MIN_OBJECT_FRACTION = 0.2  # of a small square's area, to say "there is an object"
MAX_TRACK_RMS = 0.02  # fw; worse fits than this read as "no recognisable motion"

# per attribute: asked word -> read word ("none": nothing readable) -> scored chunks
Confusion = dict[str, dict[str, dict[str, int]]]


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
    directions = {
        "moving left": (-SPEED, 0.0),
        "moving right": (SPEED, 0.0),
        "moving up": (0.0, -SPEED),
        "moving down": (0.0, SPEED),
        "standing still": (0.0, 0.0),
    }
    for name, v in directions.items():
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


# --- a whole video ---------------------------------------------------------------------


@dataclass
class SwitchResult:
    frame: int
    prompt: str
    chunks_to_visible: int | None  # full chunks after the switch before all said is seen
    position_jump: float | None  # fw, wrap-aware; only when colour and shape are kept


@dataclass
class Report:
    frames: int
    fps: int
    chunk_frames: int
    chunks_scored: int
    adherence: dict[str, float | None]  # per attribute and "all"
    held_out: dict[str, float | None]  # the same on held-out (colour, shape, bg) triples
    seen: dict[str, float | None]  # ... and on the triples training shows
    chunks_held_out: int
    chunks_seen: int
    switches: list[SwitchResult] = field(default_factory=list)
    brightness_per_minute: list[float] = field(default_factory=list)
    adherence_per_minute: list[dict[str, float | None]] = field(default_factory=list)
    confusion: Confusion = field(default_factory=dict)
    # entry i: chunks that began i chunks after their prompt did (0: the first one under it)
    adherence_since_prompt: list[dict[str, float | None]] = field(default_factory=list)
    chunks_since_prompt: list[int] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def summary(self) -> str:
        def pct(v: float | None) -> str:
            return "  n/a" if v is None else f"{100 * v:5.1f}%"

        lines = [
            f"{self.frames} frames, {self.chunks_scored} chunks of {self.chunk_frames} scored "
            f"({self.chunks_held_out} on held-out triples, {self.chunks_seen} seen)",
            "adherence   " + "  ".join(f"{k} {pct(v)}" for k, v in self.adherence.items()),
            "held-out    all " + pct(self.held_out["all"]) + "   seen all " + pct(self.seen["all"]),
        ]
        for sw in self.switches:
            jump = "" if sw.position_jump is None else f", jump {sw.position_jump:.3f} fw"
            seen = sw.chunks_to_visible
            lines.append(f"switch @{sw.frame} {sw.prompt!r}: visible after {seen} chunks{jump}")
        misread = misreadings(self.confusion)
        if misread:
            lines.append("most misread " + misread)
        weakest = weakest_values(self.confusion)
        if weakest:
            lines.append("weakest values " + weakest)
        if self.brightness_per_minute:
            b = ", ".join(f"{v:.1f}" for v in self.brightness_per_minute)
            lines.append(f"brightness per minute: {b}")
        if len(self.adherence_per_minute) > 1:
            a = ", ".join(pct(m["all"]).strip() for m in self.adherence_per_minute)
            lines.append(f"all-attribute adherence per minute: {a}")
        if self.adherence_since_prompt:
            shown = self.adherence_since_prompt[:8]
            a = ", ".join(pct(m["all"]).strip() for m in shown)
            more = ", ..." if len(self.adherence_since_prompt) > len(shown) else ""
            lines.append(f"all-attribute adherence by chunks since the prompt: {a}{more}")
        return "\n".join(lines)


def misreadings(confusion: Confusion, top: int = 3) -> str:
    """The most frequent wrong readings per attribute, e.g. 'shape: square->circle 28'."""
    parts = []
    for attr, table in confusion.items():
        wrong = sorted(
            (
                (n, f"{asked}->{read}")
                for asked, row in table.items()
                for read, n in row.items()
                if read != asked
            ),
            reverse=True,
        )
        if wrong:
            parts.append(f"{attr}: " + ", ".join(f"{name} {n}" for n, name in wrong[:top]))
    return "; ".join(parts)


def adherence_by_value(confusion: Confusion) -> dict[str, dict[str, float]]:
    """Per attribute and asked value, the fraction of its chunks read as asked, e.g.
    {'motion': {'bouncing': 0.51, ...}}: which values hold an attribute's rate down."""
    return {
        attr: {asked: row.get(asked, 0) / sum(row.values()) for asked, row in table.items()}
        for attr, table in confusion.items()
    }


def weakest_values(confusion: Confusion, top: int = 3) -> str:
    """The `top` asked values read correctly least often, below 100%, e.g.
    'motion bouncing 51.4% of 72, shape ring 90.0% of 40'."""
    rates = sorted(
        (rate, attr, asked, sum(confusion[attr][asked].values()))
        for attr, table in adherence_by_value(confusion).items()
        for asked, rate in table.items()
        if rate < 1.0
    )
    return ", ".join(f"{a} {v} {100 * r:.1f}% of {n}" for r, a, v, n in rates[:top])


def _count_reading(table: Confusion, attr: str, asked: str, read: str, n: int = 1) -> None:
    row = table.setdefault(attr, {}).setdefault(asked, {})
    row[read] = row.get(read, 0) + n


def merge_confusion(tables: Iterable[Confusion]) -> Confusion:
    """Sum the confusion tables of several reports."""
    out: Confusion = {}
    for table in tables:
        for attr, rows in table.items():
            for asked, row in rows.items():
                for read, n in row.items():
                    _count_reading(out, attr, asked, read, n)
    return out


def _vote(values: list[int], names: tuple[str, ...]) -> str | None:
    v = Counter(values).most_common(1)[0][0]
    return None if v < 0 else names[v]


def _read_chunk(reads: list[FrameRead], t: np.ndarray) -> dict[str, str | None]:
    found = [i for i, r in enumerate(reads) if r.centre is not None]
    motion = read_motion(np.asarray([reads[i].centre for i in found]), t[found])
    return {
        "colour": _vote([r.colour for r in reads], COLOUR_NAMES),
        "shape": _vote([r.shape for r in reads], SHAPES),
        "size": _vote([r.size for r in reads], SIZE_NAMES),
        "motion": None if motion < 0 else MOTIONS[motion],
        "background": _vote([r.background for r in reads], BACKGROUND_NAMES),
    }


def _matches(read: dict[str, str | None], asked) -> dict[str, bool]:
    return {n: read[n] == getattr(asked, n) for n in ATTRIBUTE_NAMES if getattr(asked, n)}


class _Tally:
    def __init__(self):
        self.hit = Counter()
        self.n = Counter()

    def add(self, match: dict[str, bool]) -> None:
        for k, v in match.items():
            self.n[k] += 1
            self.hit[k] += v
        self.n["all"] += 1
        self.hit["all"] += all(match.values())

    def rates(self) -> dict[str, float | None]:
        keys = (*ATTRIBUTE_NAMES, "all")
        return {k: (self.hit[k] / self.n[k] if self.n[k] else None) for k in keys}


def _wrap_distance(a: tuple[float, float], b: tuple[float, float]) -> float:
    dx, dy = (abs(u - v) % 1.0 for u, v in zip(a, b, strict=True))
    return math.hypot(min(dx, 1 - dx), min(dy, 1 - dy))


def evaluate_frames(
    frames: Iterable[np.ndarray],
    timeline: list[tuple[float, str]],
    fps: int = FPS,
    chunk_frames: int = 12,
) -> Report:
    """Score frames (each (S, S, 3) uint8) against [(at_seconds, prompt), ...]."""
    if chunk_frames < 3:
        raise StoryboardError("chunk_frames must be at least 3", value=chunk_frames)
    timeline_segments(timeline, 0, fps)  # bad prompts fail before any frame is read
    reader: FrameReader | None = None
    reads: list[FrameRead] = []
    brightness: list[float] = []
    for img in frames:
        if reader is None:
            if img.ndim != 3 or img.shape[2] != 3 or img.shape[0] != img.shape[1]:
                raise EndlessError("frames must be square RGB (S, S, 3)", value=img.shape)
            reader = FrameReader(img.shape[0])
        elif img.shape != (reader.size, reader.size, 3):
            raise EndlessError("frame size changed mid-video", value=img.shape)
        reads.append(reader.read(img))
        brightness.append(float(img.mean()))
    n = len(reads)
    if n == 0:
        raise EndlessError("no frames to evaluate", value=n)
    segments = timeline_segments(timeline, n, fps)
    c = chunk_frames
    chunk_reads = [
        _read_chunk(reads[k * c : (k + 1) * c], np.arange(k * c, (k + 1) * c) / fps)
        for k in range(n // c)
    ]
    per_minute = 60 * fps
    total, held, seen = _Tally(), _Tally(), _Tally()
    minute_tallies = [_Tally() for _ in range(-(-n // per_minute))]
    since_prompt: list[_Tally] = []
    confusion: Confusion = {}
    for seg in segments:
        asked = seg.asked
        triple = (asked.colour, asked.shape, asked.background)
        split = None if None in triple else held if is_held_out(*triple) else seen
        first = -(-seg.start // c)
        for k in range(first, seg.end // c):
            match = _matches(chunk_reads[k], asked)
            for attr in match:
                read = chunk_reads[k][attr] or "none"
                _count_reading(confusion, attr, getattr(asked, attr), read)
            if match:
                total.add(match)
                minute_tallies[k * c // per_minute].add(match)
                if split is not None:
                    split.add(match)
                while len(since_prompt) <= k - first:
                    since_prompt.append(_Tally())
                since_prompt[k - first].add(match)
    switches = [
        _switch_result(prev, seg, chunk_reads, reads, c)
        for prev, seg in zip(segments, segments[1:], strict=False)
        if seg.start < n
    ]
    minutes = [float(np.mean(brightness[i : i + per_minute])) for i in range(0, n, per_minute)]
    return Report(
        frames=n,
        fps=fps,
        chunk_frames=c,
        chunks_scored=total.n["all"],
        adherence=total.rates(),
        held_out=held.rates(),
        seen=seen.rates(),
        chunks_held_out=held.n["all"],
        chunks_seen=seen.n["all"],
        switches=switches,
        brightness_per_minute=minutes,
        adherence_per_minute=[t.rates() for t in minute_tallies],
        confusion=confusion,
        adherence_since_prompt=[t.rates() for t in since_prompt],
        chunks_since_prompt=[t.n["all"] for t in since_prompt],
    )


def _switch_result(
    prev: Segment, seg: Segment, chunk_reads: list[dict], reads: list[FrameRead], c: int
) -> SwitchResult:
    visible = None
    first = -(-seg.start // c)
    for k in range(first, seg.end // c):
        if all(_matches(chunk_reads[k], seg.said).values()):
            visible = k - first
            break
    jump = None
    keeps = (prev.asked.colour, prev.asked.shape) == (seg.asked.colour, seg.asked.shape)
    if keeps and seg.start > 0:
        before, after = reads[seg.start - 1].centre, reads[seg.start].centre
        if before is not None and after is not None:
            jump = _wrap_distance(before, after)
    return SwitchResult(seg.start, seg.prompt, visible, jump)


# --- CLI -------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("video", help="MP4 (or any video PyAV reads) to score")
    parser.add_argument("timeline", help='JSON list: [{"at": 0, "prompt": "..."}, ...]')
    parser.add_argument("--json", metavar="OUT.json", help="also write the report as JSON")
    parser.add_argument("--chunk-frames", type=int, default=12, help="frames per chunk")


def load_timeline(path: str) -> list[tuple[float, str]]:
    """Read TIMELINE.json: [{"at": seconds, "prompt": text}, ...]."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise StoryboardError(f"cannot read timeline {path}: {exc}", value=path) from None
    if not isinstance(data, list) or not data:
        raise StoryboardError("timeline must be a non-empty JSON list", value=path)
    out = []
    for item in data:
        if not isinstance(item, dict) or "at" not in item or "prompt" not in item:
            raise StoryboardError(
                'timeline entries are {"at": seconds, "prompt": text}', value=item
            )
        if not is_seconds(item["at"]):
            raise StoryboardError('"at" must be a number of seconds >= 0', value=item)
        if not isinstance(item["prompt"], str):
            raise StoryboardError('"prompt" must be text', value=item)
        out.append((float(item["at"]), item["prompt"]))
    return out


def read_video(path: str) -> tuple[Iterable[np.ndarray], int]:
    """Frames of a video file as rgb24 arrays (lazily) and its frame rate."""
    import av  # only the CLI needs it

    try:
        container = av.open(path)
        stream = container.streams.video[0]
    except (OSError, IndexError, av.FFmpegError) as exc:
        raise EndlessError(f"cannot read video {path}: {exc}", value=path) from None
    rate = stream.average_rate or stream.base_rate
    fps = round(float(rate)) if rate else FPS

    def frames():
        with container:
            try:
                for frame in container.decode(stream):
                    yield frame.to_ndarray(format="rgb24")
            except av.FFmpegError as exc:
                raise EndlessError(f"cannot decode video {path}: {exc}", value=path) from None

    return frames(), fps


def run(args: argparse.Namespace) -> int:
    if args.json and not os.access(os.path.dirname(os.path.abspath(args.json)), os.W_OK):
        raise EndlessError(f"cannot write the report to {args.json}", value=args.json)
    timeline = load_timeline(args.timeline)
    frames, fps = read_video(args.video)
    report = evaluate_frames(frames, timeline, fps=fps, chunk_frames=args.chunk_frames)
    print(report.summary())
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            f.write(report.to_json())
    return 0
