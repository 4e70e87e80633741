"""The block-by-block teacher-forcing attention equals the dense masked one."""

import torch
import torch.nn.functional as F

from model.bundle import VideoModel
from model.teacher_forcing import TeacherForcingLayout


def teacher_forcing_inputs(model: VideoModel, chunks: int, batch: int):
    """Random [clean | noisy] latents on a 4x4 grid with their noise levels, text,
    positions and the teacher-forcing layout."""
    chunk = model.config.stream.chunk_latent_frames
    n = chunks * chunk
    x = torch.randn(batch, model.config.vae.z_dim, 2 * n, 4, 4)
    sigma = torch.rand(batch, 2 * n)
    text = torch.randn(batch, model.config.dit.text_len, model.config.dit.text_dim)
    positions = torch.cat([torch.arange(n), torch.arange(n)])
    layout = TeacherForcingLayout(chunks, chunk * model.dit.tokens_per_frame(4, 4))
    return x, sigma, text, positions, layout


def test_attend_equals_dense_masked_attention():
    torch.manual_seed(0)
    layout = TeacherForcingLayout(chunks=3, chunk_tokens=5)
    q, k, v = (torch.randn(2, 4, 30, 8) for _ in range(3))
    dense = F.scaled_dot_product_attention(q, k, v, attn_mask=layout.dense_mask())
    torch.testing.assert_close(layout.attend(q, k, v), dense, atol=1e-5, rtol=1e-5)


def test_dense_mask_is_chunk_causal():
    m = TeacherForcingLayout(chunks=2, chunk_tokens=1).dense_mask()
    # rows/cols: clean0 clean1 noisy0 noisy1
    expected = torch.tensor(
        [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 1]], dtype=torch.bool
    )
    assert torch.equal(m, expected)


def test_dit_forward_and_gradients_match_the_dense_mask():
    model = VideoModel.from_seed(0, "micro")
    dit = model.dit
    dit.requires_grad_(True)
    x, sigma, text, positions, layout = teacher_forcing_inputs(model, chunks=2, batch=1)
    outs, grads = [], []
    for mask in (layout.dense_mask(), layout):
        dit.zero_grad()
        out = dit(x, sigma, text, positions, mask=mask)
        out.square().mean().backward()
        outs.append(out.detach())
        grads.append(dit.blocks[0].self_attn.q.weight.grad.clone())
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_first_chunk_alone_equals_its_noisy_copy_under_the_layout():
    """ops/train_dit.py trains streams' first chunks without the clean copy: with one
    chunk the noisy copy sees only itself, so leaving the clean copy out changes nothing."""
    model = VideoModel.from_seed(0, "micro")
    dit = model.dit
    n = model.config.stream.chunk_latent_frames
    x, sigma, text, positions, layout = teacher_forcing_inputs(model, chunks=1, batch=2)
    with torch.no_grad():
        both = dit(x, sigma, text, positions, mask=layout)[:, :, n:]
        alone = dit(x[:, :, n:], sigma[:, n:], text, positions[:n])
    torch.testing.assert_close(alone, both, atol=1e-5, rtol=1e-4)
