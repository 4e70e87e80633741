"""The Wan benchmarks run end to end at a tiny size on the CPU and report their figures
(the full-size GPU run is ops/bench_gpu.sh; figures are never asserted here)."""

from __future__ import annotations

import torch

from ops import bench_gpu, bench_wan

torch.set_num_threads(1)


def test_bench_wan_compares_cached_steps_with_a_diffusers_rerun():
    """ops/bench_wan.py times both paths on the same tiny weights and reports the ratio."""
    out = bench_wan.main(
        ["--dim", "32", "--layers", "1", "--latent", "4", "4", "--chunks", "1", "--warmup", "3"]
    )
    assert out["ours_ms_per_chunk"] > 0 and out["diffusers_ms_per_chunk"] > 0
    assert out["speedup"] == round(out["diffusers_ms_per_chunk"] / out["ours_ms_per_chunk"], 2)


def test_bench_gpu_reduced_mode_streams_switches_and_reports(tmp_path):
    """ops/bench_gpu.py at 32x32 with one layer on the CPU: several chunks, one prompt
    switch, FPS, time to first frame and memory at each mark, written as JSON."""
    out = bench_gpu.main(
        [
            "--device", "cpu", "--size", "32x32", "--layers", "1", "--dim", "32",
            "--heads", "1", "--text-layers", "1", "--text-dim", "16", "--vocab", "64",
            "--vae-dim", "4", "--minutes", "0.03", "--mark", "1", "--switch-every", "2",
            "--dtype", "fp32", "--out", str(tmp_path / "bench.json"),
        ]
    )  # fmt: skip
    assert out["chunks"] >= 3 and out["video_s"] >= 1.8
    assert out["fps_end_to_end"] > 0 and out["fps_denoise"] > 0 and out["ttff_s"] > 0
    assert out["switch_ms"] is not None and out["cache_bytes"] > 0
    assert "video_s_1" in out["memory"] and "rss_gib" in out["memory"]["last"]
    assert (tmp_path / "bench.json").read_text().strip().startswith("{")
