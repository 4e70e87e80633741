"""Compute precision: `--dtype auto` picks bf16 only where bf16 is the fast path."""

from __future__ import annotations

import pytest
import torch

from model.errors import ConfigError
from model.precision import cpu_has_amx, resolve_dtype
from server.app import load_model
from server.config import ServerConfig
from server.offline import resolve_model

SAPPHIRE_RAPIDS = "flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"
ICE_LAKE = "flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"


def test_amx_is_read_from_the_cpu_flags(tmp_path):
    with_amx, without = tmp_path / "amx", tmp_path / "no-amx"
    with_amx.write_text("processor\t: 0\n" + SAPPHIRE_RAPIDS + "bugs\t\t: amx_bf16\n")
    without.write_text("processor\t: 0\n" + ICE_LAKE + "bugs\t\t: amx_bf16\n")  # not a flag
    assert cpu_has_amx(with_amx)
    assert not cpu_has_amx(without)  # avx512_bf16 alone ran bf16 slower than fp32
    assert not cpu_has_amx(tmp_path / "missing")  # no /proc/cpuinfo (macOS, Windows)


def test_auto_is_bf16_on_a_gpu_or_an_amx_cpu_and_fp32_elsewhere():
    assert resolve_dtype("bf16") == torch.bfloat16
    assert resolve_dtype("fp32") == torch.float32
    assert resolve_dtype("auto", "cuda") == torch.bfloat16
    assert resolve_dtype("auto", "cuda:0") == torch.bfloat16
    expected = torch.bfloat16 if cpu_has_amx() else torch.float32
    assert resolve_dtype("auto") == resolve_dtype("auto", "cpu") == expected


def test_the_renderer_and_the_server_load_in_the_dtype_asked_for():
    for name, dtype in [("bf16", torch.bfloat16), ("fp32", torch.float32)]:
        for model in (resolve_model("random:micro", dtype=name), load_model("random:micro", name)):
            assert model.dtype == dtype
            assert next(model.dit.parameters()).dtype == dtype
    assert resolve_model("random:micro").dtype == resolve_dtype("auto")
    assert load_model("random:micro").dtype == resolve_dtype("auto")


def test_the_server_refuses_an_unknown_dtype():
    assert ServerConfig(dtype="fp32").dtype == "fp32"
    with pytest.raises(ConfigError, match="unknown dtype 'fp16'"):
        ServerConfig(dtype="fp16")
