"""Wan2.1's VAE (diffusers `AutoencoderKLWan`) behind our VideoVAE interface.

diffusers decodes a whole video in one call: it clears its feature cache (`_feat_map`, one
slot per causal conv: the conv's last input frames, or the marker "Rep" for an upsampler
that has seen one frame), then runs the decoder one latent frame at a time, each call
reading and replacing slots of that cache. Here the same per-frame decoder calls run over a
chunk, and the cache is not kept inside the module but handed in and back as the chunk's
state: a copy of the slot list, with "Rep" carried as an empty tensor so that the state is
a list of tensors. diffusers replaces slots and never writes into a tensor it cached, so a
state kept by the stream stays valid however many chunks are decoded after it: decoding
again from it (a rewind) gives the same frames, and decoding chunk by chunk gives the frames
of the whole decode.

The first latent frame of a video decodes to one frame, every later one to
`time_stride` (4) frames: a first chunk of 3 latent frames gives 9 frames, later ones 12.
Encoding follows diffusers' `_encode` the same way (the first frame alone, then groups of
4). Latents are normalised as the Wan pipeline does, per channel with the config's
`latents_mean` / `latents_std`: z_model = (z_vae - mean) / std.
"""

from __future__ import annotations

import torch

from model.vae import State, VideoVAE

REP = "Rep"  # diffusers' marker: an upsampler's time conv has seen the first frame only


def _to_state(feat_map: list) -> State:
    return [torch.empty(0) if isinstance(f, str) else f for f in feat_map]


def _from_state(state: State) -> list:
    return [REP if isinstance(f, torch.Tensor) and f.numel() == 0 else f for f in state]


class WanVAE(VideoVAE):
    """A diffusers `AutoencoderKLWan`, decoded and encoded chunk by chunk with its cache as
    an explicit state."""

    def __init__(self, vae):
        super().__init__()
        if vae.config.patch_size is not None:
            raise ValueError("Wan2.2's patchified VAE is not supported (patch_size is set)")
        self.vae = vae  # diffusers.AutoencoderKLWan
        cfg = vae.config
        self.z_dim = cfg.z_dim
        self.time_stride = 2 ** sum(cfg.temperal_downsample)
        self.space_stride = 2 ** (len(cfg.dim_mult) - 1)
        z = cfg.z_dim
        self.register_buffer("latent_mean", torch.tensor(cfg.latents_mean[:z]).view(1, z, 1, 1, 1))
        self.register_buffer("latent_std", torch.tensor(cfg.latents_std[:z]).view(1, z, 1, 1, 1))
        self._dec_slots = sum(type(m).__name__ == "WanCausalConv3d" for m in vae.decoder.modules())
        self._enc_slots = sum(type(m).__name__ == "WanCausalConv3d" for m in vae.encoder.modules())

    def frames_for(self, latent_frames: int, first: bool) -> int:
        if latent_frames <= 0:
            return 0
        return (
            1 + (latent_frames - 1) * self.time_stride
            if first
            else latent_frames * self.time_stride
        )

    def decode(self, z: torch.Tensor, state: State | None = None):
        """Normalised latents (B, z, F, h, w) -> (frames (B, 3, T, 8h, 8w) in [-1, 1], state);
        T = 1 + 4 (F - 1) when `state` is None (a video's start), else 4 F."""
        first = state is None
        feat = [None] * self._dec_slots if first else _from_state(state)
        raw = z * self.latent_std.to(z.dtype) + self.latent_mean.to(z.dtype)
        x = self.vae.post_quant_conv(raw)  # (B, z, F, h, w): a 1x1x1 conv, frame by frame
        out = []
        for i in range(x.shape[2]):
            out.append(
                self.vae.decoder(
                    x[:, :, i : i + 1],
                    feat_cache=feat,
                    feat_idx=[0],
                    first_chunk=first and i == 0,
                )
            )
        return torch.cat(out, dim=2).clamp(-1.0, 1.0), _to_state(feat)

    def encode(self, frames: torch.Tensor, state: State | None = None):
        """frames (B, 3, T, H, W) in [-1, 1] -> (normalised mean latents, state); T = 1 + 4k
        at a video's start (`state` None), else 4k."""
        first = state is None
        feat = [None] * self._enc_slots if first else _from_state(state)
        t = frames.shape[2]
        if (t - 1 if first else t) % 4:
            raise ValueError(f"{t} frames do not make whole latent frames (1 + 4k, then 4k)")
        bounds = [0, 1, *range(5, t + 1, 4)] if first else list(range(0, t + 1, 4))
        out = [
            self.vae.encoder(frames[:, :, a:b], feat_cache=feat, feat_idx=[0])
            for a, b in zip(bounds[:-1], bounds[1:], strict=True)
        ]
        moments = self.vae.quant_conv(torch.cat(out, dim=2))
        mean = moments[:, : self.z_dim]
        z = (mean - self.latent_mean.to(mean.dtype)) / self.latent_std.to(mean.dtype)
        return z, _to_state(feat)


def decoder_state_bytes(config: dict, height: int, width: int, dtype, latent_frames: int = 3):
    """Bytes of one decoder state (the feature cache after a chunk) of an AutoencoderKLWan
    with `config` at height x width in `dtype`, measured by decoding two chunks on the meta
    device (nothing is allocated): 1.76 GiB for Wan2.1's VAE at 832x480 in bf16."""
    from diffusers import AutoencoderKLWan

    with torch.device("meta"):
        vae = WanVAE(AutoencoderKLWan.from_config(config)).to(dtype)
        s = vae.space_stride
        z = torch.empty((1, vae.z_dim, latent_frames, height // s, width // s), dtype=dtype)
    with torch.no_grad():
        _, state = vae.decode(z)
        _, state = vae.decode(z, state)
    return sum(t.numel() * t.element_size() for t in state if t is not None)
