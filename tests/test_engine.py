"""The generation engine: cache, causality, prompt switches, rewinds, determinism."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from memory.policy import SinkRollingWindow
from memory.stream import Stream, chunk_noise, continue_from
from model.bundle import VideoModel
from model.config import PRESETS, SamplerConfig, StreamConfig
from model.dit import block_causal_mask
from model.errors import ConfigError, EndlessError, PromptError, UnknownWordsError
from model.sampler import Cond, sigmas

torch.set_num_threads(1)

PROMPT = "a big red circle bouncing over the ocean"
OTHER = "a small blue square standing still in the snow"


def pico_model(seed: int = 0) -> VideoModel:
    """The micro preset at 32x32: a few tokens per frame, milliseconds per chunk."""
    cfg = PRESETS["micro"]
    cfg = replace(cfg, name="pico", stream=replace(cfg.stream, height=32, width=32))
    torch.manual_seed(seed)
    return VideoModel(cfg)


@pytest.fixture(scope="module")
def model() -> VideoModel:
    return VideoModel.from_seed(0, "micro")


@pytest.fixture(scope="module")
def pico() -> VideoModel:
    return pico_model()


def test_cache_buffers_are_allocated_once(pico):
    """The cache keeps the same buffers (pointers and bytes) from chunk 10 to chunk 2,000."""
    s = Stream(pico, PROMPT, seed=0)
    for _ in range(10):
        s.next_chunk()
    ptrs, nbytes = s.cache.data_ptrs(), s.cache.nbytes
    for i in range(1990):
        if i % 500 == 250:
            s.set_prompt(OTHER if i % 1000 == 250 else PROMPT)
        s.next_chunk()
    assert s.chunk_index == 2000
    assert s.cache.data_ptrs() == ptrs
    assert s.cache.nbytes == nbytes
    assert s.stats.cache_bytes == nbytes
    assert len(s._timeline) <= Stream.HISTORY + 1
    assert len(s._decoder_states) <= s.policy.margin + 1


def reference_latents(model: VideoModel, prompt: str, seed: int, n_chunks: int):
    """Chunk latents computed by full recomputation over the whole sequence (no cache)."""
    dit, cfg = model.dit, model.config
    chunk = cfg.stream.chunk_latent_frames
    h = cfg.stream.height // cfg.vae.space_stride
    text = model.text.encode(prompt).tokens.unsqueeze(0)
    sampler_model = Stream(model, prompt, seed)  # only for its sampler settings
    done: list[torch.Tensor] = []
    for k in range(n_chunks):
        noise = chunk_noise(seed, k, (1, cfg.vae.z_dim, chunk, h, h), model.dtype)
        n_ctx = k * chunk
        ids = [f // chunk for f in range(n_ctx + chunk)]
        mask = block_causal_mask(ids, ids, dit.tokens_per_frame(h, h))

        def velocity(x, sigma, conds, n_ctx=n_ctx, mask=mask):
            full = torch.cat(done + [x], dim=2)
            s = torch.tensor([[0.0] * n_ctx + [sigma] * chunk])
            out = dit(full, s, text, torch.arange(n_ctx + chunk), mask=mask)
            return out[:, :, n_ctx:]

        with torch.no_grad():
            done.append(sampler_model.sampler.sample(noise, velocity, sampler_model.steps, 1.0))
    return done


def test_cached_generation_equals_full_recomputation(model):
    """With a window covering the whole context, cached chunks equal a full recompute."""
    n = 5
    chunk = model.config.stream.chunk_latent_frames
    policy = SinkRollingWindow(sink=chunk, window=n * chunk, margin=0)
    s = Stream(model, PROMPT, seed=3, policy=policy)
    cached = []
    for _ in range(n):
        plan = s.plan()
        lat = s.denoise(plan)
        s.commit(plan, lat)
        cached.append(lat)
    ref = reference_latents(model, PROMPT, 3, n)
    diffs = [(a - b).abs().max().item() for a, b in zip(cached, ref, strict=True)]
    assert max(diffs) < 1e-4, diffs


def test_denoiser_is_block_causal(model):
    """Changing a later chunk's input never changes an earlier chunk's output."""
    dit, cfg = model.dit, model.config
    chunk, z, h = cfg.stream.chunk_latent_frames, cfg.vae.z_dim, 8
    n = 3 * chunk
    torch.manual_seed(0)
    x = torch.randn(1, z, n, h, h)
    ids = [f // chunk for f in range(n)]
    mask = block_causal_mask(ids, ids, dit.tokens_per_frame(h, h))
    text = model.text.encode(PROMPT).tokens.unsqueeze(0)
    sigma = torch.rand(1, n)
    with torch.no_grad():
        a = dit(x, sigma, text, torch.arange(n), mask=mask)
        x2 = x.clone()
        x2[:, :, 2 * chunk :] += 5.0
        b = dit(x2, sigma, text, torch.arange(n), mask=mask)
    assert torch.equal(a[:, :, : 2 * chunk], b[:, :, : 2 * chunk])
    assert not torch.allclose(a[:, :, 2 * chunk :], b[:, :, 2 * chunk :])


def run(model, seed, n, switches=()):
    s = Stream(model, PROMPT, seed=seed)
    out = []
    for k in range(n):
        for at, text in switches:
            if at == k:
                s.set_prompt(text)
        out.append(s.next_chunk())
    return s, out


def test_prompt_switch_takes_effect_exactly_at_its_chunk(model):
    """Chunks before a switch are unchanged; the switch chunk and later ones change."""
    _, base = run(model, 7, 6)
    s, switched = run(model, 7, 6, switches=[(3, OTHER)])
    for k in range(3):
        assert np.array_equal(base[k], switched[k])
    for k in range(3, 6):
        assert not np.array_equal(base[k], switched[k])
    assert s.prompt_for(2) == PROMPT and s.prompt_for(3) == OTHER


def test_same_seed_same_frames_and_seed_matters(model):
    """Generation is deterministic for a seed; another seed gives other frames."""
    _, a = run(model, 11, 4, switches=[(2, OTHER)])
    _, b = run(model, 11, 4, switches=[(2, OTHER)])
    _, c = run(model, 12, 4, switches=[(2, OTHER)])
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], c[0])


def test_set_prompt_at_a_future_chunk(model):
    """set_prompt(at_chunk=k) leaves chunks before k on the old prompt."""
    _, direct = run(model, 5, 5, switches=[(4, OTHER)])
    s = Stream(model, PROMPT, seed=5)
    s.set_prompt(OTHER, at_chunk=4)
    later = [s.next_chunk() for _ in range(5)]
    assert all(np.array_equal(x, y) for x, y in zip(direct, later, strict=True))


def test_rewind_regenerates_identically(model):
    """Rewinding and regenerating under the same prompt gives the same frames."""
    s, first = run(model, 9, 6)
    s.rewind(4)
    again = [s.next_chunk() for _ in range(2)]
    assert np.array_equal(again[0], first[4]) and np.array_equal(again[1], first[5])


def test_rewind_then_switch_equals_a_stream_switched_there(model):
    """Rewind + new prompt at chunk k equals a stream whose prompt changed at k (server's
    instant switch drops unplayed chunks this way)."""
    s, _ = run(model, 4, 6)
    s.rewind(3)
    s.set_prompt(OTHER, at_chunk=3)
    regenerated = [s.next_chunk() for _ in range(3)]
    _, direct = run(model, 4, 6, switches=[(3, OTHER)])
    assert all(np.array_equal(x, y) for x, y in zip(regenerated, direct[3:], strict=True))


def test_rewind_is_bounded(model):
    """Rewinding further back than the cache keeps raises a clear error."""
    s, _ = run(model, 0, 8)
    assert s.min_rewind_chunk == 8 - model.config.stream.rewind_chunks
    with pytest.raises(EndlessError, match="rewind"):
        s.rewind(s.min_rewind_chunk - 1)
    with pytest.raises(EndlessError, match="already generated"):
        s.set_prompt(OTHER, at_chunk=2)


def test_bad_prompts_are_rejected_with_their_words(model):
    """Empty, overlong, contradictory prompts and unknown words raise clear errors."""
    s = Stream(model, PROMPT, seed=0)
    with pytest.raises(PromptError, match="empty"):
        s.set_prompt("   ")
    with pytest.raises(PromptError, match="longer"):
        s.set_prompt("red " * 300)
    with pytest.raises(PromptError, match="two colours"):
        s.set_prompt("a red blue circle")
    with pytest.raises(UnknownWordsError) as err:
        s.set_prompt("a purple circle dancing")
    assert err.value.words == ("purple", "dancing")
    assert s.prompt_for(0) == PROMPT  # nothing changed


def test_chunk_by_chunk_decoding_has_no_seams(model):
    """Decoding latents chunk by chunk with carry-over equals decoding them whole."""
    vae = model.vae
    torch.manual_seed(1)
    z = torch.randn(1, model.config.vae.z_dim, 6, 8, 8)
    with torch.no_grad():
        whole, _ = vae.decode(z)
        a, state = vae.decode(z[:, :, :2])
        b, state = vae.decode(z[:, :, 2:4], state)
        c, _ = vae.decode(z[:, :, 4:], state)
    assert (torch.cat([a, b, c], dim=2) - whole).abs().max().item() < 1e-4
    with torch.no_grad():
        enc_whole, _ = vae.encode(whole)
        e1, st = vae.encode(whole[:, :, :8])
        e2, _ = vae.encode(whole[:, :, 8:], st)
    assert (torch.cat([e1, e2], dim=2) - enc_whole).abs().max().item() < 1e-4


def test_continue_from_caches_the_given_chunks_then_generates(pico):
    """Teacher forcing at inference: the first chunks shown are the VAE's reconstruction
    of the given frames, and the model's chunks after them follow from them as context."""
    from model.tinyworld.render import render_clip
    from model.vae import frames_to_tensor, tensor_to_frames

    size, fps = pico.config.stream.height, pico.config.stream.fps
    per_chunk = pico.config.stream.chunk_latent_frames * pico.config.vae.time_stride
    truth = render_clip(PROMPT, 4 * per_chunk / fps, size=size, seed=1)
    frames = continue_from(pico, PROMPT, truth, 2, seed=0)
    assert frames.shape == truth.shape
    with torch.no_grad():
        z, _ = pico.vae.encode(frames_to_tensor(truth[: 2 * per_chunk]))
        recon = tensor_to_frames(pico.vae.decode(z)[0])
    assert np.abs(frames[: 2 * per_chunk].astype(int) - recon.astype(int)).max() <= 1
    alone = continue_from(pico, PROMPT, truth, 0, seed=0)
    assert not np.array_equal(frames[2 * per_chunk :], alone[2 * per_chunk :])
    longer = render_clip(PROMPT, (4 * per_chunk + 5) / fps, size=size, seed=1)
    assert np.array_equal(alone, continue_from(pico, PROMPT, longer, 0))  # whole chunks
    with pytest.raises(ValueError, match="0..4"):
        continue_from(pico, PROMPT, truth, 5)


def test_positions_stay_bounded():
    """Rotary positions never exceed sink + window + chunk, however long the stream."""
    m = pico_model()
    s = Stream(m, PROMPT, seed=0)
    sc: StreamConfig = m.config.stream
    for _ in range(50):
        plan = s.plan()
        assert plan.n_context + s.chunk_frames <= (
            sc.sink_latent_frames + sc.window_latent_frames + sc.chunk_latent_frames
        )
        s.commit(plan, s.denoise(plan))


def test_guidance_batches_both_passes_and_equals_two_separate_calls():
    """CFG runs the conditional and unconditional passes as one batch over one cached
    context; the result equals combining two separate model calls."""
    model = VideoModel.from_seed(0, "micro").set_dtype(torch.float32).with_sampler(guidance=3.0)
    s = Stream(model, PROMPT, seed=5)
    for _ in range(2):
        s.next_chunk()  # some cached context to attend to
    plan = s.plan()
    got = s.denoise(plan)
    dit, frames = model.dit, s.chunk_frames
    positions = torch.arange(plan.n_context, plan.n_context + frames)
    texts = {
        Cond.PROMPT: plan.prompt.tokens.unsqueeze(0),
        Cond.EMPTY: model.text.null().unsqueeze(0),
    }
    with torch.no_grad():

        def separate(x, sigma, conds):
            sig = torch.full((1, frames), sigma)
            outs = [
                dit(x[i : i + 1], sig, texts[c], positions, ctx=plan.context)
                for i, c in enumerate(conds)
            ]
            return torch.cat(outs)

        want = s.sampler.sample(plan.noise, separate, s.steps, 3.0)
        unguided = s.sampler.sample(plan.noise, separate, s.steps, 1.0)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert (got - unguided).abs().max() > 1e-3  # guidance changed the result


def test_guidance_interval_guides_only_the_steps_whose_noise_level_it_holds():
    """With an interval, steps outside it make one conditional pass (no CFG batch), so a
    chunk equals the unguided one when no step falls inside and differs when some do."""
    model = VideoModel.from_seed(0, "micro").set_dtype(torch.float32).with_sampler(guidance=3.0)
    s = Stream(model, PROMPT, seed=5)
    plan = s.plan()
    text = torch.stack([plan.prompt.tokens, model.text.null()])
    positions = torch.arange(plan.n_context, plan.n_context + s.chunk_frames)
    batches: list[int] = []

    def velocity(x, sigma, conds):
        batches.append(len(conds))
        sig = torch.full((x.shape[0], s.chunk_frames), sigma)
        ctx = text[[0 if c == Cond.PROMPT else 1 for c in conds]]
        return model.dit(x, sig, ctx, positions)

    levels = [1.0, 0.9, 0.75, 0.5]  # steps 4, shift 3
    with torch.no_grad():
        unguided = s.sampler.sample(plan.noise, velocity, 4, 1.0)
        batches.clear()
        outside = s.sampler.sample(plan.noise, velocity, 4, 3.0, interval=(0.0, 0.4))
        assert batches == [1, 1, 1, 1]
        batches.clear()
        high = s.sampler.sample(plan.noise, velocity, 4, 3.0, interval=(0.7, 0.95))
        assert batches == [2 if 0.7 <= lv <= 0.95 else 1 for lv in levels] == [1, 2, 2, 1]
        full = s.sampler.sample(plan.noise, velocity, 4, 3.0)
    torch.testing.assert_close(outside, unguided)
    assert (high - unguided).abs().max() > 1e-3
    assert (high - full).abs().max() > 1e-3
    # the model's own setting applies when the call names none
    model.with_sampler(guidance_interval=(0.0, 0.4))
    assert Stream(model, PROMPT).sampler.cfg.guidance_interval == (0.0, 0.4)


def widest_batches(s: Stream, chunks: int) -> list[int]:
    """Generate `chunks` chunks; the widest model-call batch of each (passes per step)."""
    widest: list[int] = []
    hook = s.model.dit.register_forward_pre_hook(
        lambda _, inputs: widest.__setitem__(-1, max(widest[-1], inputs[0].shape[0]))
    )
    try:
        for _ in range(chunks):
            widest.append(0)
            s.next_chunk()
    finally:
        hook.remove()
    return widest


def test_motion_guidance_adds_the_prompt_against_its_motionless_self():
    """Motion guidance W adds W * (v(prompt) - v(prompt with motion unsaid)) to CFG's
    velocity at the steps from its noise level up, as a third group of the same batch;
    the result equals separate model calls, and differs from CFG alone."""
    model = VideoModel.from_seed(0, "micro").set_dtype(torch.float32)
    model.with_sampler(guidance=3.0, motion_guidance=2.0, motion_guidance_from=0.75)
    s = Stream(model, PROMPT, seed=5)
    s.next_chunk()  # some cached context to attend to
    plan = s.plan()
    unsaid = model.text.encode(PROMPT.replace(" bouncing", "")).tokens  # motion not said
    texts = {
        Cond.PROMPT: plan.prompt.tokens,
        Cond.EMPTY: model.text.null(),
        Cond.NO_MOTION: unsaid,
    }
    positions = torch.arange(plan.n_context, plan.n_context + s.chunk_frames)
    calls: list[tuple[Cond, ...]] = []

    def separate(x, sigma, conds):
        calls.append(conds)
        sig = torch.full((1, s.chunk_frames), sigma)
        outs = [
            model.dit(x[i : i + 1], sig, texts[c][None], positions, ctx=plan.context)
            for i, c in enumerate(conds)
        ]
        return torch.cat(outs)

    got = s.denoise(plan)
    with torch.no_grad():
        x = plan.noise
        levels = sigmas(4, model.config.sampler.shift).tolist()  # 1, .9, .75, .5, 0
        for sig, nxt in zip(levels[:-1], levels[1:], strict=True):
            v = {c: separate(x, sig, (c,)) for c in Cond}
            step = v[Cond.EMPTY] + 3.0 * (v[Cond.PROMPT] - v[Cond.EMPTY])
            if sig >= 0.75:
                step = step + 2.0 * (v[Cond.PROMPT] - v[Cond.NO_MOTION])
            x = x + (nxt - sig) * step
        want = x
        calls.clear()
        cfg_only = s.sampler.sample(plan.noise, separate, 4, 3.0, None, 0.0)
        calls.clear()
        s.sampler.sample(plan.noise, separate, 4, 3.0, None, 2.0)
    every = (Cond.PROMPT, Cond.EMPTY, Cond.NO_MOTION)
    assert calls == [every, every, every, (Cond.PROMPT, Cond.EMPTY)]  # 1, .9, .75, .5
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert (got - cfg_only).abs().max() > 1e-3


def test_motion_guidance_skips_unguided_chunks_and_prompts_that_say_no_motion():
    """The third pass runs only on the chunks guidance_chunks guides, and never for a
    prompt with no motion word (leaving it unsaid would change nothing)."""
    model = VideoModel.from_seed(0, "micro").set_dtype(torch.float32)
    model.with_sampler(guidance=3.0, guidance_chunks=2, motion_guidance=1.0)
    s = Stream(model, PROMPT, seed=5)
    s.set_prompt("a small blue square in the snow", at_chunk=3)
    assert widest_batches(s, 6) == [3, 3, 1, 2, 2, 1]
    assert s.motion_guidance_at(0, s._prompt_at(0)) == 1.0
    assert s.motion_guidance_at(2, s._prompt_at(2)) == 0.0


def test_the_text_encoder_leaves_motion_unsaid_for_motion_guidance():
    text = VideoModel.from_seed(0, "micro").text
    with_motion = text.encode("a big red circle bouncing over the ocean")
    without = text.encode("a big red circle over the ocean")
    torch.testing.assert_close(with_motion.without_motion, without.tokens)
    assert not torch.equal(with_motion.tokens, without.tokens)
    assert without.without_motion is None


@pytest.mark.parametrize(
    "field, value",
    [
        ("motion_guidance", -1.0),
        ("motion_guidance", float("nan")),
        ("motion_guidance", 11.0),
        ("motion_guidance", True),
        ("motion_guidance_from", 1.5),
        ("motion_guidance_from", -0.1),
    ],
)
def test_sampler_config_rejects_bad_motion_guidance(field, value):
    with pytest.raises(ConfigError, match=field):
        SamplerConfig(**{field: value})


@pytest.mark.parametrize("interval", [(0.9, 0.2), (-0.1, 0.5), (0.5, 1.5)])
def test_sampler_config_rejects_an_empty_or_out_of_range_guidance_interval(interval):
    with pytest.raises(ConfigError, match="guidance interval"):
        SamplerConfig(guidance_interval=interval)


def test_guidance_chunks_guide_only_the_chunks_after_a_start_or_switch():
    """With guidance_chunks=2 the first two chunks after the start and after each prompt
    change make the CFG batch (two passes); the others make one conditional pass."""
    model = VideoModel.from_seed(0, "micro").set_dtype(torch.float32)
    model.with_sampler(guidance=3.0, guidance_chunks=2)
    s = Stream(model, PROMPT, seed=5)
    s.set_prompt("a small blue square moving left in the snow", at_chunk=3)
    assert widest_batches(s, 6) == [2, 2, 1, 2, 2, 1]
    assert [s.guidance_at(k) for k in range(6)] == [3.0, 3.0, 1.0, 3.0, 3.0, 1.0]
    s.rewind(4)  # chunk 4 is still within two chunks of the switch at 3
    assert widest_batches(s, 1) == [2]
    with pytest.raises(ConfigError, match="guidance_chunks"):
        SamplerConfig(guidance_chunks=-1)


def warm_model(chunks: int) -> VideoModel:
    """A fresh micro model (with_sampler changes it in place) that warms up `chunks`."""
    return (
        VideoModel.from_seed(0, "micro").set_dtype(torch.float32).with_sampler(warmup_chunks=chunks)
    )


def count_dit_calls(model: VideoModel) -> tuple[list[int], object]:
    calls = [0]
    hook = model.dit.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls, hook


def test_warmup_chunks_are_generated_and_cached_but_never_shown():
    """With warmup_chunks=2 the first next_chunk() makes three chunks (two hidden, each
    attended to by what follows) and returns only the third: one chunk's frames, chunk
    index 1, the cache three chunks deep; later chunks cost one chunk each."""
    model = warm_model(2)
    cold = Stream(warm_model(0), PROMPT, seed=3)
    s = Stream(model, PROMPT, seed=3)
    per_chunk = s.steps + 1  # denoising passes plus the pass that caches its keys/values
    calls, hook = count_dit_calls(model)
    try:
        first = s.next_chunk()
        assert calls[0] == 3 * per_chunk
        assert first.shape[0] == s.frames_per_chunk and s.chunk_index == 1
        assert s.cache.head == 3 * s.chunk_frames
        assert s.stats.ms["warmup"] > 0
        s.next_chunk()
        assert calls[0] == 4 * per_chunk
    finally:
        hook.remove()
    assert not np.array_equal(first, cold.next_chunk())  # chunk 0 saw the warm-up


def test_warmup_keeps_rewinds_and_their_horizon_in_shown_chunks():
    """Chunk numbers count shown chunks only: a warm stream can rewind exactly as far as
    a cold one, regenerates identically, and a rewind to chunk 0 keeps the warm-up."""
    warm, cold = Stream(warm_model(2), PROMPT, seed=9), Stream(warm_model(0), PROMPT, seed=9)
    shown = []
    for _ in range(7):
        shown.append(warm.next_chunk())
        cold.next_chunk()
        assert warm.min_rewind_chunk == cold.min_rewind_chunk
    warm.rewind(warm.min_rewind_chunk)
    k = warm.chunk_index
    assert np.array_equal(warm.next_chunk(), shown[k])
    early = Stream(warm_model(2), PROMPT, seed=9)
    early.warm_up_step()
    early.rewind(0)  # mid warm-up: nothing to forget, the warm-up goes on
    assert early.warming and early.cache.head == early.chunk_frames
    again = [early.next_chunk() for _ in range(2)]
    early.rewind(0)
    assert early.cache.head == 2 * early.chunk_frames  # the warm-up stays
    assert np.array_equal(early.next_chunk(), again[0])


def test_a_prompt_set_at_chunk_0_after_the_warmup_recaches_it():
    """The warm-up is made under chunk 0's prompt; a prompt changed at chunk 0 afterwards
    (rewind + set_prompt, the server's instant switch) re-caches it under the new one, so
    chunk 0 becomes the new prompt's first chunk, as after any switch."""
    s = Stream(warm_model(1), PROMPT, seed=4)
    before = s.next_chunk()
    s.rewind(0)
    s.set_prompt(OTHER, at_chunk=0)
    after = s.next_chunk()
    assert s.stats.ms["recache"] > 0 and s._recached_at == [0]
    assert not np.array_equal(before, after)
    s.rewind(0)
    s.set_prompt(PROMPT, at_chunk=0)
    back = s.next_chunk().astype(int)  # re-cached back under the warm-up's own prompt
    assert np.abs(back - before).max() <= 1


def noisy_context_model(sigma: float) -> VideoModel:
    return (
        VideoModel.from_seed(0, "micro").set_dtype(torch.float32).with_sampler(context_noise=sigma)
    )


def test_context_noise_is_used_and_depends_on_the_seed_and_frame_only():
    """A stream that caches its chunks at a context noise level differs from a clean one
    from chunk 1 on (chunk 0 has no context). Its noise does not come from torch's global
    generator: the same seed gives the same frames whatever that generator's state, and a
    rewind regenerates identically."""
    clean, noisy, again = (noisy_context_model(sigma) for sigma in (0.0, 0.1, 0.1))
    torch.manual_seed(1)
    s = Stream(noisy, PROMPT, seed=6)
    shown = [s.next_chunk() for _ in range(6)]
    c = Stream(clean, PROMPT, seed=6)
    first_clean = [c.next_chunk() for _ in range(2)]
    assert np.array_equal(shown[0], first_clean[0])
    assert not np.array_equal(shown[1], first_clean[1])
    torch.manual_seed(2)
    other = Stream(again, PROMPT, seed=6)
    assert all(np.array_equal(other.next_chunk(), x) for x in shown)
    s.rewind(s.min_rewind_chunk)
    k = s.chunk_index
    assert np.array_equal(s.next_chunk(), shown[k])


def test_a_recache_noises_each_frame_as_its_chunk_was_cached():
    """Re-caching under the same prompt recomputes each context frame's keys/values from
    the same noisy latents (noise keyed by the frame): the next chunk is the one a stream
    without the re-cache makes, to float rounding, while fresh noise would move it about
    as far as the context noise itself does."""

    def chunk_2(sigma: float, recache: bool) -> np.ndarray:
        s = Stream(noisy_context_model(sigma), PROMPT, seed=2)
        for _ in range(2):
            s.next_chunk()
        if recache:
            s.set_prompt(OTHER, at_chunk=2)
            s.set_prompt(PROMPT, at_chunk=2)  # a new prompt object: chunk 2 re-caches
        out = s.next_chunk().astype(float)
        assert s._recached_at == ([2] if recache else [])
        return out

    direct = chunk_2(0.1, recache=False)
    moved_by_noise = np.abs(direct - chunk_2(0.0, recache=False)).mean()
    assert moved_by_noise > 0
    assert np.abs(chunk_2(0.1, recache=True) - direct).mean() < moved_by_noise / 10


@pytest.mark.parametrize("sigma", [-0.1, 0.6, float("nan"), True])
def test_sampler_config_rejects_a_bad_context_noise(sigma):
    with pytest.raises(ConfigError, match="context_noise"):
        SamplerConfig(context_noise=sigma)


@pytest.mark.parametrize("n", [-1, 17, 1.5, True])
def test_sampler_config_rejects_a_bad_warmup(n):
    with pytest.raises(ConfigError, match="warmup_chunks"):
        SamplerConfig(warmup_chunks=n)


@pytest.mark.parametrize("sink_start", [0, 6])
def test_sink_window_slots_never_collide_and_the_sink_stays(sink_start):
    """Every frame a chunk attends to, or a rewind may return to, has its own slot; the
    pinned frames (from sink_start) stay in every context once made, and frames before
    them (a warm-up) leave with the window like any other."""
    p = SinkRollingWindow(sink=3, window=6, margin=12, sink_start=sink_start)
    pinned = set(range(sink_start, sink_start + 3))
    for head in range(1, 300):
        live = set(p.context(head)) | set(range(p.min_rewind(head), head))
        slots = [p.slot_for(g) for g in live]
        assert len(set(slots)) == len(slots) and all(0 <= s < p.slots for s in slots)
        ctx = p.context(head)
        assert ctx == sorted(ctx) and set(range(max(0, head - 6), head)) <= set(ctx)
        assert pinned & set(range(head)) <= set(ctx)
        assert len(ctx) <= 9
    assert p.context(300)[:3] == sorted(pinned)


def test_a_warm_stream_pins_its_first_shown_chunk_as_the_sink():
    """After the warm-up has left the window, the context is the first shown chunk (the
    sink) plus the latest frames: no frame of the warm-up is attended to any more."""
    s = Stream(warm_model(2), PROMPT, seed=1)
    cf = s.chunk_frames
    for _ in range(8):
        s.next_chunk()
    ctx = s.cache.context_frames()
    assert ctx[:cf] == list(range(2 * cf, 3 * cf))  # chunk 0, the first one shown
    assert min(ctx) == 2 * cf and len(ctx) == cf + s.policy.window
