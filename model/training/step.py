"""One optimizer step's parts: accumulated micro-batches, the learning-rate schedule and
the EMA of the weights that ships."""

from __future__ import annotations

import torch


def accumulated_backward(micro_loss, k: int) -> float:
    """Gradients of the mean of k micro-batch losses, drawn and back-propagated one at a
    time so that memory holds one micro-batch (a CPU takes the GPU run's batch this way);
    returns that mean."""
    total = 0.0
    for _ in range(k):
        loss = micro_loss() / k
        loss.backward()
        total += loss.item()
    return total


def lr_factor(run_step: int, seconds_left: float, decay_minutes: float) -> float:
    """Warm up over a run's first 100 steps (also when resuming: Adam's moments are
    reloaded, but a jump back to full rate after a decay is rough), then hold, then
    decay linearly to 0.1 over the run's last `decay_minutes`."""
    warm = min(1.0, (run_step + 1) / 100)
    if decay_minutes <= 0:
        return warm
    return warm * max(0.1, min(1.0, seconds_left / (decay_minutes * 60)))


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, step: int, rate: float) -> None:
    """Move the EMA weights toward the model's (a shorter memory over the first steps, then
    `rate`); buffers (the VAE's latent statistics) are copied as they are."""
    decay = min(rate, (1 + step) / (10 + step))
    for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
        pe.lerp_(pm, 1 - decay)
    for be, bm in zip(ema.buffers(), model.buffers(), strict=True):
        be.copy_(bm)
