"""Wan denoiser checkpoints: key mapping both ways, layouts, wrappers, sizes, LoRA, errors."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from diffusers import WanTransformer3DModel
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
from safetensors.torch import save_file

from model.dit import WanModel
from model.errors import CheckpointError
from model.wan.checkpoints import (
    check_fits,
    dit_config_from_state,
    heads_from_config,
    merge_lora,
    read_denoiser,
)
from model.wan.keys import DIFFUSERS, detect_layout
from tests.wan_dit_tiny import HEADS, TINY, tiny_diffusers

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def diff() -> WanTransformer3DModel:
    return tiny_diffusers(0)


@pytest.fixture(scope="module")
def wan_state(diff) -> dict[str, torch.Tensor]:
    return DIFFUSERS(diff.state_dict())


def test_diffusers_to_wan_names_to_ours_is_strict(diff, wan_state):
    """Every diffusers tensor lands on one of our parameters, none missing, same values."""
    ours = WanModel(dit_config_from_state(wan_state, heads=HEADS))
    check_fits(wan_state, ours, "tiny")
    ours.load_state_dict(wan_state, strict=True)
    assert len(wan_state) == len(diff.state_dict())
    assert torch.equal(ours.head.head.weight, diff.proj_out.weight)
    assert torch.equal(ours.blocks[1].norm3.weight, diff.blocks[1].norm2.weight)
    assert torch.equal(ours.blocks[0].modulation, diff.blocks[0].scale_shift_table)


def test_back_through_diffusers_own_converter_is_strict(diff, wan_state):
    """Our (= original Wan) names, through diffusers' convert_wan_transformer_to_diffusers,
    load strictly into WanTransformer3DModel and give back its tensors."""
    converted = convert_wan_transformer_to_diffusers(dict(wan_state))
    back = WanTransformer3DModel(**TINY)
    back.load_state_dict(converted, strict=True)
    for k, v in diff.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


def test_dit_config_is_inferred_from_shapes(wan_state):
    """Width, depth, FFN, text and frequency sizes, channels and patch come from shapes;
    heads from the caller or Wan's 128-wide heads; an impossible width is refused."""
    cfg = dit_config_from_state(wan_state, heads=HEADS)
    assert (cfg.dim, cfg.num_layers, cfg.ffn_dim, cfg.text_dim, cfg.freq_dim) == (32, 2, 64, 24, 32)
    assert (cfg.in_dim, cfg.out_dim, cfg.patch_size, cfg.num_heads) == (4, 4, (1, 2, 2), 2)
    assert cfg.qk_norm and cfg.cross_attn_norm and not cfg.prev_frames
    with pytest.raises(CheckpointError, match="cannot tell the heads"):
        dit_config_from_state(wan_state)
    wide = {k: v for k, v in wan_state.items()}
    wide["patch_embedding.weight"] = torch.zeros(1536, 16, 1, 2, 2)
    assert dit_config_from_state(wide).num_heads == 12  # Wan2.1-1.3B


def test_layouts_are_told_by_signature_keys(diff, wan_state):
    """diffusers, original and wrapped original keys are told apart; others are refused."""
    assert detect_layout(diff.state_dict()) == "diffusers"
    assert detect_layout(wan_state) == "original"
    wrapped = {f"model._fsdp_wrapped_module.{k}": v for k, v in wan_state.items()}
    assert detect_layout(wrapped) == "original"
    with pytest.raises(CheckpointError, match="not a Wan2.1 denoiser"):
        detect_layout({"encoder.weight": torch.zeros(1)})


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_read_denoiser_reads_every_form_users_have(tmp_path, diff, wan_state):
    """A sharded diffusers pipeline dir, an original-layout dir, a .pt holding generator
    and generator_ema (the EMA wins, and is named), a flat safetensors with generator_ema.
    keys and model. prefixes: all give the same state in our names."""
    pipe = tmp_path / "pipe"
    diff.save_pretrained(pipe / "transformer", max_shard_size="40KB")
    (pipe / "model_index.json").write_text("{}")
    assert len(list((pipe / "transformer").glob("*.safetensors"))) > 1
    state, what = read_denoiser(pipe)
    assert same(state, wan_state) and "diffusers layout" in what
    assert heads_from_config(pipe) == HEADS

    orig = tmp_path / "orig"
    orig.mkdir()
    save_file(dict(wan_state), str(orig / "diffusion_pytorch_model.safetensors"))
    (orig / "config.json").write_text(json.dumps({"dim": 32, "num_heads": HEADS}))
    state, what = read_denoiser(orig)
    assert same(state, wan_state) and "original layout" in what
    assert heads_from_config(orig) == HEADS

    ema = {f"model.{k}": v for k, v in wan_state.items()}
    plain = {f"model.{k}": torch.zeros_like(v) for k, v in wan_state.items()}
    torch.save({"generator": plain, "generator_ema": ema}, tmp_path / "ckpt.pt")
    state, what = read_denoiser(tmp_path / "ckpt.pt")
    assert same(state, wan_state) and what.startswith("generator_ema of ckpt.pt")
    torch.save({"generator": plain}, tmp_path / "gen.pt")
    assert read_denoiser(tmp_path / "gen.pt")[1].startswith("generator of gen.pt")

    flat = {f"generator_ema.model.{k}": v.contiguous() for k, v in wan_state.items()}
    save_file(flat, str(tmp_path / "flat.safetensors"))
    state, what = read_denoiser(tmp_path / "flat.safetensors")
    assert same(state, wan_state) and what.startswith("generator_ema of flat.safetensors")


def test_unreadable_and_unfitting_checkpoints_are_named(tmp_path, wan_state):
    """A missing path, a folder without weights, junk, a non-Wan state and a checkpoint whose
    shapes do not fit (both shapes named) fail with CheckpointError."""
    with pytest.raises(CheckpointError, match="not found"):
        read_denoiser(tmp_path / "absent.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds no denoiser weights"):
        read_denoiser(tmp_path / "empty")
    (tmp_path / "junk.pt").write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match="cannot be read"):
        read_denoiser(tmp_path / "junk.pt")
    torch.save({"model": {"encoder.weight": torch.zeros(2)}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a Wan2.1 denoiser"):
        read_denoiser(tmp_path / "other.pt")
    bigger = WanModel(dit_config_from_state(wan_state, heads=HEADS)).cfg
    model = WanModel(replace(bigger, ffn_dim=96))
    with pytest.raises(
        CheckpointError,
        match=r"blocks\.0\.ffn\.0\.bias: checkpoint \(64,\) vs "
        r"model \(96,\)",
    ):
        check_fits(wan_state, model, "ckpt.pt")


def lora_for(state: dict, modules: list[str], rank: int, seed: int = 0) -> dict:
    """A peft-style adapter ({module}.lora_A/B.weight under base_model.model.)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for m in modules:
        w = state[f"{m}.weight"]
        out[f"base_model.model.{m}.lora_A.weight"] = torch.randn(rank, w.shape[1], generator=g)
        out[f"base_model.model.{m}.lora_B.weight"] = torch.randn(w.shape[0], rank, generator=g)
    return out


TARGETS = ["blocks.0.self_attn.q", "blocks.1.cross_attn.v", "blocks.1.ffn.2"]


def test_lora_merge_equals_the_explicit_w_plus_ba_forward(tmp_path, wan_state):
    """The merged model's output equals the base model run with each adapted layer computing
    W x + (alpha / r) B A x explicitly (LongLive's generator_lora, alpha 256, rank 4)."""
    lora = lora_for(wan_state, TARGETS, rank=4)
    torch.save({"generator_lora": lora}, tmp_path / "lora.pt")
    cfg = dit_config_from_state(wan_state, heads=HEADS)
    merged = WanModel(cfg).eval()
    merged.load_state_dict(merge_lora(wan_state, tmp_path / "lora.pt"))
    explicit = WanModel(cfg).eval()
    explicit.load_state_dict(wan_state)
    scale = 256 / 4
    for m in TARGETS:
        a = lora[f"base_model.model.{m}.lora_A.weight"]
        b = lora[f"base_model.model.{m}.lora_B.weight"]
        layer = explicit.get_submodule(m)
        layer.register_forward_hook(
            lambda mod, args, out, a=a, b=b: out + scale * (args[0] @ a.T) @ b.T
        )
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 4, 2, 8, 8, generator=g)
    text = torch.randn(1, 7, 24, generator=g)
    sigma = torch.tensor([[0.5, 0.5]])
    with torch.no_grad():
        got = merged(x, sigma, text, torch.arange(2))
        want = explicit(x, sigma, text, torch.arange(2))
        base = WanModel(cfg).eval()
        base.load_state_dict(wan_state)
        plain = base(x, sigma, text, torch.arange(2))
    rel = (got - want).abs().max() / want.abs().max()
    assert rel < 1e-5
    assert (plain - want).abs().max() / want.abs().max() > 1e-2  # the adapter does something


def test_loras_that_do_not_fit_are_refused(tmp_path, wan_state):
    """A LoRA for a module the denoiser lacks, with the wrong width, with half a pair, or
    missing, fails naming the module."""
    absent = lora_for(wan_state, TARGETS, rank=2)
    absent["base_model.model.blocks.9.self_attn.q.lora_A.weight"] = torch.zeros(2, 32)
    absent["base_model.model.blocks.9.self_attn.q.lora_B.weight"] = torch.zeros(32, 2)
    torch.save({"generator_lora": absent}, tmp_path / "absent.pt")
    with pytest.raises(CheckpointError, match=r"lacks.*blocks\.9\.self_attn\.q"):
        merge_lora(wan_state, tmp_path / "absent.pt")
    wide = lora_for(wan_state, TARGETS, rank=2)
    wide["base_model.model.blocks.0.self_attn.q.lora_A.weight"] = torch.zeros(2, 48)
    torch.save({"generator_lora": wide}, tmp_path / "wide.pt")
    with pytest.raises(CheckpointError, match=r"does not fit.*blocks\.0\.self_attn\.q.*\(2, 48\)"):
        merge_lora(wan_state, tmp_path / "wide.pt")
    half = lora_for(wan_state, TARGETS, rank=2)
    half.pop("base_model.model.blocks.1.ffn.2.lora_B.weight")
    torch.save({"generator_lora": half}, tmp_path / "half.pt")
    with pytest.raises(CheckpointError, match=r"only one of.*blocks\.1\.ffn\.2"):
        merge_lora(wan_state, tmp_path / "half.pt")
    with pytest.raises(CheckpointError, match="LoRA not found"):
        merge_lora(wan_state, tmp_path / "nothing.pt")
