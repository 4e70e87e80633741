"""The shipped default model: loads strictly, and what it has learned holds.

The shipped checkpoint is an early one (see README, "Quality"): it draws the asked
background and the object's colour reliably and the shape and motion only partly, so this
pins background and colour (and their switches) with the TinyWorld evaluator; a
checkpoint that regressed would fail here.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from memory.stream import Stream
from model.bundle import DEFAULT_WEIGHTS, VideoModel
from model.config import PRESETS
from model.storyboard import chunk_at
from model.tinyworld.evaluate import FrameReader
from model.tinyworld.spec import BACKGROUND_NAMES, COLOUR_NAMES, parse_prompt

TIMELINE = [
    (0.0, "a big red circle bouncing over the ocean"),
    (2.0, "a big red circle bouncing in the snow"),
    (4.0, "a small cyan square standing still in the night"),
    (6.0, "a big yellow ring moving left in the desert"),
]
SECONDS = 8.0


def test_shipped_checkpoint_loads_strictly():
    """model/weights/tiny.safetensors is the tiny preset, under 40 MB, no key mismatch;
    its sampling (which the checkpoint carries) keeps the preset's steps and schedule."""
    model = VideoModel.load_default()
    assert DEFAULT_WEIGHTS.stat().st_size < 40 * 2**20
    tiny = PRESETS["tiny"]
    assert replace(model.config, sampler=tiny.sampler) == tiny
    shipped = model.config.sampler
    assert (shipped.steps, shipped.shift) == (tiny.sampler.steps, tiny.sampler.shift)


def test_shipped_model_draws_the_asked_background_and_colour_and_switches_them():
    """An 8 s, four-prompt generation shows each asked background and object colour, as
    the evaluator reads frames, on >= 90% of the frames from 2 chunks after each switch
    to the next one."""
    torch.set_num_threads(2)
    model = VideoModel.load_default()
    s = Stream(model, TIMELINE[0][1], seed=0)
    fpc = s.frames_per_chunk
    starts = [chunk_at(at, s.fps, fpc) for at, _ in TIMELINE]
    reader = FrameReader(s.width)
    for i, (_, prompt) in enumerate(TIMELINE):
        if i:
            s.set_prompt(prompt)
        end = starts[i + 1] if i + 1 < len(TIMELINE) else int(SECONDS * s.fps) // fpc
        frames = [f for _ in range(starts[i], end) for f in s.next_chunk()]
        asked = parse_prompt(prompt).attributes
        settled = [reader.read(f) for f in frames[2 * fpc if i else 0 :]]
        background = BACKGROUND_NAMES.index(asked.background)
        colour = COLOUR_NAMES.index(asked.colour)
        bg_hits = sum(r.background == background for r in settled)
        colour_hits = sum(r.colour == colour for r in settled)
        assert bg_hits >= 0.9 * len(settled), (prompt, "background", bg_hits, len(settled))
        assert colour_hits >= 0.9 * len(settled), (prompt, "colour", colour_hits, len(settled))
