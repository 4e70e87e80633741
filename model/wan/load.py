"""Assemble a VideoModel from Wan2.1 files: a denoiser, the base's VAE and umT5.

    wan:DIR                                the base's own transformer, default causal preset
    self-forcing:CKPT / causvid:CKPT       a causal checkpoint on the base (--base DIR)
    longlive:CKPT [--lora LORA]            LongLive's, its LoRA merged at load

What can be checked before building is checked first: the files exist and read, the
LoRA fits the denoiser, the size fits the VAE and patch, and the chosen device has the
memory the family's preset (plus the VAE, umT5 and decoder states) says the model needs.
Modules are then built empty on the meta device and filled with
`load_state_dict(assign=True, strict=True)` after a fit check that names the first
missing, unexpected or misshapen keys. The VideoModel is assembled only once all three
parts are filled, so a failure leaves nothing half-loaded: the caller gets a
CheckpointError / ConfigError and no model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from model.bundle import VideoModel, check_size, parse_size
from model.config import ModelConfig, TextConfig, VAEConfig
from model.dit import Rope3D, WanModel
from model.errors import CheckpointError, ConfigError
from model.precision import resolve_dtype
from model.wan.base_dir import BaseDir, find_base, text_parts, vae_parts
from model.wan.checkpoints import (
    check_fits,
    dit_config_from_state,
    heads_from_config,
    merge_lora,
    read_denoiser,
)
from model.wan.memory import check_memory
from model.wan.presets import FAMILIES, SPACE_STRIDE
from model.wan.shapes_only import shapes_only
from model.wan.text import UMT5TextEncoder
from model.wan.vae import WanVAE, decoder_state_bytes

log = logging.getLogger(__name__)
FAMILY_NAMES = tuple(FAMILIES)  # wan, self-forcing, causvid, longlive


@dataclass(frozen=True)
class WanSpec:
    """What `--model FAMILY:PATH [--base DIR] [--lora LORA]` names."""

    family: str
    checkpoint: Path | None  # None: the base's own transformer (wan:DIR)
    base: Path
    lora: Path | None = None


def is_wan_spec(spec: str) -> bool:
    """Whether `--model` names a Wan2.1-based model (FAMILY:PATH)."""
    return spec.partition(":")[0] in FAMILY_NAMES and ":" in spec


def parse_spec(spec: str, base: str | None = None, lora: str | None = None) -> WanSpec:
    """The model a `--model`/`--base`/`--lora` combination names; ConfigError if it
    names none (an unknown family, a checkpoint without --base, ...)."""
    family, _, path = spec.partition(":")
    if family not in FAMILY_NAMES or not path:
        forms = ", ".join(f + ":PATH" for f in FAMILY_NAMES)
        raise ConfigError(f"unknown model {spec!r}; Wan2.1 models are {forms}", value=spec)
    if family == "wan":
        if base is not None and Path(base) != Path(path):
            raise ConfigError("wan:DIR is its own base: give no --base, or the same DIR")
        return WanSpec(family, None, Path(path), Path(lora) if lora else None)
    if base is None:
        raise ConfigError(
            f"{family}:CKPT needs --base DIR: the Wan2.1 base whose VAE and text encoder it uses",
            value=spec,
        )
    return WanSpec(family, Path(path), Path(base), Path(lora) if lora else None)


def _fill(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Fill a meta-built module from `state`: every key present and of its shape, or a
    CheckpointError naming the first ones that are not (nothing is loaded then)."""
    check_fits(state, module, source)
    module.load_state_dict(state, strict=True, assign=True)


def _denoiser(spec: WanSpec, base: BaseDir):
    """(state in Wan's names, DiTConfig, description), the LoRA merged."""
    source = spec.checkpoint or base.transformer
    state, description = read_denoiser(source)
    # heads show in no shape: the checkpoint's config.json, else its base's
    heads = heads_from_config(source) or heads_from_config(base.transformer)
    if spec.lora is not None:
        state = merge_lora(state, spec.lora)
        description += f", LoRA {spec.lora.name} merged"
    return state, dit_config_from_state(state, heads), description


def _build_dit(cfg, state, source: str) -> WanModel:
    with torch.device("meta"):
        dit = WanModel(cfg)
    _fill(dit, state, source)
    dit.rope = Rope3D(cfg.dim // cfg.num_heads)  # not in the checkpoint: rebuilt on the host
    return dit


def _build_vae(config: dict, state, source: str) -> WanVAE:
    from diffusers import AutoencoderKLWan

    with torch.device("meta"):
        vae = AutoencoderKLWan.from_config(config)
    _fill(vae, state, source)
    return WanVAE(vae.eval())


def _read_tokenizer(tokenizer_dir: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(tokenizer_dir))
    except Exception as exc:  # transformers raises OSError, ValueError, ...
        raise CheckpointError(f"cannot read the tokenizer in {tokenizer_dir}: {exc}") from exc


def _build_text(config: dict, state, tokenizer, source: str) -> UMT5TextEncoder:
    from transformers import UMT5Config, UMT5EncoderModel

    with torch.device("meta"):
        encoder = UMT5EncoderModel(UMT5Config(**config))
    if "encoder.embed_tokens.weight" not in state and "shared.weight" in state:
        state = {**state, "encoder.embed_tokens.weight": state["shared.weight"]}
    _fill(encoder, state, source)
    encoder.tie_weights()
    return UMT5TextEncoder(encoder.eval(), tokenizer)


def load_named(
    spec: str,
    base: str | None,
    lora: str | None,
    size: str | None,
    dtype: str,
    builtin,
    device: str = "auto",
    weights: bool = True,
) -> VideoModel:
    """The model `--model SPEC [--base DIR] [--lora LORA] [--size WxH] [--dtype D]
    [--device DEV]` names: a Wan2.1 family (FAMILY:PATH) on `device` ("auto": a CUDA GPU
    when there is one), or one of endless's own, made on the host by `builtin(spec,
    compute_dtype)` (tiny, random:PRESET, a checkpoint path) and then set to `size`.
    weights=False: a Wan model is built on the meta device from its files' shapes (the
    server's front end: its configuration without its memory; endless's own are small)."""
    wxh = parse_size(size) if size else None
    if is_wan_spec(spec):
        dev = pick_device(device)
        compute = resolve_dtype(dtype, dev)  # as the engine on `dev` will compute
        if not weights:
            with shapes_only():
                return load_wan(parse_spec(spec, base, lora), wxh, compute, "meta")
        return load_wan(parse_spec(spec, base, lora), wxh, compute, dev)
    if base is not None or lora is not None:
        raise ConfigError(
            f"--base and --lora go with a Wan2.1 model (self-forcing:CKPT, ...), not {spec!r}",
            value=spec,
        )
    if device not in ("auto", "cpu"):
        raise ConfigError(f"--device {device} goes with a Wan2.1 model, not {spec!r}", device)
    model = builtin(spec, resolve_dtype(dtype))
    return model.with_size(*wxh) if wxh else model


def pick_device(name: str) -> str:
    """ "auto": "cuda" when a CUDA GPU is there, else "cpu"; other names as given, checked."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {name!r}: {exc}", value=name) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name} asked for, but there is no CUDA GPU here", name)
    return name


def load_wan(
    spec: WanSpec,
    size: tuple[int, int] | None = None,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
) -> VideoModel:
    """The VideoModel `spec` names, at `size` (width, height; default the family's), its
    denoiser and VAE in `dtype`, everything on `device`."""
    family = FAMILIES[spec.family]
    base = find_base(spec.base)
    state, dit_cfg, description = _denoiser(spec, base)
    vae_cfg, vae_state = vae_parts(base)
    text_cfg, text_state = text_parts(base)
    tokenizer = _read_tokenizer(base.tokenizer)
    stream = family.stream
    width, height = size or (stream.width, stream.height)
    check_size(width, height, SPACE_STRIDE * max(dit_cfg.patch_size[1:]))
    states = (stream.rewind_chunks + 2) * decoder_state_bytes(
        vae_cfg, height, width, dtype, stream.chunk_latent_frames
    )
    if device != "meta":  # the meta device holds shapes only (the server's front end)
        check_memory(family, dit_cfg, dtype, height, width, [vae_state, text_state], device, states)
    dit = _build_dit(dit_cfg, state, description)
    vae = _build_vae(vae_cfg, vae_state, str(base.vae))
    text = _build_text(text_cfg, text_state, tokenizer, str(base.text_encoder))
    config = ModelConfig(
        name=spec.family,
        vae=VAEConfig(z_dim=vae.z_dim, time_stride=vae.time_stride, space_stride=vae.space_stride),
        dit=dit_cfg,
        text=TextConfig(dim=text.text_dim),
        sampler=family.sampler,
        stream=replace(stream, width=width, height=height),
    )
    model = VideoModel(config, dtype, dit=dit, vae=vae, text=text)
    model.requires_grad_(False)
    model.to(device)
    model.set_dtype(dtype)
    text.encoder.to(dtype)
    log.info(
        "loaded %s (%s) on the %s base at %s", spec.family, description, base.layout, base.path
    )
    model.description = f"{spec.family}: {description}; {base.layout}-layout base {base.path}"
    return model
