"""TinyWorld v1 renderer: the ground truth the default model learns (docs/tinyworld.md).

A `World` holds one scene: the object's attributes, where it was at the last prompt
change (the anchor) and how it moves from there, plus the texture state of every
background. Positions are closed-form functions of the frame index since the anchor,
so `frame(i)` is exact for any i >= anchor and `advance()` never accumulates error.
Everything random (unsaid attributes, start position, textures, bounce signs) comes
from the seed, so a world is reproducible frame for frame.

Choices the contract leaves open, fixed here:
- The prompt that applies at time `at` seconds takes effect from frame ceil(at * fps).
- Bouncing and standing-still objects start wholly inside the frame; moving ones start
  anywhere (they wrap). Circling starts at a random phase around the frame centre.
- Switching *to* circling keeps the position: the circle (radius 0.25 W) is centred so
  that it passes through the object, on the line from the frame centre to the object.
- Switching to bouncing (or growing while bouncing) with the object across an edge: the
  velocity points inwards on that axis and the object slides in before it reflects.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from model.errors import StoryboardError, UnknownWordsError
from model.tinyworld.spec import (
    BACKGROUND_NAMES,
    BACKGROUNDS,
    COLOUR_NAMES,
    COLOURS,
    FPS,
    MOTIONS,
    SHAPES,
    SIZE_NAMES,
    SIZES,
    Attributes,
    parse_prompt,
)

SPEED = 0.25  # fw/s of the moving motions
BOUNCE_SPEED = (0.25, 0.18)  # fw/s, (x, y)
CIRCLE_RADIUS = 0.25  # W
CIRCLE_TURNS_PER_S = 0.25
N_STARS, STAR_RGB = 40, (235, 235, 255)
N_FLAKES, FLAKE_RGB, FLAKE_SPEED = 60, (255, 255, 255), 0.15
N_TRUNKS, TRUNK_RGB, TRUNK_WIDTH = 6, (18, 60, 28), 0.03
WAVES = {"ocean": (25.0, 4.0, 0.2), "desert": (15.0, 3.0, 0.05)}  # amplitude, cycles/W, Hz

DIRECTIONS = {  # the straight motions' velocities, fw/s (x right, y down)
    "moving left": (-SPEED, 0.0),
    "moving right": (SPEED, 0.0),
    "moving up": (0.0, -SPEED),
    "moving down": (0.0, SPEED),
    "standing still": (0.0, 0.0),
}


def switch_frame(at: float, fps: int = FPS) -> int:
    """First frame index whose time i / fps is at or after `at` seconds."""
    return max(0, math.ceil(at * fps - 1e-6))


def base_rows(background: str, size: int) -> np.ndarray:
    """Untextured base colour of each pixel row, (size, 3) float32 (gradient top->bottom)."""
    top, bottom = (np.asarray(c, np.float32) for c in BACKGROUNDS[background])
    y = (np.arange(size, dtype=np.float32) + 0.5) / size
    return top + (bottom - top) * y[:, None]


def random_attributes_from(rng: np.random.Generator, attrs: Attributes) -> Attributes:
    """Fill every unsaid attribute of attrs with a uniform random word."""
    pick = {
        "colour": COLOUR_NAMES,
        "shape": SHAPES,
        "size": SIZE_NAMES,
        "motion": MOTIONS,
        "background": BACKGROUND_NAMES,
    }
    return attrs.merged_over(Attributes(**{k: str(rng.choice(v)) for k, v in pick.items()}))


def shape_distance(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Signed distance (pixels, < 0 inside) of a shape with half-side r at the origin."""
    if shape == "circle":
        return np.hypot(dx, dy) - r
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) - r
    if shape == "ring":
        rho = np.hypot(dx, dy)
        return np.maximum(rho - r, 0.5 * r - rho)
    # Triangle pointing up: apex (0, -r), base corners (+-r, r).
    k = 1.0 / math.sqrt(5.0)
    slant = (2.0 * np.abs(dx) - dy - r) * k
    return np.maximum(slant, dy - r)


def _bounce_axis(x0: float, v: float, dt: float, h: float) -> tuple[float, float]:
    """Position and velocity after dt on one axis, reflecting inside [h, 1 - h]."""
    lo, hi = h, 1.0 - h
    if x0 < lo or x0 > hi:  # entering from across an edge (v points inwards)
        target = lo if x0 < lo else hi
        t_in = (target - x0) / v if v else math.inf
        if dt < t_in:
            return (x0 + v * dt) % 1.0, v
        x0, dt = target, dt - t_in
    span = hi - lo
    u = (x0 - lo + v * dt) % (2.0 * span)
    if u <= span:
        return lo + u, v
    return lo + 2.0 * span - u, -v


@dataclass
class _Anchor:
    """Motion state at the last prompt change; positions follow in closed form."""

    index: int  # frame index of the change
    pos: tuple[float, float]  # object centre (x, y) in [0, 1)
    vel: tuple[float, float]  # fw/s (bouncing: current signed velocity)
    centre: tuple[float, float] = (0.5, 0.5)  # circling centre
    phase: float = 0.0  # circling angle at the anchor, radians, counter-clockwise on screen


class _Textures:
    """Seeded texture state of every background, made once so switches stay deterministic."""

    def __init__(self, rng: np.random.Generator, size: int):
        self.size = size
        s = size
        self.static: dict[str, np.ndarray] = {}
        for name in BACKGROUND_NAMES:
            rows = base_rows(name, s)
            img = np.empty((s, s, 3), np.uint8)
            img[:] = np.round(rows)[:, None, :].astype(np.uint8)
            self.static[name] = img
        self.rows_f = {name: base_rows(name, s) for name in WAVES}
        self.wave_y = (np.arange(s, dtype=np.float32) + 0.5) / s
        # Forest: trunks at fixed x, painted into the static layer.
        trunk_x = rng.uniform(0.0, 1.0, N_TRUNKS)
        width = max(1, round(TRUNK_WIDTH * s))
        for x in trunk_x:
            cols = (int(x * s) + np.arange(width)) % s
            self.static["forest"][:, cols] = TRUNK_RGB
        # Night: 1-2 px stars with a pulsing brightness.
        sx = (rng.uniform(0, 1, N_STARS) * s).astype(np.int64)
        sy = (rng.uniform(0, 1, N_STARS) * s).astype(np.int64)
        two = rng.random(N_STARS) < 0.5
        self.star_rows = np.concatenate([sy, sy[two]])
        self.star_cols = np.concatenate([sx, (sx[two] + 1) % s])
        self.star_of_px = np.concatenate([np.arange(N_STARS), np.nonzero(two)[0]])
        self.star_period = rng.uniform(1.0, 3.0, N_STARS)
        self.star_phase = rng.uniform(0.0, 1.0, N_STARS)
        night = self.static["night"][self.star_rows, self.star_cols].astype(np.float32)
        self.star_base = night
        self.star_delta = np.asarray(STAR_RGB, np.float32) - night
        # Snow: 2 px flakes falling and wrapping.
        self.flake_col = (rng.uniform(0, 1, N_FLAKES) * s).astype(np.int64)
        self.flake_y0 = rng.uniform(0, 1, N_FLAKES)

    def paint(self, background: str, t: float, out: np.ndarray) -> None:
        """Write the background at time t seconds into out (S, S, 3) uint8."""
        if background in WAVES:
            amp, cycles, hz = WAVES[background]
            offset = amp * np.sin(2.0 * np.pi * (cycles * self.wave_y + hz * t))
            rows = np.clip(np.round(self.rows_f[background] + offset[:, None]), 0, 255)
            out[:] = rows.astype(np.uint8)[:, None, :]
            return
        out[:] = self.static[background]
        if background == "night":
            pulse = 0.6 + 0.4 * np.sin(2 * np.pi * (t / self.star_period + self.star_phase))
            px = self.star_base + self.star_delta * pulse[self.star_of_px, None]
            out[self.star_rows, self.star_cols] = (px + 0.5).astype(np.uint8)
        elif background == "snow":
            s = self.size
            rows = (((self.flake_y0 + FLAKE_SPEED * t) % 1.0) * s).astype(np.int64) % s
            out[rows, self.flake_col] = FLAKE_RGB
            out[rows, (self.flake_col + 1) % s] = FLAKE_RGB


class World:
    """One TinyWorld scene, rendered frame by frame from a seed.

    `index` is the next frame `advance()` returns; `set_prompt` changes the scene from
    that frame on. `frame(i)` renders any frame at or after the last change.
    """

    def __init__(self, attributes: Attributes, seed: int, size: int = 128, fps: int = FPS):
        self.size, self.fps = size, fps
        self.rng = np.random.default_rng(seed)
        self.attributes = random_attributes_from(self.rng, attributes)
        self.textures = _Textures(self.rng, size)
        self.index = 0
        a = self.attributes
        h = SIZES[a.size] / 2
        if a.motion == "circling":
            phase = float(self.rng.uniform(0, 2 * np.pi))
            pos = (0.5 + CIRCLE_RADIUS * math.cos(phase), 0.5 - CIRCLE_RADIUS * math.sin(phase))
            self._anchor = _Anchor(0, pos, (0.0, 0.0), (0.5, 0.5), phase)
        elif a.motion in ("bouncing", "standing still"):
            pos = tuple(float(v) for v in self.rng.uniform(h, 1 - h, 2))
            self._anchor = _Anchor(0, pos, self._start_velocity(a, pos))
        else:
            pos = tuple(float(v) for v in self.rng.uniform(0, 1, 2))
            self._anchor = _Anchor(0, pos, DIRECTIONS[a.motion])

    # --- state -------------------------------------------------------------------------

    def _start_velocity(self, a: Attributes, pos: tuple[float, float]) -> tuple[float, float]:
        if a.motion != "bouncing":
            return DIRECTIONS.get(a.motion, (0.0, 0.0))
        h = SIZES[a.size] / 2
        vel = []
        for p, speed in zip(pos, BOUNCE_SPEED, strict=True):
            sign = 1.0 if self.rng.random() < 0.5 else -1.0
            if p < h:
                sign = 1.0
            elif p > 1 - h:
                sign = -1.0
            vel.append(sign * speed)
        return vel[0], vel[1]

    def state(self, index: int) -> tuple[tuple[float, float], tuple[float, float]]:
        """Object centre (x, y) in [0, 1) and velocity (fw/s) at frame index."""
        an = self._anchor
        if index < an.index:
            raise ValueError(f"frame {index} is before the last prompt change ({an.index})")
        dt = (index - an.index) / self.fps
        motion = self.attributes.motion
        if motion == "circling":
            w = 2 * np.pi * CIRCLE_TURNS_PER_S
            th = an.phase + w * dt
            x = (an.centre[0] + CIRCLE_RADIUS * math.cos(th)) % 1.0
            y = (an.centre[1] - CIRCLE_RADIUS * math.sin(th)) % 1.0
            r = CIRCLE_RADIUS * w
            return (x, y), (-r * math.sin(th), -r * math.cos(th))
        if motion == "bouncing":
            h = SIZES[self.attributes.size] / 2
            x, vx = _bounce_axis(an.pos[0], an.vel[0], dt, h)
            y, vy = _bounce_axis(an.pos[1], an.vel[1], dt, h)
            return (x, y), (vx, vy)
        vx, vy = an.vel
        return ((an.pos[0] + vx * dt) % 1.0, (an.pos[1] + vy * dt) % 1.0), (vx, vy)

    def set_prompt(self, attrs: Attributes | str, index: int | None = None) -> Attributes:
        """Change the scene from frame `index` (default: the next frame) on; returns the
        full new attributes. Said attributes change, unsaid ones keep their values; the
        object keeps its position, and its velocity unless the motion changed."""
        if isinstance(attrs, str):
            attrs = parse_checked(attrs)
        index = self.index if index is None else index
        pos, vel = self.state(index)
        old, new = self.attributes, attrs.merged_over(self.attributes)
        self.attributes = new
        h = SIZES[new.size] / 2
        if new.motion == "circling":
            if old.motion == "circling":
                an = self._anchor
                phase = an.phase + 2 * np.pi * CIRCLE_TURNS_PER_S * (index - an.index) / self.fps
                self._anchor = _Anchor(index, pos, vel, an.centre, phase)
            else:
                dx, dy = pos[0] - 0.5, pos[1] - 0.5
                phase = math.atan2(-dy, dx) if (dx or dy) else float(self.rng.uniform(0, 6.3))
                centre = (
                    (pos[0] - CIRCLE_RADIUS * math.cos(phase)) % 1.0,
                    (pos[1] + CIRCLE_RADIUS * math.sin(phase)) % 1.0,
                )
                self._anchor = _Anchor(index, pos, vel, centre, phase)
        elif new.motion == "bouncing":
            if old.motion == "bouncing":  # keep the signs, point inwards if across an edge
                vel = tuple(
                    abs(v) if p < h else -abs(v) if p > 1 - h else v
                    for p, v in zip(pos, vel, strict=True)
                )
            else:
                vel = self._start_velocity(new, pos)
            self._anchor = _Anchor(index, pos, (float(vel[0]), float(vel[1])))
        else:
            self._anchor = _Anchor(index, pos, DIRECTIONS[new.motion])
        self.index = index
        return new

    # --- drawing -----------------------------------------------------------------------

    def frame(self, index: int, out: np.ndarray | None = None) -> np.ndarray:
        """Render frame `index` (>= the last prompt change) as (S, S, 3) uint8."""
        s = self.size
        out = np.empty((s, s, 3), np.uint8) if out is None else out
        a = self.attributes
        self.textures.paint(a.background, index / self.fps, out)
        (x, y), _ = self.state(index)
        self._draw_object(out, x * s, y * s)
        return out

    def advance(self, out: np.ndarray | None = None) -> np.ndarray:
        """Render the next frame and move on by one."""
        img = self.frame(self.index, out)
        self.index += 1
        return img

    def _draw_object(self, out: np.ndarray, cx: float, cy: float) -> None:
        s, a = self.size, self.attributes
        r = SIZES[a.size] * s / 2
        n = min(s, int(math.ceil(2 * r)) + 3)
        c0, r0 = math.floor(cx - r) - 1, math.floor(cy - r) - 1
        dx = (np.arange(c0, c0 + n, dtype=np.float32) + 0.5 - cx)[None, :]
        dy = (np.arange(r0, r0 + n, dtype=np.float32) + 0.5 - cy)[:, None]
        alpha = np.clip(0.5 - shape_distance(a.shape, dx, dy, r), 0.0, 1.0)[..., None]
        colour = np.asarray(COLOURS[a.colour], np.float32)
        if 0 <= c0 and c0 + n <= s and 0 <= r0 and r0 + n <= s:
            win = out[r0 : r0 + n, c0 : c0 + n]
            win[:] = (win + (colour - win) * alpha + 0.5).astype(np.uint8)
            return
        idx = np.ix_((r0 + np.arange(n)) % s, (c0 + np.arange(n)) % s)  # wraps across edges
        win = out[idx].astype(np.float32)
        out[idx] = (win + (colour - win) * alpha + 0.5).astype(np.uint8)


# --- timelines -------------------------------------------------------------------------


def parse_checked(prompt: str) -> Attributes:
    """parse_prompt, raising UnknownWordsError for words outside the vocabulary."""
    parsed = parse_prompt(prompt)
    if parsed.unknown:
        raise UnknownWordsError(parsed.unknown, value=prompt)
    return parsed.attributes


@dataclass(frozen=True)
class Segment:
    """One prompt of a timeline, over frames [start, end)."""

    start: int
    end: int
    prompt: str
    said: Attributes  # what this prompt says
    asked: Attributes  # what is in force: said, over what earlier prompts said


def timeline_segments(
    timeline: list[tuple[float, str]], n_frames: int, fps: int = FPS
) -> list[Segment]:
    """Split n_frames into prompt segments. The first prompt applies from frame 0."""
    if not timeline:
        raise StoryboardError("timeline is empty", value=timeline)
    ats = []
    for item in timeline:
        try:
            at, prompt = item
            at = float(at)
        except (TypeError, ValueError):
            raise StoryboardError("timeline entries are (seconds, prompt)", value=item) from None
        if not isinstance(prompt, str) or not math.isfinite(at) or at < 0:
            raise StoryboardError("timeline entries are (seconds >= 0, prompt)", value=item)
        if ats and at < ats[-1]:
            raise StoryboardError("timeline times must not decrease", value=item)
        ats.append(at)
    starts = [0] + [min(n_frames, switch_frame(at, fps)) for at in ats[1:]]
    segments, asked = [], Attributes()
    for i, (_, prompt) in enumerate(timeline):
        said = parse_checked(prompt)
        asked = said.merged_over(asked)
        end = starts[i + 1] if i + 1 < len(starts) else n_frames
        segments.append(Segment(starts[i], end, prompt, said, asked))
    return segments


def render_timeline(
    timeline: list[tuple[float, str]],
    seconds: float,
    size: int = 128,
    seed: int = 0,
    fps: int = FPS,
) -> Iterator[np.ndarray]:
    """Yield the frames of a prompt timeline [(at_seconds, prompt), ...], one at a time."""
    n_frames = round(seconds * fps)
    segments = timeline_segments(timeline, n_frames, fps)
    world = World(segments[0].said, seed, size, fps)
    for i, seg in enumerate(segments):
        if i > 0:
            world.set_prompt(seg.said, seg.start)
        for _ in range(seg.start, seg.end):
            yield world.advance()


def render_clip(
    timeline: list[tuple[float, str]] | str,
    seconds: float,
    size: int = 128,
    seed: int = 0,
    fps: int = FPS,
) -> np.ndarray:
    """All frames of a timeline (or a single prompt) as one (N, S, S, 3) uint8 array."""
    if isinstance(timeline, str):
        timeline = [(0.0, timeline)]
    n = round(seconds * fps)
    out = np.empty((n, size, size, 3), np.uint8)
    for i, img in enumerate(render_timeline(timeline, seconds, size, seed, fps)):
        out[i] = img
    return out
