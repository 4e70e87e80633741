"""A velocity probe: an auxiliary loss that asks the DiT's hidden state to say how the
object moves.

Why: a bounce's direction is the one thing a TinyWorld chunk must take from its context
alone (the prompt fixes a straight move, the object's place a circle's tangent). Linear
probes on the shipped weights' hidden states (`ops/experiments/probe_velocity.py`:
teacher-forced true bouncing clips, the token under the object) read the sign of a
bounce's horizontal
velocity 97% right at block 3 of the context, its vertical one (0.18 fw/s, a quarter of
a token a latent frame) 88%; on the chunk being made, at noise level 1, 92% and 80% at
block 2, and less in each later block (84% and 67% at the last), while the generated
bounce heads about 30 degrees off the truth (docs/training.md, "Where the model falls
short"). This loss trains a linear head on one block's output at the object's token to
give the renderer's velocity, and its gradient goes into the blocks below:
representation alignment with a target the renderer knows exactly (REPA, Yu et al.,
2024, aligns DiT hidden states with a pretrained encoder's features for the same
reason: what the denoiser must represent, taught directly).

The head lives only in training (saved beside the run's state, never in a shipped
checkpoint), so the model's layout and the inference path do not change.
"""

from __future__ import annotations

import torch
import torch.nn as nn

VELOCITY_SCALE = 0.25  # fw/s: TinyWorld's straight speed, so targets are about unit size


def object_tokens(track: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, F) index, within one copy of F latent frames of gh x gw tokens each, of the
    token under the object's centre in each frame (`track` (B, F, >=2): centre x, y)."""
    gh, gw = grid
    col = (track[..., 0] * gw).long().clamp(0, gw - 1)
    row = (track[..., 1] * gh).long().clamp(0, gh - 1)
    frame = torch.arange(track.shape[1], device=track.device)[None, :]
    return frame * gh * gw + row * gw + col


class VelocityProbe(nn.Module):
    """Linear head on the output of `dit.blocks[layer]` at the object's token."""

    def __init__(self, dim: int, layer: int):
        super().__init__()
        self.layer = layer
        self.head = nn.Linear(dim, 2)
        self.hidden: torch.Tensor | None = None
        self.last_loss: torch.Tensor | None = None  # of the last `loss` call, for the log

    def watch(self, dit) -> torch.utils.hooks.RemovableHandle:
        """Keep the chosen block's output tokens of every forward (the last one stays)."""

        def keep(_module, _inputs, output):
            self.hidden = output[0]

        return dit.blocks[self.layer].register_forward_hook(keep)

    def loss(self, track: torch.Tensor, offset: int, grid: tuple[int, int]) -> torch.Tensor:
        """Mean square error of the velocity read at the object's token of each latent
        frame, against `track` (B, F, 4: centre x, y, velocity x, y per latent frame).

        The kept hidden state is (B, N, dim); latent frame f's tokens start at
        offset + f * gh * gw (offset: where the copy the loss reads begins)."""
        if self.hidden is None:
            raise RuntimeError("no forward pass was watched")
        b, f = track.shape[:2]
        token = offset + object_tokens(track, grid)
        h = self.hidden.gather(1, token[..., None].expand(b, f, self.hidden.shape[-1]))
        read = self.head(h.float())
        return (read - track[..., 2:] / VELOCITY_SCALE).pow(2).mean()
