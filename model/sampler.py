"""Few-step flow-matching sampler (rectified flow, as Wan / SD3).

Convention: x_sigma = (1 - sigma) * x0 + sigma * noise, the model predicts the velocity
v = noise - x0, and an Euler step moves x from sigma to sigma_next by (sigma_next - sigma) v.
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
    ) -> torch.Tensor:
        """Denoise `noise`, calling `velocity` once a step (see `walk`)."""
        walk = self.walk(noise, steps, guidance, interval, motion_guidance)
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
    ) -> Generator[ModelCall, torch.Tensor, torch.Tensor]:
        """The sampling loop as a generator: it yields each step's model call
        `(x, sigma, conds)`, is sent back that call's velocity, and returns the sample.
        `sample` answers one call at a time; memory/batch.py walks several streams in
        lockstep and answers all their calls with one batched forward pass."""
        steps = steps or self.cfg.steps
        guidance = self.cfg.guidance if guidance is None else guidance
        lo, hi = self.cfg.guidance_interval if interval is None else interval
        motion = self.cfg.motion_guidance if motion_guidance is None else motion_guidance
        sched = sigmas(steps, self.cfg.shift).tolist()
        x = noise
        for s, s_next in zip(sched[:-1], sched[1:], strict=True):
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
            x = x + (s_next - s) * v
        return x


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
