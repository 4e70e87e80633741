"""Wan family presets: their published settings, the memory they need (equal to what the
stream allocates), and LongLive's re-cache that keeps the sink."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from memory.cache import CacheLayout, ContextCache
from memory.policy import SinkRollingWindow
from memory.stream import Stream
from model.bundle import VideoModel
from model.config import PRESETS
from model.dit import WanModel
from model.errors import ConfigError
from model.wan.presets import FAMILIES, check_size, family

torch.set_num_threads(1)


def test_families_carry_their_published_settings():
    """Chunks of 3 latent frames at 16 fps and 832x480; Self-Forcing / LongLive sample at
    [1000, 750, 500, 250] warped with shift 5, CausVid at [1000, 757, 522] with shift 8;
    LongLive keeps a 3-frame sink through re-caches and a rank-256 LoRA."""
    for f in FAMILIES.values():
        s = f.stream
        assert (s.chunk_latent_frames, s.fps, s.width, s.height) == (3, 16, 832, 480)
    sf, cv, ll = FAMILIES["self-forcing"], FAMILIES["causvid"], FAMILIES["longlive"]
    assert (sf.sampler.mode, sf.sampler.timesteps, sf.sampler.warp_timesteps) == (
        "x0_renoise",
        (1000, 750, 500, 250),
        True,
    )
    assert (sf.sampler.shift, cv.sampler.shift, cv.sampler.timesteps) == (
        5.0,
        8.0,
        (1000, 757, 522),
    )
    assert not cv.sampler.warp_timesteps and ll.sampler == sf.sampler
    assert (ll.stream.sink_latent_frames, ll.stream.window_latent_frames) == (3, 6)
    assert not ll.stream.recache_sink and ll.lora == (256, 256.0)
    assert sf.stream.sink_latent_frames + sf.stream.window_latent_frames + 3 == 21
    with pytest.raises(ConfigError, match="known: wan, self-forcing, causvid, longlive"):
        family("mochi")


def test_memory_counts_what_the_stream_allocates():
    """weight_bytes is the denoiser's parameter bytes and cache_bytes the ContextCache's
    nbytes, exactly (a micro denoiser at 64x96, bf16 and fp32)."""
    dit = PRESETS["micro"].dit
    model = WanModel(dit)
    for dtype in (torch.float32, torch.bfloat16):
        f = FAMILIES["longlive"]
        params = sum(p.numel() for p in model.parameters()) * torch.finfo(dtype).bits // 8
        assert f.weight_bytes(dit, dtype) == params
        s = f.stream
        policy = SinkRollingWindow(
            s.sink_latent_frames, s.window_latent_frames, s.rewind_chunks * s.chunk_latent_frames
        )
        cache = ContextCache(CacheLayout.for_model(model, dit.in_dim, 8, 12, dtype), policy)
        assert f.cache_bytes(dit, dtype, 64, 96) == cache.nbytes
        total = f.memory_bytes(dit, dtype, 64, 96)
        assert total > f.weight_bytes(dit, dtype) + cache.nbytes


def test_full_size_memory_and_refusals():
    """Wan-1.3B in bf16 at 832x480: 1.3-1.5 B parameters (2.5-2.9 GiB), a LongLive cache
    under Self-Forcing's (its window is shorter), 9-12 GiB in all for LongLive; sizes that
    are not multiples of 16 are refused."""
    sf, ll = FAMILIES["self-forcing"], FAMILIES["longlive"]
    dit = sf.dit
    assert 2.5 * 2**30 < sf.weight_bytes(dit, torch.bfloat16) < 2.9 * 2**30
    assert ll.cache_bytes(dit, torch.bfloat16, 480, 832) < sf.cache_bytes(
        dit, torch.bfloat16, 480, 832
    )
    need = ll.memory_bytes(dit, torch.bfloat16, 480, 832)
    assert 9 * 2**30 < need < 12 * 2**30
    check_size(dit, 480, 832)
    with pytest.raises(ConfigError, match="multiple of 16x16"):
        check_size(dit, 480, 830)


def test_longlive_recache_keeps_the_sink():
    """On a prompt switch the re-cache rewrites the window's keys/values; with
    recache_sink False (LongLive) the sink's stay as made, with True they change too."""
    base = VideoModel.from_seed(0, "micro")
    with torch.no_grad():
        head = base.dit.head.head.weight
        head.copy_(torch.randn(head.shape, generator=torch.Generator().manual_seed(0)))
    changed = {}
    for keep_sink in (False, True):
        cfg = replace(base.config, stream=replace(base.config.stream, recache_sink=keep_sink))
        model = VideoModel(cfg)
        model.load_state_dict(base.state_dict())
        s = Stream(model, "a big red circle bouncing over the ocean", seed=1)
        for _ in range(4):
            s.next_chunk()
        before = s.cache.k.clone()
        s.set_prompt("a small cyan square standing still in the night")
        s.plan()  # the switch's re-cache
        sink = s.policy.sink
        changed[keep_sink] = (
            not torch.equal(s.cache.k[:, :sink], before[:, :sink]),
            not torch.equal(s.cache.k[:, sink:], before[:, sink:]),
        )
    assert changed[False] == (False, True)
    assert changed[True] == (True, True)
