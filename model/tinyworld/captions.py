"""TinyWorld training data on the fly: random attributes, captions and clips with switches.

Training never sees a held-out (colour, shape, background) triple (spec.is_held_out);
`evaluation_prompts` builds the prompt sets that measure composition on them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.tinyworld.render import World
from model.tinyworld.spec import (
    ATTRIBUTE_NAMES,
    BACKGROUND_NAMES,
    COLOUR_NAMES,
    MOTIONS,
    SHAPES,
    SIZE_NAMES,
    VOCAB,
    Attributes,
    is_held_out,
)

# Kinds of mid-clip switch and the attributes each may change.
_SWITCH_KINDS = (("background",), ("colour", "shape"), ("motion",), ATTRIBUTE_NAMES)


def pick(rng: np.random.Generator, words: tuple[str, ...]) -> str:
    return words[int(rng.integers(len(words)))]


def _held_out(a: Attributes) -> bool:
    return is_held_out(a.colour, a.shape, a.background)


def held_out_triples() -> list[tuple[str, str, str]]:
    """Every (colour, shape, background) triple that training never shows."""
    return [
        (c, s, b)
        for c in COLOUR_NAMES
        for s in SHAPES
        for b in BACKGROUND_NAMES
        if is_held_out(c, s, b)
    ]


def random_attributes(rng: np.random.Generator, allow_held_out: bool = False) -> Attributes:
    """All five attributes uniformly at random, never a held-out triple unless allowed."""
    while True:
        a = Attributes(**{name: pick(rng, VOCAB[name]) for name in ATTRIBUTE_NAMES})
        if allow_held_out or not _held_out(a):
            return a


def random_caption(
    rng: np.random.Generator,
    attrs: Attributes,
    drop_prob: float = 0.3,
    keep: tuple[str, ...] = (),
) -> str:
    """`a {size} {colour} {shape} {motion} {over|in} the {background}`; size, motion and
    background are each left out with drop_prob unless named in keep."""

    def said(name: str) -> str | None:
        value = getattr(attrs, name)
        if value is None or (name not in keep and rng.random() < drop_prob):
            return None
        return value

    size, motion, background = said("size"), said("motion"), said("background")
    words = ["a"] + [w for w in (size, attrs.colour, attrs.shape, motion) if w]
    if background:
        words += ["over" if rng.random() < 0.5 else "in", "the", background]
    return " ".join(words)


def random_switch(rng: np.random.Generator, attrs: Attributes) -> Attributes:
    """A new full attribute set changing 1-3 attributes of attrs (sometimes only the
    background, sometimes colour/shape, sometimes the motion), never held out."""
    while True:
        kind = _SWITCH_KINDS[int(rng.integers(len(_SWITCH_KINDS)))]
        k = int(rng.integers(1, min(3, len(kind)) + 1))
        names = rng.choice(len(kind), size=k, replace=False)
        change = {}
        for i in names:
            name = kind[int(i)]
            options = tuple(w for w in VOCAB[name] if w != getattr(attrs, name))
            change[name] = pick(rng, options)
        new = Attributes(**change).merged_over(attrs)
        if not _held_out(new):
            return new


def changed(old: Attributes, new: Attributes) -> tuple[str, ...]:
    """Names of the attributes whose values differ."""
    return tuple(n for n in ATTRIBUTE_NAMES if getattr(old, n) != getattr(new, n))


@dataclass
class Clip:
    """A training clip: frames and, per frame, the caption in force and the true scene."""

    frames: np.ndarray  # (N, S, S, 3) uint8
    captions: list[str]  # one per frame
    switch_frames: list[int]  # frames where a new caption takes effect
    attributes: list[Attributes]  # one per frame: everything the renderer drew


def sample_clip(
    rng: np.random.Generator,
    n_frames: int,
    size: int = 128,
    switch_prob: float = 0.5,
    drop_prob: float = 0.3,
) -> Clip:
    """Render one random clip. With switch_prob it contains a prompt switch at a random
    frame (clips of 48+ frames may hold one more per 48 frames, each with switch_prob)."""
    attrs = random_attributes(rng)
    world = World(attrs, seed=int(rng.integers(2**62)), size=size)
    slots = max(1, n_frames // 48) if n_frames > 1 else 0
    n_switch = int((rng.random(slots) < switch_prob).sum())
    switch_frames = (
        sorted(int(f) for f in rng.choice(np.arange(1, n_frames), n_switch, replace=False))
        if n_switch
        else []
    )
    frames = np.empty((n_frames, size, size, 3), np.uint8)
    captions: list[str] = []
    per_frame: list[Attributes] = []
    caption = random_caption(rng, attrs, drop_prob)
    for i in range(n_frames):
        if i in switch_frames:
            new = random_switch(rng, attrs)
            caption = random_caption(rng, new, drop_prob, keep=changed(attrs, new))
            attrs = world.set_prompt(new, i)
        world.advance(frames[i])
        captions.append(caption)
        per_frame.append(attrs)
    return Clip(frames, captions, switch_frames, per_frame)


def evaluation_prompts(n: int, seed: int = 0) -> list[str]:
    """n full prompts (all five attributes): even ones on held-out triples, odd ones on
    seen triples. Motions, sizes, and the seen shapes and backgrounds are cycled so that
    n >= 28 names every word of the vocabulary."""
    rng = np.random.default_rng(seed)
    held = held_out_triples()
    order = rng.permutation(len(held))
    prompts = []
    for i in range(n):
        j = i // 2
        if i % 2 == 0:
            c, s, b = held[int(order[j % len(held)])]
        else:
            s, b = SHAPES[j % len(SHAPES)], BACKGROUND_NAMES[j % len(BACKGROUND_NAMES)]
            c = pick(rng, tuple(c for c in COLOUR_NAMES if not is_held_out(c, s, b)))
        size, motion = SIZE_NAMES[j % len(SIZE_NAMES)], MOTIONS[j % len(MOTIONS)]
        a = Attributes(colour=c, shape=s, size=size, motion=motion, background=b)
        prompts.append(a.caption())
    return prompts
