"""Wan2.1 models end to end: tiny random bases written to disk in both layouts, causal
checkpoints and a LongLive LoRA; `endless render` to an MP4 and `endless serve` to an
aiortc viewer, with free-text prompts."""

from __future__ import annotations

import shutil

import pytest
import torch
from conftest import timeout
from wan_tiny import (
    tiny_tokenizer,
    tiny_umt5,
    write_checkpoint,
    write_diffusers_base,
    write_lora,
    write_original_base,
)

from model.wan.base_dir import find_base
from model.wan.text import UMT5TextEncoder
from server.app import prompt_kind
from server.cli import main
from server.video_file import read_frames

SIZE = "64x32"
PROMPT = "a cat walking in the rain"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The tiny base in both layouts (same weights), a Self-Forcing-style checkpoint
    (generator_ema + generator) and a LongLive LoRA."""
    root = tmp_path_factory.mktemp("wan")
    return {
        "diffusers": write_diffusers_base(root / "diffusers"),
        "original": write_original_base(root / "original"),
        "ckpt": write_checkpoint(root / "causal.pt"),
        "lora": write_lora(root / "lora.pt"),
        "root": root,
    }


def render(tmp_path, *args, seconds="2.0625") -> list:
    """Run `endless render` in-process; the decoded frames of its MP4 (16 fps: 33 frames
    = a first chunk of 9 and two of 12)."""
    out = tmp_path / "out.mp4"
    argv = ["render", *args, PROMPT, "--seconds", seconds, "--size", SIZE, "-o", str(out)]
    assert main([*argv, "--quiet", "--dtype", "fp32", "--threads", "1"]) == 0
    return list(read_frames(out))


def test_both_layouts_are_told_apart_by_their_files(files):
    """The diffusers layout is found by model_index.json, the original by its files."""
    assert find_base(files["diffusers"]).layout == "diffusers"
    assert find_base(files["original"]).layout == "original"


@pytest.mark.parametrize("layout", ["diffusers", "original"])
def test_render_wan_dir_writes_9_plus_12k_frames(files, tmp_path, layout):
    """`endless render --model wan:DIR` writes an MP4 that decodes to 33 frames of 64x32
    (9 + 12 + 12: the Wan VAE's first chunk is shorter), from either layout."""
    frames = render(tmp_path, "--model", f"wan:{files[layout]}")
    assert len(frames) == 33 and frames[0].shape == (32, 64, 3)
    assert len({f.tobytes() for f in frames}) > 1


def test_both_layouts_render_the_same_video(files, tmp_path):
    """The same weights in the two layouts give the same frames."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    # unmarked: the watermark's payload names each render, so marked files differ
    a = render(
        tmp_path / "a", "--model", f"wan:{files['diffusers']}", "--no-watermark", seconds="0.5625"
    )
    b = render(
        tmp_path / "b", "--model", f"wan:{files['original']}", "--no-watermark", seconds="0.5625"
    )
    assert len(a) == len(b) == 9
    assert all((x == y).all() for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("family", ["self-forcing", "causvid"])
def test_render_a_causal_checkpoint_on_a_base(files, tmp_path, family):
    """`--model FAMILY:CKPT --base DIR` renders with the checkpoint's EMA weights on the
    base's VAE and text encoder."""
    frames = render(
        tmp_path, "--model", f"{family}:{files['ckpt']}", "--base", str(files["original"])
    )
    assert len(frames) == 33


def test_render_longlive_with_its_lora(files, tmp_path):
    """`--model longlive:CKPT --lora LORA --base DIR` merges the LoRA: the video differs
    from the same checkpoint's without it."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    ckpt, base = f"longlive:{files['ckpt']}", str(files["diffusers"])
    with_lora = render(
        tmp_path / "a", "--model", ckpt, "--lora", str(files["lora"]), "--base", base
    )
    without = render(tmp_path / "b", "--model", ckpt, "--base", base)
    assert len(with_lora) == len(without) == 33
    assert any((x != y).any() for x, y in zip(with_lora, without, strict=True))


def refused(capsys, tmp_path, *args) -> str:
    """Run `endless render` expecting exit 2 and no output file; its error line."""
    out = tmp_path / "never.mp4"
    argv = ["render", *args, PROMPT, "--seconds", "1", "-o", str(out), "--quiet"]
    assert main(argv) == 2
    assert not out.exists()
    return capsys.readouterr().err


def test_bad_files_and_sizes_exit_2_with_a_clear_error(files, tmp_path, capsys):
    """A missing base, a base without its VAE, a checkpoint without --base, a LoRA or a
    checkpoint whose shapes do not fit, a size off the 16-pixel grid, a VAE file that is
    not one, a text encoder missing a key and a GPU that is not there each exit 2 with an
    error naming the problem, and no video is written."""
    base = str(files["original"])
    ckpt = f"self-forcing:{files['ckpt']}"
    assert "base directory not found" in refused(capsys, tmp_path, "--model", "wan:/nope")
    broken = files["root"] / "broken"
    broken.mkdir(exist_ok=True)
    for f in ("diffusion_pytorch_model.safetensors", "config.json"):
        (broken / f).write_bytes((files["original"] / f).read_bytes())
    err = refused(capsys, tmp_path, "--model", f"wan:{broken}")
    assert "Wan2.1_VAE.pth" in err
    assert "needs --base DIR" in refused(capsys, tmp_path, "--model", ckpt)
    bad_lora = files["root"] / "bad_lora.pt"
    lora = torch.load(files["lora"], weights_only=True)
    key = next(k for k in lora["generator_lora"] if "lora_A" in k)
    lora["generator_lora"][key] = torch.zeros(2, 7)
    torch.save(lora, bad_lora)
    err = refused(capsys, tmp_path, "--model", ckpt, "--base", base, "--lora", str(bad_lora))
    assert "does not fit" in err
    wide = files["root"] / "wide.pt"
    state = torch.load(files["ckpt"], weights_only=True)
    state["generator_ema"]["model.blocks.1.ffn.2.weight"] = torch.zeros(32, 63)
    torch.save(state, wide)
    err = refused(capsys, tmp_path, "--model", f"causvid:{wide}", "--base", base)
    assert "blocks.1.ffn.2.weight: checkpoint (32, 63) vs model (32, 64)" in err
    err = refused(capsys, tmp_path, "--model", ckpt, "--base", base, "--size", "60x32")
    assert "unsupported size 60x32" in err
    odd = files["root"] / "odd_parts"
    shutil.copytree(files["original"], odd, dirs_exist_ok=True)
    torch.save({"foo": torch.zeros(1)}, odd / "Wan2.1_VAE.pth")
    assert "is not a Wan VAE" in refused(capsys, tmp_path, "--model", f"wan:{odd}")
    shutil.copy(files["original"] / "Wan2.1_VAE.pth", odd / "Wan2.1_VAE.pth")
    t5 = torch.load(odd / "models_t5_umt5-xxl-enc-bf16.pth", weights_only=True)
    del t5["blocks.1.ffn.fc2.weight"]
    torch.save(t5, odd / "models_t5_umt5-xxl-enc-bf16.pth")
    err = refused(capsys, tmp_path, "--model", f"wan:{odd}")
    assert "missing 1 key(s)" in err and "layer.1.DenseReluDense.wo.weight" in err
    if not torch.cuda.is_available():
        err = refused(capsys, tmp_path, "--model", ckpt, "--base", base, "--device", "cuda")
        assert "there is no CUDA GPU here" in err


def test_not_enough_memory_is_refused_before_loading(files, tmp_path, capsys, monkeypatch):
    """With less memory free than the preset's estimate, render exits 2 saying how much
    is needed, before any module is built."""
    import model.wan.load as load
    import model.wan.memory as memory

    monkeypatch.setattr(memory, "available_bytes", lambda device: 1024)
    built = []
    monkeypatch.setattr(load, "_build_dit", lambda *a: built.append(a))
    err = refused(capsys, tmp_path, "--model", f"wan:{files['diffusers']}", "--size", SIZE)
    assert "not enough memory on cpu" in err and "GiB" in err and not built


async def test_serve_longlive_streams_to_a_viewer_and_switches_free_text(files, session):
    """`endless serve --model longlive:CKPT --lora LORA --base DIR --size 64x32`: hello
    says free-text prompts and 9/12 frames per chunk; an aiortc viewer receives frames;
    a free-text prompt switch is applied at a chunk boundary and its frames arrive."""
    import argparse

    from server import serve_cmd
    from server.app import LiveServer

    p = argparse.ArgumentParser()
    serve_cmd.add_arguments(p)
    args = p.parse_args(
        ["--model", f"longlive:{files['ckpt']}", "--lora", str(files["lora"])]
        + ["--base", str(files["original"]), "--size", SIZE, "--dtype", "fp32", "--port", "0"]
    )
    config = serve_cmd.config_from(args)
    async with LiveServer(config) as server:
        s = await session(server.ws_url)
        hello = s.hello
        assert hello["prompts"] == "free-text" and "vocabulary" not in hello
        assert (hello["first_chunk_frames"], hello["frames_per_chunk"]) == (9, 12)
        assert (hello["width"], hello["height"], hello["model"]) == (64, 32, "longlive")
        # the front end holds the model's shapes, not its weights: those are the engine's
        assert all(p.is_meta for p in server.model.parameters())
        created = await s.create("a dog running on the beach at night")
        viewer = await s.watch(created["stream"])
        await viewer.wait_frames(12, timeout(60))
        applied = await s.prompt(created["stream"], "zebras juggling quantum pancakes")
        frame = applied["frame"]
        assert applied["type"] == "prompt_applied" and (frame - 9) % 12 == 0
        await viewer.wait_index(frame + 2, timeout(60))
        await viewer.close()


def test_hello_says_which_prompts_the_model_takes(tiny_model):
    """The tiny model announces TinyWorld prompts with its vocabulary; a model whose text
    encoder takes free text announces that, without a vocabulary."""
    tiny = prompt_kind(tiny_model)
    assert tiny["prompts"] == "tinyworld" and "red" in tiny["vocabulary"]["colour"]
    free = UMT5TextEncoder(tiny_umt5(), tiny_tokenizer())
    assert prompt_kind(type("M", (), {"text": free})()) == {"prompts": "free-text"}


def test_serve_refuses_a_model_that_does_not_load_and_exits_2(files, capsys):
    """`endless serve` with a checkpoint form but no --base, or a base lacking its parts,
    exits 2 with the loader's error and serves nothing."""
    ckpt = f"longlive:{files['ckpt']}"
    assert main(["serve", "--model", ckpt, "--port", "0"]) == 2
    assert "needs --base DIR" in capsys.readouterr().err
    assert main(["serve", "--model", ckpt, "--base", str(files["root"]), "--port", "0"]) == 2
    assert "is not a Wan2.1 base" in capsys.readouterr().err
    assert main(["serve", "--model", "tiny", "--size", "100x100", "--port", "0"]) == 2
    assert "unsupported size 100x100" in capsys.readouterr().err


@pytest.mark.parametrize("layout", ["diffusers", "original"])
def test_a_wan_model_without_weights_is_the_same_model_in_shapes(files, layout):
    """load_model(weights=False): built on the meta device from the files' headers (no
    weight read), with the configuration, frames per chunk and prompt kind of the real
    load, its LoRA and shapes checked alike."""
    from memory.stream import chunk_frames_of
    from server.app import load_model, prompt_kind

    spec = (f"longlive:{files['ckpt']}", "fp32", str(files[layout]), str(files["lora"]), SIZE)
    real, face = load_model(*spec), load_model(*spec, "auto", False)
    assert all(p.is_meta for p in face.parameters())
    assert not any(p.is_meta for p in real.parameters())
    assert face.config == real.config and face.dtype == real.dtype
    assert chunk_frames_of(face) == chunk_frames_of(real)
    assert prompt_kind(face) == prompt_kind(real)
    names = {n: p.shape for n, p in real.named_parameters()}
    assert {n: p.shape for n, p in face.named_parameters()} == names
