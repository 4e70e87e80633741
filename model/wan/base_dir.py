"""A Wan2.1 T2V base directory, in either layout users have, read into diffusers' and
transformers' names.

    diffusers (`WanPipeline.save_pretrained`)   original (Wan-AI's release)
    model_index.json                            config.json
    transformer/  (config + safetensors)        diffusion_pytorch_model*.safetensors
    vae/          (config + safetensors)        Wan2.1_VAE.pth
    text_encoder/ (config + safetensors)        models_t5_umt5-xxl-enc-bf16.pth
    tokenizer/                                  google/umt5-xxl/  (tokenizer)

The layout is told by the files present (model_index.json, or the original file names);
what each weights file holds is told by its keys: the original VAE and T5 files use Wan's
own names (`decoder.middle.0.residual.0.gamma`, `blocks.0.attn.q.weight`), converted here
to diffusers' (its own single-file converter for the VAE) and to transformers' UMT5 names
(a rename table, `T5_RENAMES`); files already in those names are taken as they are. The
configs of the original files are read from their shapes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from model.errors import CheckpointError
from model.wan.checkpoints import read_tensors, weight_files

ORIGINAL_VAE = "Wan2.1_VAE.pth"
ORIGINAL_T5 = "models_t5_umt5-xxl-enc-bf16.pth"
ORIGINAL_TOKENIZER = "google/umt5-xxl"
DIFFUSERS_PARTS = ("transformer", "vae", "text_encoder", "tokenizer")
WAN_VAE_KEY = "decoder.middle.0.residual.0.gamma"  # diffusers' signature of Wan's VAE names
DIFFUSERS_VAE_KEY = "decoder.mid_block.resnets.0.norm1.gamma"
WAN_T5_KEY = "blocks.0.attn.q.weight"
HF_T5_KEY = "encoder.block.0.layer.0.SelfAttention.q.weight"

# Wan's T5 encoder names -> transformers' UMT5EncoderModel names, `{i}` a block number.
T5_RENAMES = (
    ("token_embedding.weight", "shared.weight"),
    ("blocks.{i}.norm1.weight", "encoder.block.{i}.layer.0.layer_norm.weight"),
    ("blocks.{i}.attn.q.weight", "encoder.block.{i}.layer.0.SelfAttention.q.weight"),
    ("blocks.{i}.attn.k.weight", "encoder.block.{i}.layer.0.SelfAttention.k.weight"),
    ("blocks.{i}.attn.v.weight", "encoder.block.{i}.layer.0.SelfAttention.v.weight"),
    ("blocks.{i}.attn.o.weight", "encoder.block.{i}.layer.0.SelfAttention.o.weight"),
    (
        "blocks.{i}.pos_embedding.embedding.weight",
        "encoder.block.{i}.layer.0.SelfAttention.relative_attention_bias.weight",
    ),
    ("blocks.{i}.norm2.weight", "encoder.block.{i}.layer.1.layer_norm.weight"),
    ("blocks.{i}.ffn.gate.0.weight", "encoder.block.{i}.layer.1.DenseReluDense.wi_0.weight"),
    ("blocks.{i}.ffn.fc1.weight", "encoder.block.{i}.layer.1.DenseReluDense.wi_1.weight"),
    ("blocks.{i}.ffn.fc2.weight", "encoder.block.{i}.layer.1.DenseReluDense.wo.weight"),
    ("norm.weight", "encoder.final_layer_norm.weight"),
)


def _pattern(template: str) -> re.Pattern:
    return re.compile("^" + re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)") + "$")


def rename(key: str, table=T5_RENAMES, reverse: bool = False) -> str | None:
    """`key` renamed by the first matching row of `table` (None if no row matches)."""
    for src, dst in table:
        if reverse:
            src, dst = dst, src
        m = _pattern(src).match(key)
        if m:
            return dst.replace("{i}", m.group("i")) if "i" in m.groupdict() else dst
    return None


@dataclass(frozen=True)
class BaseDir:
    """Where each part of a Wan2.1 base lies."""

    path: Path
    layout: str  # "diffusers" | "original"
    transformer: Path  # what `read_denoiser` reads: a transformer/ dir or the base dir
    vae: Path  # vae/ dir, or Wan2.1_VAE.pth
    text_encoder: Path  # text_encoder/ dir, or models_t5_umt5-xxl-enc-bf16.pth
    tokenizer: Path  # tokenizer/ dir, or google/umt5-xxl/


def find_base(path: str | Path) -> BaseDir:
    """The parts of the base at `path`; CheckpointError naming what is missing."""
    root = Path(path)
    if not root.is_dir():
        raise CheckpointError(f"base directory not found: {root}", value=str(root))
    if (root / "model_index.json").is_file():
        missing = [p for p in DIFFUSERS_PARTS if not (root / p).is_dir()]
        if missing:
            raise CheckpointError(
                f"{root} has model_index.json (the diffusers layout) but lacks "
                f"{', '.join(p + '/' for p in missing)}",
                value=str(root),
            )
        parts = [root / p for p in DIFFUSERS_PARTS]
        return BaseDir(root, "diffusers", *parts)
    originals = {
        "diffusion_pytorch_model*.safetensors": sorted(
            root.glob("diffusion_pytorch_model*.safetensors")
        ),
        ORIGINAL_VAE: [root / ORIGINAL_VAE] if (root / ORIGINAL_VAE).is_file() else [],
        ORIGINAL_T5: [root / ORIGINAL_T5] if (root / ORIGINAL_T5).is_file() else [],
        ORIGINAL_TOKENIZER + "/": [root / ORIGINAL_TOKENIZER]
        if (root / ORIGINAL_TOKENIZER).is_dir()
        else [],
    }
    missing = [name for name, found in originals.items() if not found]
    if len(missing) == len(originals):
        raise CheckpointError(
            f"{root} is not a Wan2.1 base: it has neither model_index.json (the diffusers "
            f"layout) nor {', '.join(originals)} (the original layout)",
            value=str(root),
        )
    if missing:
        raise CheckpointError(
            f"{root} looks like an original-layout Wan2.1 base but lacks {', '.join(missing)}",
            value=str(root),
        )
    return BaseDir(
        root,
        "original",
        root,
        root / ORIGINAL_VAE,
        root / ORIGINAL_T5,
        root / ORIGINAL_TOKENIZER,
    )


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, or of a directory's weight files (sharded or not)."""
    if not path.exists():
        raise CheckpointError(f"weights not found: {path}", value=str(path))
    files = weight_files(path) if path.is_dir() else [path]
    state: dict = {}
    for f in files:
        state.update(read_tensors(f))
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a flat dict of tensors", value=str(path))
    return state


def _read_config(path: Path) -> dict:
    try:
        return json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path / 'config.json'}: {exc}") from exc


# -- the VAE -------------------------------------------------------------------------------
def vae_parts(base: BaseDir) -> tuple[dict, dict[str, torch.Tensor]]:
    """(AutoencoderKLWan config, state in diffusers' names) of the base's VAE."""
    if base.layout == "diffusers":
        config = _read_config(base.vae)
        config = {k: v for k, v in config.items() if not k.startswith("_")}
        return config, read_weights(base.vae)
    state = read_weights(base.vae)
    if WAN_VAE_KEY in state:
        from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

        state = convert_wan_vae_to_diffusers(state)
    elif DIFFUSERS_VAE_KEY not in state:
        raise CheckpointError(
            f"{base.vae} is not a Wan VAE: it has neither {WAN_VAE_KEY!r} nor "
            f"{DIFFUSERS_VAE_KEY!r}",
            value=str(base.vae),
        )
    try:
        base_dim = state["encoder.conv_in.weight"].shape[0]
        z_dim = state["post_quant_conv.weight"].shape[0]
    except KeyError as exc:
        raise CheckpointError(f"{base.vae} lacks the Wan VAE key {exc}") from None
    if z_dim != 16:
        raise CheckpointError(
            f"{base.vae} has {z_dim} latent channels; Wan2.1's VAE has 16", value=z_dim
        )
    # Wan2.1's VAE: its published latent statistics are diffusers' defaults
    return {"base_dim": int(base_dim), "z_dim": int(z_dim)}, state


# -- the text encoder ----------------------------------------------------------------------
def text_parts(base: BaseDir) -> tuple[dict, dict[str, torch.Tensor]]:
    """(UMT5Config fields, state in transformers' UMT5EncoderModel names)."""
    if base.layout == "diffusers":
        config = _read_config(base.text_encoder)
        config = {k: v for k, v in config.items() if not k.startswith("_")}
        return config, read_weights(base.text_encoder)
    state = read_weights(base.text_encoder)
    if WAN_T5_KEY in state:
        state = t5_to_transformers(state, str(base.text_encoder))
    elif HF_T5_KEY not in state:
        raise CheckpointError(
            f"{base.text_encoder} is not a umT5 encoder: it has neither {WAN_T5_KEY!r} nor "
            f"{HF_T5_KEY!r}",
            value=str(base.text_encoder),
        )
    return umt5_config_from_state(state, str(base.text_encoder)), state


def t5_to_transformers(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Wan's T5 encoder names -> UMT5EncoderModel's; an unknown key is an error."""
    out = {}
    for key, value in state.items():
        new = rename(key)
        if new is None:
            raise CheckpointError(f"{source}: key {key!r} is not one of Wan's umT5 encoder's")
        out[new] = value
    if "shared.weight" in out:  # transformers ties the stack's embedding to `shared`
        out["encoder.embed_tokens.weight"] = out["shared.weight"]
    return out


def umt5_config_from_state(state: dict[str, torch.Tensor], source: str) -> dict:
    """UMT5Config fields read from an encoder's shapes (layers, widths, heads, buckets)."""
    try:
        vocab, d_model = state["shared.weight"].shape
        bias = state["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
        q = state["encoder.block.0.layer.0.SelfAttention.q.weight"]
        d_ff = state["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"].shape[0]
    except KeyError as exc:
        raise CheckpointError(f"{source} lacks the umT5 key {exc}") from None
    buckets, heads = bias.shape
    layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.block."))
    return {
        "vocab_size": int(vocab),
        "d_model": int(d_model),
        "d_kv": int(q.shape[0]) // int(heads),
        "d_ff": int(d_ff),
        "num_layers": layers,
        "num_heads": int(heads),
        "relative_attention_num_buckets": int(buckets),
        "relative_attention_max_distance": 128,
        "feed_forward_proj": "gated-gelu",
        "layer_norm_epsilon": 1e-6,
        "dropout_rate": 0.0,
    }
