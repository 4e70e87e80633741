"""Few-step flow-matching sampler (rectified flow, as Wan / SD3).

Convention: x_sigma = (1 - sigma) * x0 + sigma * noise, the model predicts the velocity
v = noise - x0, and an Euler step moves x from sigma to sigma_next by (sigma_next - sigma) v.

The few-step causal Wan checkpoints (Self-Forcing, CausVid, LongLive) sample otherwise
(`SamplerConfig.mode = "x0_renoise"`): at each of their published timesteps the model's
x0 = x - sigma v is noised again to the next timestep with fresh noise, and the last x0 is
the result. Their timesteps index a shifted 1000-step training schedule (`training_schedule`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Generator
from enum import StrEnum

import torch

from model.config import USER_SAMPLING, SamplerConfig


def sigmas(steps: int, shift: float) -> torch.Tensor:
    """steps+1 noise levels from 1 down to 0, shifted toward high noise."""
    s = torch.linspace(1.0, 0.0, steps + 1)
    return shift * s / (1.0 + (shift - 1.0) * s)


def shift_sigma(u: torch.Tensor, shift: float) -> torch.Tensor:
    """Map uniform u in [0, 1] to the shifted schedule (used to sample training sigmas)."""
    return shift * u / (1.0 + (shift - 1.0) * u)


TRAIN_STEPS = 1000


def training_schedule(shift: float) -> torch.Tensor:
    """The 1000 noise levels Self-Forcing / CausVid / LongLive train on: uniform from 1 down
    to (not including) 0, shifted. Timestep t of theirs is 1000 * one of these levels."""
    return shift_sigma(torch.linspace(1.0, 0.0, TRAIN_STEPS + 1)[:-1], shift)


def full_steps(cfg: SamplerConfig) -> int:
    """The denoising steps of a chunk under `cfg`: its published timesteps' count, if any."""
    return len(cfg.timesteps) if cfg.timesteps is not None else cfg.steps


def x0_levels(cfg: SamplerConfig, steps: int) -> list[tuple[float, float]]:
    """(told, sigma) per step of the x0_renoise sampler: the level the model is told (its
    timestep / 1000) and the level the latents are at (the training schedule's level
    nearest that timestep, as their scheduler looks it up; the same level when warped)."""
    if cfg.timesteps is None:
        levels = sigmas(steps, cfg.shift)[:-1].tolist()
        return list(zip(levels, levels, strict=True))
    table = training_schedule(cfg.shift)
    ts = torch.tensor(cfg.timesteps, dtype=torch.float32)
    if cfg.warp_timesteps:  # timestep t -> the (1000 - t)-th level of the training schedule
        ts = torch.cat([table * TRAIN_STEPS, torch.zeros(1)])[TRAIN_STEPS - ts.long()]
    nearest = (table[None, :] * TRAIN_STEPS - ts[:, None]).abs().argmin(dim=1)
    return list(zip((ts / TRAIN_STEPS).tolist(), table[nearest].tolist(), strict=True))


def step_noise(key: tuple[int, int], step: int, like: torch.Tensor) -> torch.Tensor:
    """The fresh noise of step `step` of chunk `key` = (seed, chunk): fixed by the three, so
    a rewound chunk is regenerated identically."""
    seed, chunk = key
    mixed = ((seed * 0x9E3779B1 + chunk) * 0x85EBCA77 + step * 0xC2B2AE3D + 1) % (2**63)
    g = torch.Generator().manual_seed(mixed)
    return torch.randn(like.shape, generator=g).to(like.device, like.dtype)


class Cond(StrEnum):
    """What one batch group of a model call is conditioned on."""

    PROMPT = "prompt"  # the prompt
    EMPTY = "empty"  # the empty prompt (classifier-free guidance)
    NO_MOTION = "no_motion"  # the prompt with its motion left unsaid (motion guidance)


ModelCall = tuple[torch.Tensor, float, tuple[Cond, ...]]  # (x, sigma, conds) of one step


class FlowSampler:
    """Denoise one chunk with `velocity(x, sigma, conds)`, the model call.

    x stacks len(conds) equal groups on the batch axis; group i is conditioned as conds[i]
    says (a `Cond`). The passes a step needs run as one batch (cheaper than separate
    calls): the prompt's alone, or with the empty prompt's for guidance and the motionless
    prompt's for motion guidance.
    """

    def __init__(self, cfg: SamplerConfig):
        self.cfg = cfg

    def sample(
        self,
        noise: torch.Tensor,
        velocity: Callable[[torch.Tensor, float, tuple[Cond, ...]], torch.Tensor],
        steps: int | None = None,
        guidance: float | None = None,
        interval: tuple[float, float] | None = None,
        motion_guidance: float | None = None,
        key: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Denoise `noise` (the chunk at sigma 1), calling `velocity` once a step (see
        `walk`). `key` = (seed, chunk) fixes the fresh noise of the x0_renoise mode."""
        walk = self.walk(noise, steps, guidance, interval, motion_guidance, key)
        call = next(walk)
        while True:
            try:
                call = walk.send(velocity(*call))
            except StopIteration as done:
                return done.value

    def walk(
        self,
        noise: torch.Tensor,
        steps: int | None = None,
        guidance: float | None = None,
        interval: tuple[float, float] | None = None,
        motion_guidance: float | None = None,
        key: tuple[int, int] | None = None,
    ) -> Generator[ModelCall, torch.Tensor, torch.Tensor]:
        """The sampling loop as a generator: it yields each step's model call
        `(x, sigma, conds)`, is sent back that call's velocity, and returns the sample.
        `sample` answers one call at a time; memory/batch.py walks several streams in
        lockstep and answers all their calls with one batched forward pass."""
        steps = steps or full_steps(self.cfg)
        guidance = self.cfg.guidance if guidance is None else guidance
        lo, hi = self.cfg.guidance_interval if interval is None else interval
        motion = self.cfg.motion_guidance if motion_guidance is None else motion_guidance

        def guided(x, s):  # a generator: yields the call, returns the guided velocity
            return self._velocity(x, s, guidance, (lo, hi), motion)

        if self.cfg.mode == "x0_renoise":
            if key is None:
                raise ValueError("the x0_renoise sampler needs key=(seed, chunk)")
            levels = x0_levels(self.cfg, steps)
            # fewer steps than published (an overloaded engine): stop at the step's x0,
            # as Self-Forcing's training exits a rollout at a random step
            return (yield from self._x0_renoise(noise, guided, levels[:steps], key))
        sched = sigmas(steps, self.cfg.shift).tolist()
        x = noise
        for s, s_next in zip(sched[:-1], sched[1:], strict=True):
            x = x + (s_next - s) * (yield from guided(x, s))
        return x

    @staticmethod
    def _x0_renoise(noise, guided, levels, key):
        """x0 at each level, noised again with fresh noise to the next; the last x0."""
        x = noise
        for i, (told, s) in enumerate(levels):
            x0 = x - s * (yield from guided(x, told))
            if i + 1 == len(levels):
                return x0
            s_next = levels[i + 1][1]
            x = (1 - s_next) * x0 + s_next * step_noise(key, i + 1, x0)
        raise AssertionError("no levels")

    def _velocity(self, x, s, guidance, interval, motion):
        """The step's velocity at level s: the prompt's, with CFG and motion guidance where
        they apply, the passes asked for as one batched model call (yielded)."""
        lo, hi = interval
        conds = [Cond.PROMPT]
        if guidance != 1.0 and lo <= s <= hi:
            conds.append(Cond.EMPTY)
        if motion and s >= self.cfg.motion_guidance_from:
            conds.append(Cond.NO_MOTION)
        batch = x if len(conds) == 1 else torch.cat([x] * len(conds))
        out = yield batch, s, tuple(conds)
        vs = dict(zip(conds, out.chunk(len(conds)), strict=True))
        v = vs[Cond.PROMPT]
        if Cond.EMPTY in vs:
            v = vs[Cond.EMPTY] + guidance * (vs[Cond.PROMPT] - vs[Cond.EMPTY])
        if Cond.NO_MOTION in vs:
            v = v + motion * (vs[Cond.PROMPT] - vs[Cond.NO_MOTION])
        return v


def add_sampling_options(parser: argparse.ArgumentParser) -> None:
    """The sampling flags every command-line tool shares (`--steps`, `--guidance`,
    `--guidance-interval LO HI`, `--guidance-chunks N`, `--warmup-chunks N`,
    `--context-noise SIGMA`, `--motion-guidance W`, `--motion-guidance-from SIGMA`); unset flags
    keep the model's settings (see `sampling_changes`)."""
    parser.add_argument(
        "--steps", type=int, help="denoising steps per chunk (default: the model's)"
    )
    parser.add_argument(
        "--guidance",
        type=float,
        help="classifier-free guidance scale (default: the model's; 1: off): more prompt "
        "adherence for more compute per guided chunk",
    )
    parser.add_argument(
        "--guidance-interval",
        type=float,
        nargs=2,
        metavar=("LO", "HI"),
        help="apply guidance only at noise levels in [LO, HI] (default: the model's)",
    )
    parser.add_argument(
        "--guidance-chunks",
        type=int,
        metavar="N",
        help="apply guidance only to the first N chunks after the start and each prompt "
        "change (0: every chunk; default: the model's)",
    )
    parser.add_argument(
        "--warmup-chunks",
        type=int,
        metavar="N",
        help="generate N chunks before a stream's first shown chunk and show none of them "
        "(a steadier start for N chunks' compute before the first frame; default: the "
        "model's)",
    )
    parser.add_argument(
        "--context-noise",
        type=float,
        metavar="SIGMA",
        help="noise level (0 to 0.5) at which finished chunks are cached as context "
        "(default: the model's)",
    )
    parser.add_argument(
        "--motion-guidance",
        type=float,
        metavar="W",
        help="extra guidance toward the prompt's motion, against the prompt with its motion "
        "left unsaid, on the chunks --guidance-chunks guides (0: off; default: the model's)",
    )
    parser.add_argument(
        "--motion-guidance-from",
        type=float,
        metavar="SIGMA",
        help="apply motion guidance only at steps whose noise level is at least SIGMA "
        "(default: the model's)",
    )


def sampling_changes(args: argparse.Namespace) -> dict:
    """The sampler settings given by the flags of `add_sampling_options`."""
    changes = {}
    for name in USER_SAMPLING:
        value = getattr(args, name, None)
        if value is not None:
            changes[name] = tuple(value) if name == "guidance_interval" else value
    return changes


def use_sampling_options(model, args: argparse.Namespace) -> None:
    """Make the model's later streams use the sampling given on the command line."""
    model.with_sampler(**sampling_changes(args))
