"""Tiny random Wan parts for tests, built offline from a seed: a Wan VAE, a umT5 encoder
and a tokenizer of a few words (a Unigram vocabulary built in code, no download)."""

from __future__ import annotations

import torch

WORDS = (
    "a cat dog walking running in on the rain snow beach city street red blue big small "
    "and at night with over"
).split()


def tiny_vae(seed: int = 0, z_dim: int = 4, wan_stats: bool = False):
    """A diffusers AutoencoderKLWan with Wan2.1's layout (4 levels, 2 res blocks, mid
    attention) at base_dim 8, random weights from `seed`; latent stats random, or
    Wan2.1's published ones (diffusers' defaults, z_dim 16) with `wan_stats`."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    if wan_stats:
        return AutoencoderKLWan(base_dim=8, z_dim=z_dim).eval()
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


# -- whole bases on disk ---------------------------------------------------------------------
Z_DIM = 16  # Wan2.1's latent channels (the original layout's VAE must have 16)
TEXT_DIM = 16
DIT = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=16,
    in_channels=Z_DIM,
    out_channels=Z_DIM,
    text_dim=TEXT_DIM,
    freq_dim=32,
    ffn_dim=64,
    num_layers=2,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
)


def tiny_transformer(seed: int = 0):
    """A diffusers WanTransformer3DModel sized for the tiny base, random weights (its
    output projection too, so that prompts and steps change the frames)."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    model = WanTransformer3DModel(**DIT).eval()
    with torch.no_grad():
        model.proj_out.weight.normal_(0, 0.3)
    return model


def tiny_parts(seed: int = 0):
    """(transformer, vae, text encoder, tokenizer) of one tiny random Wan2.1 base."""
    return (
        tiny_transformer(seed),
        tiny_vae(seed, z_dim=Z_DIM, wan_stats=True),
        tiny_umt5(seed, d_model=TEXT_DIM),
        tiny_tokenizer(),
    )


def tiny_stream_model():
    """A VideoModel of Wan parts (the tiny denoiser, a Wan VAE, umT5) at 64x32, 16 fps."""
    from model.bundle import VideoModel
    from model.config import ModelConfig, StreamConfig, TextConfig, VAEConfig
    from model.dit import WanModel
    from model.wan.checkpoints import dit_config_from_state
    from model.wan.keys import DIFFUSERS
    from model.wan.text import UMT5TextEncoder
    from model.wan.vae import WanVAE

    state = DIFFUSERS(tiny_transformer().state_dict())
    cfg = dit_config_from_state(state, heads=DIT["num_attention_heads"])
    dit = WanModel(cfg)
    dit.load_state_dict(state, strict=True)
    vae = WanVAE(tiny_vae(z_dim=16, wan_stats=True))
    text = UMT5TextEncoder(tiny_umt5(d_model=16), tiny_tokenizer())
    config = ModelConfig(
        name="wan-test",
        vae=VAEConfig(z_dim=16),
        dit=cfg,
        text=TextConfig(dim=16),
        stream=StreamConfig(height=32, width=64, fps=16, window_latent_frames=6),
    )
    return VideoModel(config, dit=dit, vae=vae, text=text)


def write_diffusers_base(path, seed: int = 0):
    """A tiny base in the diffusers layout, written by WanPipeline.save_pretrained."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    transformer, vae, text, tokenizer = tiny_parts(seed)
    pipe = WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        transformer=transformer,
    )
    pipe.save_pretrained(str(path))
    return path


# Wan's original VAE names for diffusers' (the inverse of diffusers' converter, checked
# against it by `write_original_base`): decoder up blocks are one flat list there.
def _original_vae_key(key: str) -> str:
    import re

    for a, b in (
        ("encoder.conv_in.", "encoder.conv1."),
        ("decoder.conv_in.", "decoder.conv1."),
        ("encoder.norm_out.", "encoder.head.0."),
        ("encoder.conv_out.", "encoder.head.2."),
        ("decoder.norm_out.", "decoder.head.0."),
        ("decoder.conv_out.", "decoder.head.2."),
        ("post_quant_conv.", "conv2."),
        ("quant_conv.", "conv1."),
        ("mid_block.attentions.0.", "middle.1."),
        ("encoder.down_blocks.", "encoder.downsamples."),
    ):
        if key.startswith(a) or f".{a}" in key:
            key = key.replace(a, b, 1)
    key = re.sub(r"mid_block\.resnets\.(\d)\.", lambda m: f"middle.{2 * int(m[1])}.", key)
    m = re.match(r"decoder\.up_blocks\.(\d)\.resnets\.(\d)\.(.*)", key)
    if m:
        key = f"decoder.upsamples.{4 * int(m[1]) + int(m[2])}.{m[3]}"
    m = re.match(r"decoder\.up_blocks\.(\d)\.upsamplers\.0\.(.*)", key)
    if m:
        key = f"decoder.upsamples.{4 * int(m[1]) + 3}.{m[2]}"
    for a, b in (
        (".norm1.", ".residual.0."),
        (".conv1.", ".residual.2."),
        (".norm2.", ".residual.3."),
        (".conv2.", ".residual.6."),
        (".conv_shortcut.", ".shortcut."),
    ):
        if re.match(r"(en|de)coder\.(downsamples|upsamples|middle)\.", key):
            key = key.replace(a, b)
    return key


def write_original_base(path, seed: int = 0):
    """The same tiny base in Wan-AI's original layout: config.json and
    diffusion_pytorch_model.safetensors in Wan's names, Wan2.1_VAE.pth and
    models_t5_umt5-xxl-enc-bf16.pth in Wan's own key names, google/umt5-xxl/."""
    import json
    from pathlib import Path

    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers
    from safetensors.torch import save_file

    from model.wan.base_dir import rename
    from model.wan.keys import DIFFUSERS

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    transformer, vae, text, tokenizer = tiny_parts(seed)
    dit_state = {k: v.contiguous() for k, v in DIFFUSERS(transformer.state_dict()).items()}
    save_file(dit_state, str(path / "diffusion_pytorch_model.safetensors"))
    config = {"_class_name": "WanModel", "dim": 32, "num_heads": 2, "num_layers": 2}
    (path / "config.json").write_text(json.dumps(config))
    vae_state = vae.state_dict()
    original = {_original_vae_key(k): v for k, v in vae_state.items()}
    assert convert_wan_vae_to_diffusers(dict(original)).keys() == vae_state.keys()
    torch.save(original, path / "Wan2.1_VAE.pth")
    t5 = {k: v for k, v in text.state_dict().items() if k != "encoder.embed_tokens.weight"}
    torch.save(
        {rename(k, reverse=True): v for k, v in t5.items()},
        path / "models_t5_umt5-xxl-enc-bf16.pth",
    )
    tokenizer.save_pretrained(str(path / "google" / "umt5-xxl"))
    return path


def write_checkpoint(path, seed: int = 1, ema: bool = True):
    """A causal training checkpoint as Self-Forcing / CausVid / LongLive save it: the
    denoiser under `generator_ema` (and a different `generator`), `model.` prefixed."""
    from model.wan.keys import DIFFUSERS

    ema_state = DIFFUSERS(tiny_transformer(seed).state_dict())
    raw = DIFFUSERS(tiny_transformer(seed + 100).state_dict())
    out = {"generator": {f"model.{k}": v for k, v in raw.items()}}
    if ema:
        out["generator_ema"] = {f"model.{k}": v for k, v in ema_state.items()}
    torch.save(out, path)
    return path


def write_lora(path, rank: int = 2, seed: int = 0, targets=("self_attn.q", "ffn.0")):
    """LongLive's adapter file: {"generator_lora": peft keys} for every block's targets."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    dim, ffn = DIT["num_attention_heads"] * DIT["attention_head_dim"], DIT["ffn_dim"]
    shapes = {"self_attn.q": (dim, dim), "ffn.0": (ffn, dim)}
    for i in range(DIT["num_layers"]):
        for t in targets:
            o, n = shapes[t]
            out[f"base_model.model.blocks.{i}.{t}.lora_A.default.weight"] = torch.randn(
                rank, n, generator=g
            )
            out[f"base_model.model.blocks.{i}.{t}.lora_B.default.weight"] = (
                torch.randn(o, rank, generator=g) * 0.1
            )
    torch.save({"generator_lora": out}, path)
    return path
