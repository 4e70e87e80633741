"""Tiny random Wan parts for tests, built offline from a seed: a Wan VAE, a umT5 encoder
and a tokenizer of a few words (a Unigram vocabulary built in code, no download)."""

from __future__ import annotations

import torch

WORDS = (
    "a cat dog walking running in on the rain snow beach city street red blue big small "
    "and at night with over"
).split()


def tiny_vae(seed: int = 0, z_dim: int = 4):
    """A diffusers AutoencoderKLWan with Wan2.1's layout (4 levels, 2 res blocks, mid
    attention) at base_dim 8, random weights from `seed`, non-trivial latent stats."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    mean = (torch.randn(z_dim, generator=g) * 0.5).tolist()
    std = (torch.rand(z_dim, generator=g) + 0.5).tolist()
    return AutoencoderKLWan(base_dim=8, z_dim=z_dim, latents_mean=mean, latents_std=std).eval()


def tiny_tokenizer():
    """A T5 (Unigram) tokenizer over WORDS and single letters; ids: pad 0, </s> 1, unk 2."""
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [("\u2581" + w, -1.0) for w in WORDS]
    vocab += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz"] + [("\u2581", -3.0)]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def tiny_umt5(seed: int = 0, d_model: int = 16, vocab_size: int | None = None):
    """A transformers UMT5EncoderModel with 2 layers of width `d_model`, random weights."""
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    cfg = UMT5Config(
        vocab_size=vocab_size or len(tiny_tokenizer()),
        d_model=d_model,
        d_kv=8,
        d_ff=32,
        num_layers=2,
        num_heads=2,
        relative_attention_num_buckets=8,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
    )
    return UMT5EncoderModel(cfg).eval()
