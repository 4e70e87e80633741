"""Storyboards: prompt timelines `[{"at": seconds, "prompt": "..."}]`, validated."""

from __future__ import annotations

import json
import math
from pathlib import Path

from model.chunk_frames import ChunkFrames
from model.errors import StoryboardError

MAX_ITEMS = 10_000


def parse_storyboard(items: object) -> list[tuple[float, str]]:
    """Validate a decoded storyboard; returns [(at_seconds, prompt)] sorted by time.

    The first item must start at 0 (the stream needs a prompt from its first frame)
    when `require_start` holds; times are finite, >= 0 and distinct.
    """
    if not isinstance(items, list) or not items:
        raise StoryboardError(
            'a storyboard is a non-empty list of {"at", "prompt"} items', value=items
        )
    if len(items) > MAX_ITEMS:
        raise StoryboardError(f"a storyboard holds at most {MAX_ITEMS} items", value=len(items))
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or set(item) - {"at", "prompt"} or "prompt" not in item:
            raise StoryboardError(f'item {i} must be {{"at": seconds, "prompt": text}}', value=item)
        at = item.get("at", 0)
        if not is_seconds(at):
            raise StoryboardError(f"item {i}: 'at' must be a number of seconds >= 0", value=at)
        if not isinstance(item["prompt"], str):
            raise StoryboardError(f"item {i}: 'prompt' must be text", value=item["prompt"])
        out.append((float(at), item["prompt"]))
    out.sort(key=lambda x: x[0])
    times = [t for t, _ in out]
    if len(set(times)) != len(times):
        raise StoryboardError("two storyboard items share one time", value=times)
    return out


def is_seconds(at: object) -> bool:
    """A finite number >= 0 (not a bool; a JSON integer too large for a float is not)."""
    if isinstance(at, bool) or not isinstance(at, int | float):
        return False
    try:
        return math.isfinite(float(at)) and at >= 0
    except OverflowError:
        return False


def load_storyboard(path: str | Path) -> list[tuple[float, str]]:
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise StoryboardError(
            f"cannot read storyboard {path}: {exc.strerror}", value=str(path)
        ) from exc
    except ValueError as exc:  # not JSON, or not UTF-8 text at all (e.g. a video file)
        raise StoryboardError(
            f"storyboard {path} is not valid JSON: {exc}", value=str(path)
        ) from exc
    return parse_storyboard(raw)


def chunk_at(seconds: float, fps: int, frames_per_chunk: int | ChunkFrames) -> int:
    """First chunk that starts at or after `seconds` (a switch never comes early);
    `frames_per_chunk` is a constant count or the stream's `ChunkFrames`."""
    return ChunkFrames.of(frames_per_chunk).boundary_at_or_after(round(seconds * fps, 6))
