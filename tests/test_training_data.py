"""What the DiT trainer asks of the model (only states that inference makes) and how its
training sequences reach it."""

from __future__ import annotations

from dataclasses import replace
from multiprocessing import shared_memory
from types import SimpleNamespace

import numpy as np
import torch

from model.bundle import VideoModel
from model.precision import mixed_precision
from model.tinyworld.sequences import SequenceParams, SequenceSource, _render_into, sample_sequence
from model.training.objective import recache_variant
from model.training.pool import LatentPool
from model.training.step import accumulated_backward

A, B, C = [1, 1, 0, 0, 0], [1, 2, 0, 0, 0], [3, 2, 0, 0, 0]  # slot value indices


def masks(chunks: list[list[int]], far: bool, prob: float):
    idx = torch.tensor([chunks])
    clean, loss = recache_variant(idx, torch.tensor([far]), prob)
    return clean[0].tolist(), loss[0].tolist()


def test_with_the_recache_the_context_is_under_the_final_prompt_and_only_it_is_trained():
    clean, loss = masks([A, A, B, B], far=False, prob=1.0)
    assert clean == [B, B, B, B] and loss == [False, False, True, True]
    clean, loss = masks([A, B, A, C], far=False, prob=1.0)
    assert clean == [C, C, C, C] and loss == [False, False, False, True]


def test_without_the_recache_only_chunks_before_the_first_switch_are_trained():
    clean, loss = masks([A, A, B, B], far=False, prob=0.0)
    assert clean == [A, A, B, B] and loss == [True, True, False, False]
    clean, loss = masks([A, B, A, A], far=False, prob=0.0)
    assert loss == [True, False, False, False]


def test_a_sequence_without_a_switch_trains_every_chunk_but_a_far_sinks_next_one():
    assert masks([A, A, A, A], far=False, prob=1.0) == ([A] * 4, [True] * 4)
    assert masks([A, A, A, A], far=True, prob=1.0) == ([A] * 4, [True, False, True, True])
    assert masks([A], far=False, prob=1.0) == ([A], [True])  # a first chunk alone


P = SequenceParams(n_chunks=3, chunk_frames=4, size=32, switch_prob=0.5, far_sink_prob=0.5)


def test_a_worker_draws_into_its_shared_slot_the_sequence_its_seed_gives():
    block = shared_memory.SharedMemory(create=True, size=3 * int(np.prod(P.frames_shape)))
    try:
        captions, far, track = _render_into(7, P, block.name, slot=1)
        slot = np.ndarray(P.frames_shape, np.uint8, buffer=block.buf, offset=block.size // 3)
        want = sample_sequence(np.random.default_rng(7), P)
        assert np.array_equal(slot, want.frames) and slot.any()
        assert captions == want.captions and far == want.far
        assert np.array_equal(track, want.track)
        del slot
    finally:
        block.close()
        block.unlink()


def test_render_workers_deliver_whole_distinct_sequences_until_closed():
    source = SequenceSource(np.random.default_rng(0), P, workers=1)
    try:
        first = source.take(3, wait=True)
        assert len(first) == 3
        assert all(s.frames.shape == P.frames_shape and len(s.captions) == 3 for s in first)
        kept = [s.frames.copy() for s in first]
        assert not np.array_equal(kept[0], kept[1])
        later = source.take(8, wait=True)  # all 8 slots: the first 3 are drawn into again
        assert len(later) == 8 and all(s.frames.any() for s in later)
        del first, later
    finally:
        source.close()
    assert source.pool is None


def test_the_pool_encodes_a_batch_as_it_would_encode_each_sequence_alone():
    model = VideoModel.from_seed(0, "micro")
    cfg = model.config
    p = SequenceParams(
        3,
        cfg.stream.chunk_latent_frames * cfg.vae.time_stride,
        cfg.stream.height,
        switch_prob=0.5,
        far_sink_prob=0.5,
    )
    rng = np.random.default_rng(0)
    seqs = [sample_sequence(rng, p) for _ in range(6)]
    assert {s.far for s in seqs} == {True, False}  # both kinds, in one batch
    pool = LatentPool(model, SequenceSource(rng, p), rng, SimpleNamespace(pool=0, dtype="bf16"))
    together = pool._encode(seqs)
    for seq, (z, idx, obj, far, track) in zip(seqs, together, strict=True):
        ((z1, idx1, obj1, far1, track1),) = pool._encode([seq])
        assert torch.allclose(z, z1, atol=1e-3) and far == far1 == seq.far
        assert torch.equal(idx, idx1) and torch.equal(obj, obj1) and len(idx) == 3
        assert torch.equal(track, track1) and track.shape == (z.shape[1], 4)


def test_dtype_fp32_keeps_the_trainers_matmuls_in_fp32():
    layer, x = torch.nn.Linear(4, 4), torch.randn(2, 4)
    with mixed_precision("cpu", "fp32"):
        assert layer(x).dtype == torch.float32
    with mixed_precision("cpu", "bf16"):
        assert layer(x).dtype == torch.bfloat16


def test_focus_motions_open_that_share_of_sequences_and_keep_held_out_triples_out():
    from model.tinyworld.captions import random_attributes
    from model.tinyworld.sequences import opening_attributes
    from model.tinyworld.spec import is_held_out

    def draws(p: SequenceParams, n: int = 700) -> list:
        rng = np.random.default_rng(3)
        return [opening_attributes(rng, p) for _ in range(n)]

    plain = draws(P)
    focused = draws(replace(P, focus_motions=("bouncing",), focus_prob=0.5))
    share = [sum(a.motion == "bouncing" for a in d) / len(d) for d in (plain, focused)]
    # uniform over 7 motions: 1/7; half the sequences forced: 1/2 + 1/14
    assert abs(share[0] - 1 / 7) < 0.05 and abs(share[1] - (0.5 + 1 / 14)) < 0.06
    assert not any(is_held_out(a.colour, a.shape, a.background) for a in focused)
    # no focus motions: the grammar's draw alone, number for number
    rng = np.random.default_rng(3)
    assert plain == [random_attributes(rng) for _ in plain]


def test_accumulated_micro_batches_give_the_gradient_of_their_mean_loss():
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 1)
    batches = [torch.randn(3, 4) for _ in range(3)]
    loss_of = [lambda x=x: layer(x).pow(2).mean() for x in batches]
    drawn = iter(loss_of)
    mean = accumulated_backward(lambda: next(drawn)(), 3)
    got = layer.weight.grad.clone()
    layer.weight.grad = None
    want = sum(f() for f in loss_of) / 3
    want.backward()
    assert torch.allclose(got, layer.weight.grad, atol=1e-6)
    assert abs(mean - want.item()) < 1e-6
    assert next(drawn, None) is None  # each micro-batch drawn once
