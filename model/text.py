"""Text encoders: the interface, and the TinyWorld slot encoder that implements it.

A text encoder turns prompts into context tokens (B, text_len, text_dim) for the DiT's
cross-attention. `TextEncoder` is the interface a real encoder (umT5 for Wan weights)
implements too. The TinyWorld encoder reads a prompt into attribute slots (so case, word
order and filler words cannot matter) and gives one token per slot: slot embedding +
value embedding, with a learned "not said" value per slot. Unknown words are returned to
the caller, never silently dropped.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, replace

import torch
from torch import nn

from model.config import TextConfig
from model.errors import UnknownWordsError
from model.tinyworld.spec import ATTRIBUTE_NAMES, VOCAB, Attributes, ParsedPrompt, parse_prompt


@dataclass(frozen=True)
class EncodedPrompt:
    text: str
    tokens: torch.Tensor  # (text_len, text_dim)
    unknown: tuple[str, ...]
    # the same prompt with its motion left unsaid, for motion guidance; None when the
    # prompt says no motion or the encoder cannot leave it out
    without_motion: torch.Tensor | None = None


class TextEncoder(ABC, nn.Module):
    """Interface: prompts -> context tokens."""

    text_len: int
    text_dim: int
    # which prompts it takes: "tinyworld" (TinyWorld's vocabulary) or "free-text"
    prompts: str = "free-text"

    @abstractmethod
    def encode(self, text: str) -> EncodedPrompt:
        """Encode one prompt; unknown words are reported in the result."""

    def encode_strict(self, text: str) -> EncodedPrompt:
        """Encode, raising UnknownWordsError if any word is outside the vocabulary."""
        enc = self.encode(text)
        if enc.unknown:
            raise UnknownWordsError(enc.unknown, value=text)
        return enc

    def check(self, text: str) -> None:
        """Raise PromptError / UnknownWordsError if `text` cannot be used, as cheaply as
        the encoder can tell (the server checks prompts on its event loop)."""
        self.encode_strict(text)

    @abstractmethod
    def null(self) -> torch.Tensor:
        """Tokens of the empty prompt (text_len, text_dim), for classifier-free guidance."""

    def complete_from_image(self, text: str, image) -> str:
        """The prompt to use for a stream that starts from `image` (uint8 (H, W, 3), the
        stream's frame size): `text` itself unless the encoder reads images."""
        return text


class TinyWorldTextEncoder(TextEncoder):
    """One token per TinyWorld attribute slot; value 0 of each slot means "not said"."""

    prompts = "tinyworld"

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.text_len = len(ATTRIBUTE_NAMES)
        self.text_dim = cfg.dim
        self.slot = nn.Parameter(torch.randn(self.text_len, cfg.dim) * 0.5)
        self.values = nn.ModuleDict(
            {name: nn.Embedding(1 + len(VOCAB[name]), cfg.dim) for name in ATTRIBUTE_NAMES}
        )

    def indices(self, attrs: Attributes) -> list[int]:
        """Value index per slot (0 = not said)."""
        out = []
        for name in ATTRIBUTE_NAMES:
            v = getattr(attrs, name)
            out.append(0 if v is None else 1 + VOCAB[name].index(v))
        return out

    def tokens_from_indices(self, idx: torch.Tensor) -> torch.Tensor:
        """idx (B, text_len) long -> (B, text_len, text_dim)."""
        vals = [self.values[n](idx[:, i]) for i, n in enumerate(ATTRIBUTE_NAMES)]
        return torch.stack(vals, dim=1) + self.slot

    def encode(self, text: str) -> EncodedPrompt:
        parsed = parse_prompt(text)
        idx = torch.tensor([self.indices(parsed.attributes)])
        if parsed.attributes.motion is not None:
            idx = torch.cat([idx, idx])
            idx[1, ATTRIBUTE_NAMES.index("motion")] = 0  # "not said"
        with torch.no_grad():
            tokens = self.tokens_from_indices(idx)
        without_motion = tokens[1] if len(tokens) > 1 else None
        return EncodedPrompt(text, tokens[0], parsed.unknown, without_motion)

    # Training captions always say colour and shape (docs/tinyworld), so the model learned to
    # take size, motion and background from its context when unsaid, but never those two.
    FROM_IMAGE = ("colour", "shape")

    def complete_from_image(self, text: str, image) -> str:
        """`text` with the colour and shape it leaves unsaid read from `image` (TinyWorld's
        frame reader), as a canonical caption ("moving left" over a green ring: "a green
        ring moving left"), so that a start image keeps them; said words always win."""
        from model.tinyworld.reading import FrameReader

        said = parse_prompt(text) if text.strip() else ParsedPrompt(Attributes(), ())
        if said.unknown or image.shape[0] != image.shape[1]:
            return text
        read = FrameReader(image.shape[0]).read(image)
        found = {"colour": read.colour, "shape": read.shape}
        fill = {
            name: VOCAB[name][i]
            for name, i in found.items()
            if name in self.FROM_IMAGE and i >= 0 and getattr(said.attributes, name) is None
        }
        return replace(said.attributes, **fill).caption() if fill else text

    def null(self) -> torch.Tensor:
        with torch.no_grad():
            return self.tokens_from_indices(torch.zeros(1, self.text_len, dtype=torch.long))[0]
