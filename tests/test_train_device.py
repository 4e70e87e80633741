"""ops/train_dit.py --device: any torch CPU or CUDA device, refused clearly when absent."""

from __future__ import annotations

import sys

import pytest
import torch

from ops.train_dit import parse_args


def _parse(monkeypatch, *argv: str):
    monkeypatch.setattr(sys, "argv", ["train_dit.py", *argv])
    return parse_args()


def test_cpu_device_is_accepted(monkeypatch):
    """--device cpu parses and is kept as given."""
    assert _parse(monkeypatch, "--device", "cpu").device == "cpu"


def test_missing_cuda_device_is_refused_before_loading(monkeypatch, capsys):
    """A CUDA index this machine lacks exits 2 with a message naming the device count."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(SystemExit) as exc:
        _parse(monkeypatch, "--device", f"cuda:{count}")
    assert exc.value.code == 2
    assert f"this machine has {count} CUDA device(s)" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["tpu", "meta"])
def test_unsupported_or_unknown_device_is_refused(monkeypatch, capsys, name):
    """A device string torch does not know, or one the trainer does not run on, exits 2."""
    with pytest.raises(SystemExit) as exc:
        _parse(monkeypatch, "--device", name)
    assert exc.value.code == 2
    assert f"--device {name}" in capsys.readouterr().err
