"""What the DiT trainer asks of the model: only states that inference makes."""

from __future__ import annotations

import torch

from ops.train_dit import recache_variant

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
