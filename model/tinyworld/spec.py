"""TinyWorld v1 vocabulary and prompt parsing (defined in docs/tinyworld.md).

Everything that names a word of the world lives here: the renderer, the evaluator, the
caption sampler and the text encoder all read these tables, so they cannot disagree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace

from model.errors import PromptError

FPS = 24

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "yellow": (245, 220, 30),
    "green": (60, 220, 80),
    "blue": (60, 90, 245),
    "magenta": (225, 50, 215),
    "cyan": (40, 215, 225),
}
SHAPES = ("circle", "square", "triangle", "ring")
SIZES: dict[str, float] = {"small": 0.16, "big": 0.32}
MOTIONS = (
    "moving left",
    "moving right",
    "moving up",
    "moving down",
    "bouncing",
    "circling",
    "standing still",
)
# Base colour of each background: (top, bottom) of its vertical gradient (equal if flat).
BACKGROUNDS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "night": ((10, 14, 40), (30, 34, 84)),
    "sunset": ((250, 160, 70), (120, 50, 120)),
    "ocean": ((20, 80, 160), (20, 80, 160)),
    "forest": ((30, 95, 45), (30, 95, 45)),
    "desert": ((215, 180, 115), (215, 180, 115)),
    "snow": ((205, 210, 220), (205, 210, 220)),
}
COLOUR_NAMES = tuple(COLOURS)
SIZE_NAMES = tuple(SIZES)
BACKGROUND_NAMES = tuple(BACKGROUNDS)

# Words that carry no meaning in a prompt. Anything else outside the vocabulary is unknown.
FILLER = frozenset(
    "a an the over in on at of with and please some one is it its that which "
    "there here show me i want see video scene".split()
)
MAX_PROMPT_CHARS = 500

# Multi-word motions are matched first, then single words.
_MOTION_WORDS = {
    ("moving", "left"): "moving left",
    ("moving", "right"): "moving right",
    ("moving", "up"): "moving up",
    ("moving", "down"): "moving down",
    ("standing", "still"): "standing still",
}
_SINGLE_MOTIONS = {"bouncing": "bouncing", "circling": "circling"}


@dataclass(frozen=True)
class Attributes:
    """What a prompt asks for; None means "not said" (the world or the model picks)."""

    colour: str | None = None
    shape: str | None = None
    size: str | None = None
    motion: str | None = None
    background: str | None = None

    def merged_over(self, base: Attributes) -> Attributes:
        """Said attributes of self, the rest from base."""
        return replace(base, **{f.name: v for f in fields(self) if (v := getattr(self, f.name))})

    def caption(self) -> str:
        """The canonical caption of the grammar: a {size} {colour} {shape} {motion} in the {bg}."""
        words = ["a"] + [w for w in (self.size, self.colour, self.shape, self.motion) if w]
        if self.background:
            words += ["in", "the", self.background]
        return " ".join(words)


ATTRIBUTE_NAMES = tuple(f.name for f in fields(Attributes))
VOCAB: dict[str, tuple[str, ...]] = {
    "colour": COLOUR_NAMES,
    "shape": SHAPES,
    "size": SIZE_NAMES,
    "motion": MOTIONS,
    "background": BACKGROUND_NAMES,
}


@dataclass(frozen=True)
class ParsedPrompt:
    attributes: Attributes
    unknown: tuple[str, ...]  # words outside the vocabulary, in the order typed


def _words(text: str) -> list[str]:
    """Runs of letters or digits, any script: "über" and "3" are words (and unknown ones)."""
    return re.findall(r"[^\W_]+", text.lower())


def parse_prompt(text: str) -> ParsedPrompt:
    """Read a typed prompt: case, order and filler words do not matter.

    Raises PromptError for an empty or overlong prompt, or one that says two values of
    one attribute ("red blue circle"). Unknown words are returned, not raised, so the
    caller decides how to report them.
    """
    if not isinstance(text, str):
        raise PromptError("prompt must be a string", value=text)
    if len(text) > MAX_PROMPT_CHARS:
        raise PromptError(f"prompt is longer than {MAX_PROMPT_CHARS} characters", value=text)
    words = _words(text)
    if not words:
        raise PromptError("prompt is empty", value=text)
    found: dict[str, str] = {}
    unknown: list[str] = []

    def put(attr: str, value: str) -> None:
        if attr in found and found[attr] != value:
            raise PromptError(
                f"prompt names two {attr}s: {found[attr]!r} and {value!r}", value=text
            )
        found[attr] = value

    i = 0
    while i < len(words):
        w = words[i]
        pair = tuple(words[i : i + 2])
        if pair in _MOTION_WORDS:
            put("motion", _MOTION_WORDS[pair])
            i += 2
            continue
        if w in _SINGLE_MOTIONS:
            put("motion", _SINGLE_MOTIONS[w])
        elif w in COLOURS:
            put("colour", w)
        elif w in SHAPES:
            put("shape", w)
        elif w in SIZES:
            put("size", w)
        elif w in BACKGROUNDS:
            put("background", w)
        elif w not in FILLER:
            unknown.append(w)
        i += 1
    return ParsedPrompt(Attributes(**found), tuple(unknown))


def is_held_out(colour: str, shape: str, background: str) -> bool:
    """The (colour, shape, background) triples training never shows (tinyworld.md)."""
    c, s, b = COLOUR_NAMES.index(colour), SHAPES.index(shape), BACKGROUND_NAMES.index(background)
    return (c + 2 * s + 3 * b) % 7 == 0
