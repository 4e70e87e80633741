"""The x0_renoise sampler (Self-Forcing / CausVid / LongLive) against a plain
re-implementation of their inference loop; TinyWorld's Euler sampler unchanged; the fresh
noise fixed by (seed, chunk, step) so rewinds regenerate identically."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from memory.stream import Stream
from model.bundle import VideoModel
from model.config import SamplerConfig
from model.errors import ConfigError
from model.sampler import Cond, FlowSampler, sigmas, step_noise, x0_levels

torch.set_num_threads(1)

SELF_FORCING = SamplerConfig(
    mode="x0_renoise", timesteps=(1000, 750, 500, 250), warp_timesteps=True, shift=5.0
)
CAUSVID = SamplerConfig(mode="x0_renoise", timesteps=(1000, 757, 522), steps=3, shift=8.0)


class ReferenceScheduler:
    """Their flow-matching scheduler, written out: 1000 training levels, uniform from 1 to
    just above 0, shifted; a timestep's level is looked up as the nearest entry."""

    def __init__(self, shift: float):
        s = torch.linspace(1.0, 0.0, 1001)[:-1]
        self.sigmas = shift * s / (1 + (shift - 1) * s)
        self.timesteps = self.sigmas * 1000

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return self.sigmas[(self.timesteps - t).abs().argmin()]

    def add_noise(self, x0, noise, t):
        s = self.sigma(t)
        return (1 - s) * x0 + s * noise


def reference_loop(noise, flow, step_list, shift, warp, key):
    """Self-Forcing's per-chunk inference loop: predict x0 at each timestep, re-noise it to
    the next with fresh noise (here the sampler's own per-step noise), keep the last x0."""
    sched = ReferenceScheduler(shift)
    steps = torch.tensor(step_list, dtype=torch.long)
    if warp:
        steps = torch.cat([sched.timesteps, torch.tensor([0.0])])[1000 - steps]
    x = noise
    for i, t in enumerate(steps):
        x0 = x - sched.sigma(t) * flow(x, t)  # convert_flow_pred_to_x0
        if i + 1 < len(steps):
            x = sched.add_noise(x0, step_noise(key, i + 1, x0), steps[i + 1])
    return x0


def stub_flow(x: torch.Tensor, t) -> torch.Tensor:
    """A velocity that depends on the input and the timestep."""
    t = float(t)
    return torch.tanh(x) * (t / 1000) + 0.3 * torch.sin(3 * x) - 0.002 * t


def as_velocity(flow):
    calls = []

    def velocity(x, sigma, conds):
        calls.append(sigma)
        return flow(x, sigma * 1000)

    return velocity, calls


@pytest.mark.parametrize(
    ("cfg", "warp"), [(SELF_FORCING, True), (CAUSVID, False)], ids=["self-forcing", "causvid"]
)
def test_x0_renoise_matches_the_reference_loop(cfg, warp):
    """Same result as the reference loop (max diff < 1e-5); a deterministic Euler sampler
    over the same levels is far off (the negative control)."""
    noise = torch.randn(1, 4, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    key = (7, 3)
    want = reference_loop(noise, stub_flow, cfg.timesteps, cfg.shift, warp, key)
    velocity, calls = as_velocity(stub_flow)
    got = FlowSampler(cfg).sample(noise, velocity, key=key)
    assert (got - want).abs().max().item() < 1e-5
    assert len(calls) == len(cfg.timesteps)
    levels = [s for _, s in x0_levels(cfg, cfg.steps)] + [0.0]
    x = noise
    for s, s_next in zip(levels[:-1], levels[1:], strict=True):
        x = x + (s_next - s) * stub_flow(x, s * 1000)
    assert (x - want).abs().max().item() > 0.05


def test_self_forcing_timesteps_are_warped_through_the_shifted_schedule():
    """[1000, 750, 500, 250] at shift 5 are told to the model as sigma 1, 0.9375, 0.8333,
    0.625 (their warp_denoising_step); CausVid's unwarped 757 stays 0.757 (its latents at
    the nearest training level)."""
    told = [t for t, _ in x0_levels(SELF_FORCING, 4)]
    assert told == pytest.approx([1.0, 0.9375, 2.5 / 3, 0.625], abs=1e-6)
    told, levels = zip(*x0_levels(CAUSVID, 3), strict=True)
    assert told == pytest.approx([1.0, 0.757, 0.522], abs=1e-6)
    assert levels == pytest.approx([1.0, 0.757, 0.522], abs=1e-3)


def test_fresh_noise_is_fixed_by_seed_chunk_and_step():
    """The same (seed, chunk, step) gives the same noise; any other, different noise."""
    like = torch.zeros(1, 4, 3, 6, 6)
    a = step_noise((1, 2), 3, like)
    assert torch.equal(a, step_noise((1, 2), 3, like))
    for key, step in (((1, 3), 3), ((2, 2), 3), ((1, 2), 2), ((1, -1), 3)):
        assert not torch.allclose(a, step_noise(key, step, like))


def test_tinyworld_euler_sampler_is_unchanged():
    """The default sampler (euler) takes exactly the pre-change steps, CFG included."""
    cfg = SamplerConfig(guidance=3.0, guidance_interval=(0.3, 1.0))
    noise = torch.randn(2, 4, 3, 6, 6, generator=torch.Generator().manual_seed(1))

    def velocity(x, s, conds):
        shift = torch.tensor([0.0 if c is Cond.PROMPT else 0.5 for c in conds])
        return stub_flow(x, s * 1000) + shift.repeat_interleave(len(x) // len(conds)).view(
            -1, 1, 1, 1, 1
        )

    got = FlowSampler(cfg).sample(noise, velocity)
    sched = sigmas(cfg.steps, cfg.shift).tolist()
    x = noise
    for s, s_next in zip(sched[:-1], sched[1:], strict=True):
        if 0.3 <= s <= 1.0:
            vs = velocity(torch.cat([x, x]), s, (Cond.PROMPT, Cond.EMPTY)).chunk(2)
            v = vs[1] + 3.0 * (vs[0] - vs[1])
        else:
            v = velocity(x, s, (Cond.PROMPT,))
        x = x + (s_next - s) * v
    assert torch.equal(got, x)


def test_a_rewound_stream_regenerates_identically_with_fresh_noise():
    """A micro model under the Self-Forcing sampler: chunks 1-2 regenerated after a rewind
    are the same frames, bit for bit."""
    model = VideoModel.from_seed(0, "micro").with_sampler(
        mode="x0_renoise", timesteps=(1000, 750, 500, 250), warp_timesteps=True, shift=5.0
    )
    s = Stream(model, "a big red circle bouncing over the ocean", seed=4)
    first = [s.next_chunk() for _ in range(3)]
    s.rewind(1)
    again = [s.next_chunk() for _ in range(2)]
    assert all(np.array_equal(a, b) for a, b in zip(first[1:], again, strict=True))


def test_inconsistent_schedules_are_refused():
    """A step count that is not the timesteps', rising timesteps, timesteps for the Euler
    sampler, and unknown modes raise ConfigError."""
    with pytest.raises(ConfigError, match="steps must be 4"):
        SamplerConfig(mode="x0_renoise", timesteps=(1000, 750, 500, 250), steps=2)
    with pytest.raises(ConfigError, match="decrease"):
        SamplerConfig(mode="x0_renoise", timesteps=(500, 750), steps=2)
    with pytest.raises(ConfigError, match="only to the x0_renoise"):
        SamplerConfig(timesteps=(1000, 500), steps=2)
    with pytest.raises(ConfigError, match="sampler mode"):
        SamplerConfig(mode="heun")
