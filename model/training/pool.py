"""The trainer's supply of encoded TinyWorld sequences, and the micro-batches drawn from it."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from model.bundle import VideoModel
from model.precision import mixed_precision
from model.tinyworld.sequences import Sequence, SequenceSource
from model.tinyworld.spec import parse_prompt


def latent_track(track: np.ndarray, time_stride: int) -> torch.Tensor:
    """A sequence's per-frame object track (T, 4: centre x, y, velocity x, y) -> per latent
    frame (T/ts, 4): the centre at the middle of its frames, the mean velocity over them."""
    t = track.reshape(-1, time_stride, 4)
    centre = t[:, time_stride // 2, :2]
    return torch.from_numpy(np.concatenate([centre, t[:, :, 2:].mean(1)], axis=1))


def object_cells(x: torch.Tensor, time_stride: int, cells: int) -> torch.Tensor:
    """(B, 3, T, H, W) frames in [-1, 1] -> (B, T/ts, cells, cells) bool: latent cells where
    some pixel stands out from its row's median colour (the object; stars and flakes too)."""
    median = x.median(dim=-1, keepdim=True).values
    out = ((x - median).abs().amax(dim=1) > 0.35).float()  # (B, T, H, W)
    b, t, h, w = out.shape
    out = out.view(b, t // time_stride, time_stride, h, w).amax(dim=2)
    return F.adaptive_max_pool2d(out, cells) > 0


class LatentPool:
    """Encoded training sequences, refreshed a few at a time from a SequenceSource."""

    def __init__(self, model: VideoModel, source: SequenceSource, rng, args):
        self.model, self.source, self.rng, self.args = model, source, rng, args
        self.chunk_latent = model.config.stream.chunk_latent_frames
        self.chunk_frames = source.p.chunk_frames
        self.latents: list[torch.Tensor] = []
        self.text_idx: list[torch.Tensor] = []
        self.objects: list[torch.Tensor] = []  # (F, h, w) bool: latent cells the object is in
        self.far: list[bool] = []  # the first chunk is a sink from far earlier (a gap follows)
        self.tracks: list[torch.Tensor] = []  # (F, 4): the object's centre and velocity
        self.fresh = 0  # sequences encoded since the trainer last read this
        while len(self.latents) < args.pool:
            need = min(args.encode_batch, args.pool - len(self.latents))
            for z, idx, obj, far, track in self._encode(source.take(need, wait=True)):
                self.latents.append(z)
                self.text_idx.append(idx)
                self.objects.append(obj)
                self.far.append(far)
                self.tracks.append(track)

    @torch.no_grad()
    def _encode(self, seqs: list[Sequence]) -> list[tuple]:
        """Sequences -> (latents (z, F, h, w) unscaled, prompt indices, object cells, far,
        the object's track per latent frame), encoded together on the model's device."""
        if not seqs:
            return []
        vae = self.model.vae
        dev = vae.latent_std.device
        # each sequence to the device, then one stack there (a host-side stack of 48
        # sequences is 113 MB of copying on the trainer's one busy core)
        frames = torch.stack([torch.from_numpy(s.frames).to(dev) for s in seqs])
        x = frames.permute(0, 4, 1, 2, 3).float() / 127.5 - 1  # (B, 3, T, H, W)
        far = torch.tensor([s.far for s in seqs], device=dev)
        z = None
        with mixed_precision(dev.type, self.args.dtype):
            for group, split in ((far, True), (~far, False)):
                if not group.any():
                    continue
                xs = x[group]
                if split:  # the sink and the chunks after the gap are separate videos
                    first, _, _ = vae.encode_moments(xs[:, :, : self.chunk_frames])
                    rest, _, _ = vae.encode_moments(xs[:, :, self.chunk_frames :])
                    zg = torch.cat([first, rest], dim=2)
                else:  # one video: later chunks are encoded with the causal state carried on
                    zg, _, _ = vae.encode_moments(xs)
                if z is None:
                    z = torch.empty((len(seqs), *zg.shape[1:]), device=dev)
                z[group] = zg.float()
        obj = object_cells(x, self.model.config.vae.time_stride, z.shape[-1]).cpu()
        z = z.cpu()  # the pool lives in host memory
        enc = self.model.text
        ts = self.model.config.vae.time_stride
        out = []
        for i, s in enumerate(seqs):
            idx = torch.tensor([enc.indices(parse_prompt(c).attributes) for c in s.captions])
            out.append((z[i], idx, obj[i], s.far, latent_track(s.track, ts)))
        return out

    def refresh(self, n: int) -> None:
        """Replace up to n random pool entries with new sequences (with render workers, as
        many as are ready)."""
        for item in self._encode(self.source.take(n)):
            i = int(self.rng.integers(len(self.latents)))
            self.latents[i], self.text_idx[i], self.objects[i], self.far[i], self.tracks[i] = item
            self.fresh += 1

    def batch(self, b: int):
        ids = self.rng.integers(len(self.latents), size=b)
        z = torch.stack([self.latents[i] for i in ids])
        idx = torch.stack([self.text_idx[i] for i in ids])
        obj = torch.stack([self.objects[i] for i in ids])
        far = torch.tensor([self.far[i] for i in ids])
        track = torch.stack([self.tracks[i] for i in ids])
        return z, idx, obj, far, track


def draw(pool: LatentPool, first: bool, args):
    """One micro-batch after a refresh of the pool: first chunks alone, or sequences."""
    pool.refresh(args.refresh)
    return first_chunks(pool, args.first_chunk_batch) if first else pool.batch(args.batch)


def first_chunks(pool: LatentPool, b: int):
    """A batch of streams' first chunks alone (text-to-video, no context).

    Every later chunk copies much of what it shows from the context, so the first chunk
    is where shape and placement are made up from the prompt alone. One chunk without
    its clean copy costs about a twelfth of a 4-chunk sequence (forward and backward on
    2 cores: 0.44 s for 24 first chunks, 1.42 s for 6 sequences), so these steps give
    that case many more examples for the same time."""
    z, idx, obj, _, track = pool.batch(b)
    f = pool.chunk_latent
    return z[:, :, :f], idx[:, :1], obj[:, :f], torch.zeros(b, dtype=torch.bool), track[:, :f]
