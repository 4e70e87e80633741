"""Checkpoints: config and format version travel with the weights; loading is strict."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from model.bundle import VideoModel
from model.checkpoint import read_checkpoint, save_checkpoint
from model.config import FORMAT_VERSION, PRESETS, ModelConfig
from model.errors import CheckpointError, ConfigError

torch.set_num_threads(1)


def test_round_trip_keeps_config_and_weights(tmp_path):
    """A saved model loads back with the same config and bit-identical weights."""
    m = VideoModel.from_seed(3, "micro")
    path = tmp_path / "m.safetensors"
    m.save(path, extra={"step": "7"})
    back = VideoModel.load(path, dtype=torch.float32)
    assert back.config == m.config == PRESETS["micro"]
    a, b = m.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    _, _, meta = read_checkpoint(path)
    assert meta["step"] == "7" and meta["format_version"] == str(FORMAT_VERSION)


def test_config_json_round_trip_for_every_preset():
    """Every preset survives its JSON form unchanged."""
    for cfg in PRESETS.values():
        assert ModelConfig.from_json(cfg.to_json()) == cfg


def test_missing_and_unexpected_keys_are_named(tmp_path):
    """A file missing a tensor, or with an extra one, is rejected naming the keys."""
    m = VideoModel.from_seed(0, "micro")
    state = dict(m.state_dict())
    state.pop("dit.head.head.weight")
    state["dit.extra"] = torch.zeros(1)
    path = tmp_path / "bad.safetensors"
    save_checkpoint(path, state, m.config)
    with pytest.raises(CheckpointError, match=r"missing 1 key.*dit\.head\.head\.weight") as e:
        VideoModel.load(path)
    assert "dit.extra" in str(e.value)


def test_shape_mismatch_and_wrong_preset_are_rejected(tmp_path):
    """A file whose config does not match the tensors, or the expected preset, fails."""
    tiny_cfg = PRESETS["tiny"]
    m = VideoModel.from_seed(0, "micro")
    path = tmp_path / "lie.safetensors"
    save_checkpoint(path, m.state_dict(), tiny_cfg)  # micro weights claiming to be tiny
    with pytest.raises(CheckpointError, match="shape mismatch"):
        VideoModel.load(path)
    good = tmp_path / "micro.safetensors"
    m.save(good)
    with pytest.raises(CheckpointError, match="differs from the expected"):
        VideoModel.load(good, expect=tiny_cfg)


def test_foreign_and_versionless_files_are_rejected(tmp_path):
    """Files without our metadata, of another format version, or not safetensors fail."""
    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(2)}, str(plain))
    with pytest.raises(CheckpointError, match="format version"):
        VideoModel.load(plain)
    future = tmp_path / "future.safetensors"
    save_file(
        {"x": torch.zeros(2)},
        str(future),
        metadata={"format_version": "99", "config": PRESETS["micro"].to_json()},
    )
    with pytest.raises(CheckpointError, match="version '99'"):
        VideoModel.load(future)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable"):
        VideoModel.load(junk)
    with pytest.raises(CheckpointError, match="not found"):
        VideoModel.load(tmp_path / "absent.safetensors")


def test_unknown_config_fields_are_rejected():
    """A config with fields this version does not know fails with ConfigError."""
    raw = json.loads(PRESETS["micro"].to_json())
    raw["dit"]["flash"] = True
    with pytest.raises(ConfigError, match="flash"):
        ModelConfig.from_json(json.dumps(raw))


def test_ship_model_writes_default_sampling_and_keeps_weights(tmp_path, capsys):
    """ops/ship_model.py: the copy loads with the sampling it was given, the same weights
    and the source's other metadata; a bad setting writes nothing and says why."""
    from ops.ship_model import main as ship

    m = VideoModel.from_seed(3, "micro")
    src, out = tmp_path / "m.safetensors", tmp_path / "shipped.safetensors"
    m.save(src, extra={"step": "7"})
    assert ship([str(src), "-o", str(out), "--guidance", "3", "--guidance-chunks", "4"]) == 0
    back = VideoModel.load(out, dtype=torch.float32)
    assert (back.config.sampler.guidance, back.config.sampler.guidance_chunks) == (3.0, 4)
    assert back.config.sampler.steps == m.config.sampler.steps  # not given: kept
    a, b = m.state_dict(), back.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert read_checkpoint(out)[2]["step"] == "7"
    bad = tmp_path / "bad.safetensors"
    assert ship([str(src), "-o", str(bad), "--guidance-interval", "0.9", "0.1"]) == 2
    assert not bad.exists() and "guidance interval" in capsys.readouterr().err
