"""umT5 behind our TextEncoder interface: transformers' encoder, padded and zeroed as Wan."""

from __future__ import annotations

import pytest
import torch
from wan_tiny import tiny_tokenizer, tiny_umt5

from model.wan.text import UMT5TextEncoder, clean_prompt


@pytest.fixture(scope="module")
def text():
    return UMT5TextEncoder(tiny_umt5(), tiny_tokenizer())


def test_tokens_are_the_encoders_output_on_the_prompt_then_zeros(text):
    """The first tokens are transformers' UMT5EncoderModel output on the prompt's ids
    (end token included); every token past them is zero, 512 in all."""
    prompt = "a cat walking in the rain"
    enc = text.encode(prompt)
    ids = text.tokenizer(prompt, return_tensors="pt")["input_ids"]  # (1, n) with </s>
    n = ids.shape[1]
    with torch.no_grad():
        ref = text.encoder(input_ids=ids).last_hidden_state[0]
    assert enc.tokens.shape == (512, 16)
    torch.testing.assert_close(enc.tokens[:n], ref, atol=1e-5, rtol=1e-5)
    assert torch.count_nonzero(enc.tokens[n:]) == 0


def test_padding_and_truncation_follow_wans_tokenizer_call(text):
    """Ids are padded with <pad> (0) to 512 after the end token (1), the mask marks the
    prompt's tokens; a prompt over 512 tokens is cut to 512, its last id the end token."""
    ids, mask = text.token_ids(["a dog", "rain " * 600])
    assert ids.shape == mask.shape == (2, 512)
    n = int(mask[0].sum())
    assert ids[0, n - 1] == 1 and torch.all(ids[0, n:] == 0) and torch.all(mask[0, n:] == 0)
    assert int(mask[1].sum()) == 512 and ids[1, -1] == 1
    assert torch.count_nonzero(text.encode("rain " * 600).tokens.abs().sum(-1)) == 512


def test_prompts_are_free_text_and_never_unknown(text):
    """Any words are accepted: encode_strict reports no unknown word, and the encoder says
    it takes free text; the null prompt is the empty prompt's (its end token only)."""
    enc = text.encode_strict("a zebra juggling quantum pancakes")
    assert enc.unknown == () and text.prompts == "free-text"
    null = text.null()
    assert torch.count_nonzero(null.abs().sum(-1)) == 1


def test_prompts_are_cleaned_as_wan_cleans_them(text):
    """HTML entities are decoded and whitespace runs collapse, so such variants encode
    to the same tokens."""
    assert clean_prompt("  a cat &amp;amp;\n\tdog ") == "a cat & dog"
    assert torch.equal(text.encode("a  cat\n").tokens, text.encode("a cat").tokens)
