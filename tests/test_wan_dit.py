"""Our WanModel computes what diffusers' WanTransformer3DModel computes (fp32, tiny random
config): bidirectional, per-frame timesteps, block-causal over [context | chunk], and the
cached path over a rolled sink + window. Each test has a negative control: with the head
read in the old order the same comparison fails."""

from __future__ import annotations

import pytest
import torch

from memory.cache import CacheLayout, ContextCache
from memory.policy import SinkRollingWindow
from model.dit import AttnContext, block_causal_mask
from tests.wan_dit_tiny import masked, old_head_order, ours_from, per_token, tiny_diffusers

torch.set_num_threads(1)

TOL = 1e-4
WRONG = 0.05  # the old head order is off by far more than this
H = W = 8  # latent cells: 4 x 4 = 16 tokens per frame
TPF = (H // 2) * (W // 2)


@pytest.fixture(scope="module")
def pair():
    diff = tiny_diffusers(0)
    return diff, ours_from(diff)


def inputs(frames: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, frames, H, W, generator=g)
    text = torch.randn(1, 7, 24, generator=g)
    return x, text


def run_diffusers(diff, x, timestep, text):
    with torch.no_grad():
        return diff(x, timestep, text, return_dict=False)[0]


def gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def test_bidirectional_clip_matches_diffusers(pair):
    """A whole clip at one timestep: max abs diff <= 1e-4 (and > 0.05 with the old order)."""
    diff, ours = pair
    x, text = inputs(5)
    ref = run_diffusers(diff, x, torch.tensor([700.0]), text)
    sigma = torch.full((1, 5), 0.7)
    with torch.no_grad():
        assert gap(ours(x, sigma, text, torch.arange(5)), ref) <= TOL
        with old_head_order(ours):
            assert gap(ours(x, sigma, text, torch.arange(5)), ref) > WRONG


def test_per_frame_timesteps_match_diffusers_2d_timestep(pair):
    """A noise level per frame equals diffusers' per-token 2-D timestep (Wan2.2 form)."""
    diff, ours = pair
    x, text = inputs(4)
    sigma = torch.tensor([[0.95, 0.6, 0.3, 0.0]])
    ref = run_diffusers(diff, x, per_token(sigma, TPF), text)
    with torch.no_grad():
        assert gap(ours(x, sigma, text, torch.arange(4)), ref) <= TOL
        with old_head_order(ours):
            assert gap(ours(x, sigma, text, torch.arange(4)), ref) > WRONG
    # the levels matter: one level for all frames is another field
    assert gap(run_diffusers(diff, x, torch.tensor([600.0]), text), ref) > WRONG


def test_block_causal_context_and_chunk_match_diffusers_with_a_mask(pair):
    """[context (2 chunks at the context noise) | chunk]: our masked full pass and our
    cached path (context keys/values, then the chunk alone) both equal diffusers run with
    a block-causal mask, on the chunk's frames."""
    diff, ours = pair
    x, text = inputs(6, seed=2)
    groups = [0, 0, 1, 1, 2, 2]
    sigma = torch.tensor([[0.05, 0.05, 0.05, 0.05, 0.8, 0.8]])
    mask = block_causal_mask(groups, groups, TPF)
    with masked(diff, mask):
        ref = run_diffusers(diff, x, per_token(sigma, TPF), text)
    assert gap(run_diffusers(diff, x, per_token(sigma, TPF), text), ref) > WRONG  # mask matters
    with torch.no_grad():
        full = ours(x, sigma, text, torch.arange(6), mask=mask)
        assert gap(full, ref) <= TOL
        _, kvs = ours(
            x[:, :, :4],
            sigma[:, :4],
            text,
            torch.arange(4),
            mask=mask[: 4 * TPF, : 4 * TPF],
            return_kv=True,
        )
        ctx = AttnContext(kvs, ours.frame_angles(torch.arange(4), H, W))
        chunk = ours(x[:, :, 4:], sigma[:, 4:], text, torch.arange(4, 6), ctx=ctx)
        assert gap(chunk, ref[:, :, 4:]) <= TOL
        with old_head_order(ours):
            wrong = ours(x[:, :, 4:], sigma[:, 4:], text, torch.arange(4, 6), ctx=ctx)
        assert gap(wrong, ref[:, :, 4:]) > WRONG


def test_cached_chunk_over_a_rolled_sink_and_window_matches_one_full_pass(pair):
    """After 8 chunks of 2 frames through a sink (2) + window (4) cache whose ring has
    wrapped, the context (frames 0-1 and 12-15, positions re-indexed 0..5) re-cached in one
    block-causal pass, the next chunk from the cache equals diffusers' one full pass over
    [sink | window | chunk] with the block-causal mask of their chunks."""
    diff, ours = pair
    chunk, sigma_c, sigma = 2, 0.02, 0.9
    policy = SinkRollingWindow(sink=2, window=4, margin=2)
    cache = ContextCache(CacheLayout.for_model(ours, 4, H, W, torch.float32), policy)
    g = torch.Generator().manual_seed(3)
    text = torch.randn(1, 7, 24, generator=g)
    with torch.no_grad():
        for _ in range(8):  # chunks 0..7: the stream's own commits, each from its context
            latents = torch.randn(1, 4, chunk, H, W, generator=g)
            frames = list(range(cache.head, cache.head + chunk))
            n = len(cache.context_frames())
            _, kvs = ours(
                latents,
                torch.full((1, chunk), sigma_c),
                text,
                torch.arange(n, n + chunk),
                ctx=cache.attn_context(ours),
                return_kv=True,
            )
            cache.write(frames, latents, kvs)
            cache.advance(chunk)
        frames = cache.context_frames()
        assert frames == [0, 1, 12, 13, 14, 15]
        assert [policy.slot_for(f) for f in frames] == [0, 1, 6, 7, 2, 3]  # the ring wrapped
        groups = policy.chunk_groups(frames, chunk)
        latents = cache.context_latents()
        n = len(frames)
        _, kvs = ours(  # the re-cache: one block-causal pass over the context
            latents,
            torch.full((1, n), sigma_c),
            text,
            torch.arange(n),
            mask=block_causal_mask(groups, groups, TPF),
            return_kv=True,
        )
        cache.write(frames, latents, kvs)
        x = torch.randn(1, 4, chunk, H, W, generator=g)
        positions = torch.arange(n, n + chunk)
        ctx = cache.attn_context(ours)
        got = ours(x, torch.full((1, chunk), sigma), text, positions, ctx=ctx)
        with old_head_order(ours):
            wrong = ours(x, torch.full((1, chunk), sigma), text, positions, ctx=ctx)
    all_groups = groups + [groups[-1] + 1] * chunk
    levels = torch.tensor([[sigma_c] * n + [sigma] * chunk])
    with masked(diff, block_causal_mask(all_groups, all_groups, TPF)):
        ref = run_diffusers(diff, torch.cat([latents, x], dim=2), per_token(levels, TPF), text)
    assert gap(got, ref[:, :, n:]) <= TOL
    assert gap(wrong, ref[:, :, n:]) > WRONG
