"""Wan's VAE behind our VAE interface: chunked decoding with an explicit carried state."""

from __future__ import annotations

import pytest
import torch
from wan_tiny import tiny_vae

from model.chunk_frames import ChunkFrames
from model.wan.vae import WanVAE, decoder_state_bytes


@pytest.fixture(scope="module")
def vae():
    return WanVAE(tiny_vae())


def latents(frames: int, seed: int = 0) -> torch.Tensor:
    return torch.randn((1, 4, frames, 4, 8), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_chunked_decode_equals_diffusers_whole_decode(vae):
    """Three chunks of 3 latent frames, each decoded from the state of the one before,
    give exactly diffusers' decode of all 9 latent frames (denormalised as Wan does)."""
    z = latents(9)
    whole = vae.vae.decode(z * vae.latent_std + vae.latent_mean).sample
    state, parts = None, []
    for k in range(3):
        video, state = vae.decode(z[:, :, 3 * k : 3 * k + 3], state)
        parts.append(video)
    assert torch.equal(torch.cat(parts, dim=2), whole)


@torch.no_grad()
def test_frame_counts_are_9_then_12(vae):
    """A first chunk of 3 latent frames decodes to 9 frames, later ones to 12, and
    frames_for says so before decoding."""
    z, state, counts = latents(9), None, []
    for k in range(3):
        video, state = vae.decode(z[:, :, 3 * k : 3 * k + 3], state)
        counts.append(video.shape[2])
    assert counts == [9, 12, 12]
    assert [vae.frames_for(3, first=k == 0) for k in range(3)] == counts
    assert ChunkFrames(vae.frames_for(3, True), vae.frames_for(3, False)).start(3) == 33


@torch.no_grad()
def test_state_is_a_list_of_tensors_and_a_rewind_reproduces(vae):
    """The state is a list of tensors (None for the convs diffusers never caches, as in
    our own VAE's state); decoding again from a kept state (a rewind) gives the same
    frames bit for bit, and decoding after it does not change the kept state."""
    z = latents(9, seed=1)
    _, s1 = vae.decode(z[:, :, :3])
    assert isinstance(s1, list) and all(t is None or isinstance(t, torch.Tensor) for t in s1)
    assert sum(t is not None for t in s1) > len(s1) // 2
    kept = [None if t is None else t.clone() for t in s1]
    b, s2 = vae.decode(z[:, :, 3:6], s1)
    c, _ = vae.decode(z[:, :, 6:], s2)
    again_b, again_s2 = vae.decode(z[:, :, 3:6], s1)
    again_c, _ = vae.decode(z[:, :, 6:], again_s2)
    assert torch.equal(b, again_b) and torch.equal(c, again_c)
    assert all(a is k or torch.equal(a, k) for a, k in zip(s1, kept, strict=True))


@torch.no_grad()
def test_a_first_chunk_of_one_latent_frame_carries_the_upsamplers_marker(vae):
    """After a single latent frame the upsamplers hold diffusers' "Rep" marker (an empty
    tensor in our state); the next chunk decodes as diffusers' whole decode does."""
    z = latents(4, seed=2)
    whole = vae.vae.decode(z * vae.latent_std + vae.latent_mean).sample
    a, state = vae.decode(z[:, :, :1])
    assert a.shape[2] == 1 and any(t is not None and t.numel() == 0 for t in state)
    b, _ = vae.decode(z[:, :, 1:], state)
    assert torch.equal(torch.cat([a, b], dim=2), whole)


@torch.no_grad()
def test_chunked_encode_equals_diffusers_encode(vae):
    """Encoding 9 then 12 frames with the carried state gives diffusers' posterior mode
    of all 21 frames, normalised with the VAE's latent mean and std."""
    x = torch.rand((1, 3, 21, 32, 64), generator=torch.Generator().manual_seed(3)) * 2 - 1
    ref = vae.vae.encode(x).latent_dist.mode()
    z1, state = vae.encode(x[:, :, :9])
    z2, _ = vae.encode(x[:, :, 9:], state)
    z = torch.cat([z1, z2], dim=2)
    assert z.shape[2] == 6
    torch.testing.assert_close(z * vae.latent_std + vae.latent_mean, ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="whole latent frames"):
        vae.encode(x[:, :, :8])


@torch.no_grad()
def test_decoder_state_bytes_are_measured_without_decoding(vae):
    """The meta-device estimate of a decoder state's size equals a real state's bytes."""
    _, state = vae.decode(latents(3))
    _, state = vae.decode(latents(3, seed=4), state)
    real = sum(t.numel() * t.element_size() for t in state if t is not None)
    assert decoder_state_bytes(dict(vae.vae.config), 32, 64, torch.float32) == real > 0
