"""Score a TinyWorld video against its prompt timeline (docs/tinyworld.md, "How a video is scored").

Each frame is read on its own (`FrameReader`, model/tinyworld/reading.py: background,
colour, shape, size and the object's centre).

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

from model.chunk_frames import ChunkFrames
from model.errors import EndlessError, StoryboardError
from model.storyboard import is_seconds
from model.tinyworld.reading import FrameRead, FrameReader, read_motion
from model.tinyworld.render import Segment, timeline_segments
from model.tinyworld.spec import (
    ATTRIBUTE_NAMES,
    BACKGROUND_NAMES,
    COLOUR_NAMES,
    FPS,
    MOTIONS,
    SHAPES,
    SIZE_NAMES,
    is_held_out,
)

# per attribute: asked word -> read word ("none": nothing readable) -> scored chunks
Confusion = dict[str, dict[str, dict[str, int]]]


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
    chunk_frames: int | ChunkFrames = 12,
) -> Report:
    """Score frames (each (S, S, 3) uint8) against [(at_seconds, prompt), ...], in chunks
    of `chunk_frames` frames (a constant, or the model's `ChunkFrames` when its VAE
    decodes a first chunk of another length)."""
    c = ChunkFrames.of(chunk_frames)
    if min(c.first, c.rest) < 3:
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
    chunk_reads = [
        _read_chunk(reads[c.start(k) : c.start(k + 1)], np.arange(c.start(k), c.start(k + 1)) / fps)
        for k in range(c.chunk_of(n))
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
        first = c.boundary_at_or_after(seg.start)
        for k in range(first, c.chunk_of(seg.end)):
            match = _matches(chunk_reads[k], asked)
            for attr in match:
                read = chunk_reads[k][attr] or "none"
                _count_reading(confusion, attr, getattr(asked, attr), read)
            if match:
                total.add(match)
                minute_tallies[c.start(k) // per_minute].add(match)
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
        chunk_frames=c.rest,
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
    prev: Segment, seg: Segment, chunk_reads: list[dict], reads: list[FrameRead], c: ChunkFrames
) -> SwitchResult:
    visible = None
    first = c.boundary_at_or_after(seg.start)
    for k in range(first, c.chunk_of(seg.end)):
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
    parser.add_argument(
        "--chunk-frames", type=int, default=12, help="frames per scored chunk (default 12)"
    )
    parser.add_argument(
        "--first-chunk-frames",
        type=int,
        help="frames of the first chunk (default: --chunk-frames; 9 for a Wan VAE's video)",
    )


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
    first = args.first_chunk_frames or args.chunk_frames
    chunks = ChunkFrames(first, args.chunk_frames)
    report = evaluate_frames(frames, timeline, fps=fps, chunk_frames=chunks)
    print(report.summary())
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            f.write(report.to_json())
    return 0
