"""umT5 (transformers' `UMT5EncoderModel` + its tokenizer) behind our TextEncoder interface.

As Wan encodes a prompt: the text is cleaned (HTML entities, runs of whitespace), tokenised
with the end token to exactly `text_len` (512) tokens (padded, or truncated), encoded with
the padding masked out, and the encoder's output is zeroed past the prompt's own tokens
(Wan keeps `context[:seq_len]` and pads the DiT's text input with zeros). Prompts are free
text: there is no vocabulary check, so `encode_strict` never reports unknown words.
"""

from __future__ import annotations

import html
import re

import torch

from model.text import EncodedPrompt, TextEncoder

WAN_TEXT_LEN = 512  # umT5 tokens per prompt, as Wan2.1 and its causal descendants use


def clean_prompt(text: str) -> str:
    """Wan's prompt cleaning without its optional ftfy pass: HTML entities decoded (twice,
    as Wan does), whitespace runs made one space, ends stripped."""
    text = html.unescape(html.unescape(text))
    return re.sub(r"\s+", " ", text).strip()


class UMT5TextEncoder(TextEncoder):
    """Free-text prompts -> umT5 tokens (text_len, d_model), zero past the prompt."""

    prompts = "free-text"

    def __init__(self, encoder, tokenizer, text_len: int = WAN_TEXT_LEN):
        super().__init__()
        self.encoder = encoder  # transformers.UMT5EncoderModel
        self.tokenizer = tokenizer  # a tokenizer of umT5's vocabulary (not a module)
        self.text_len = text_len
        self.text_dim = encoder.config.d_model
        self._null: torch.Tensor | None = None

    def token_ids(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, mask), both (B, text_len) long, as Wan's tokenizer call makes them."""
        out = self.tokenizer(
            [clean_prompt(t) for t in texts],
            padding="max_length",
            truncation=True,
            max_length=self.text_len,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        return out["input_ids"], out["attention_mask"]

    @torch.no_grad()
    def encode_batch(self, texts: list[str]) -> torch.Tensor:
        """Prompts -> (B, text_len, text_dim), zero past each prompt's tokens."""
        ids, mask = self.token_ids(texts)
        device = self.encoder.get_input_embeddings().weight.device
        ids, mask = ids.to(device), mask.to(device)
        hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        return hidden * mask.unsqueeze(-1).to(hidden.dtype)  # (B, text_len, text_dim)

    def encode(self, text: str) -> EncodedPrompt:
        return EncodedPrompt(text, self.encode_batch([text])[0], ())

    def check(self, text: str) -> None:
        """Any text is a prompt (it is cut at 512 tokens): nothing to encode to tell."""

    def null(self) -> torch.Tensor:
        """The empty prompt's tokens (its end token only), for classifier-free guidance."""
        if self._null is None:
            self._null = self.encode_batch([""])[0]
        return self._null
