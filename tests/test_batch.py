"""The batched executor: several streams' chunks in one forward pass per step give each
stream what it gets alone."""

from __future__ import annotations

import torch
from conftest import prompt_sensitive

from memory.batch import batch_key, denoise_together
from memory.stream import Stream
from model.bundle import VideoModel

PROMPTS = [
    "a big red circle bouncing over the ocean",
    "a small blue square moving left in the snow",
    "a big yellow triangle circling in the desert",
]


def micro(**sampling) -> VideoModel:
    model = VideoModel.from_seed(0, "micro").set_dtype(torch.float32)
    return prompt_sensitive(model).with_sampler(**sampling)


def advance(stream: Stream, chunks: int) -> Stream:
    for _ in range(chunks):
        stream.next_chunk()
    return stream


def test_batched_chunks_equal_each_stream_alone():
    """Three streams (other prompts, seeds, histories) denoised together give the latents
    each gives alone, and committing them continues each stream as before."""
    model = micro()
    streams = [advance(Stream(model, p, seed=i), 3) for i, p in enumerate(PROMPTS)]
    plans = [s.plan() for s in streams]
    assert len({batch_key((s, p)) for s, p in zip(streams, plans, strict=True)}) == 1
    alone = [s.denoise(p) for s, p in zip(streams, plans, strict=True)]
    together = denoise_together(list(zip(streams, plans, strict=True)))
    for a, b in zip(alone, together, strict=True):
        assert a.shape == b.shape
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    differ = (together[0] - together[1]).abs().max()
    assert differ > 1e-2  # the streams are not one stream repeated


def test_guided_and_unguided_streams_share_a_batch():
    """A stream just switched (guided: two rows a step) batches with unguided ones and each
    gets its own guidance."""
    model = micro(guidance=3.0, guidance_chunks=1)
    streams = [advance(Stream(model, p, seed=i), 3) for i, p in enumerate(PROMPTS)]
    streams[1].set_prompt("a small green ring standing still in the night")
    plans = [s.plan() for s in streams]
    assert streams[1].guided(plans[1].chunk) and not streams[0].guided(plans[0].chunk)
    alone = [s.denoise(p) for s, p in zip(streams, plans, strict=True)]
    together = denoise_together(list(zip(streams, plans, strict=True)))
    for a, b in zip(alone, together, strict=True):
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()


def test_streams_with_other_context_lengths_run_in_their_own_batch():
    """A new stream (no context yet) and a running one are grouped apart, and both still
    get their own result."""
    model = micro()
    old, new = advance(Stream(model, PROMPTS[0]), 3), Stream(model, PROMPTS[1], seed=5)
    jobs = [(old, old.plan()), (new, new.plan())]
    assert batch_key(jobs[0]) != batch_key(jobs[1])
    together = denoise_together(jobs)
    for (s, p), b in zip(jobs, together, strict=True):
        assert torch.allclose(s.denoise(p), b, atol=1e-5)


def test_a_wrong_batch_would_be_seen():
    """Negative control: swapping two streams' contexts changes their results, so the
    equality above pins down that each stream attends to its own cache."""
    model = micro()
    streams = [advance(Stream(model, p, seed=i), 3) for i, p in enumerate(PROMPTS[:2])]
    plans = [s.plan() for s in streams]
    plans[0].context, plans[1].context = plans[1].context, plans[0].context
    swapped = denoise_together(list(zip(streams, plans, strict=True)))
    plans[0].context, plans[1].context = plans[1].context, plans[0].context
    right = [s.denoise(p) for s, p in zip(streams, plans, strict=True)]
    assert (swapped[0] - right[0]).abs().max() > 1e-3


def test_committing_together_continues_each_stream_as_alone():
    """Streams run a few rounds with the batched executor (denoise and commit) show the
    frames and hold the caches that the same streams made one by one do."""
    from memory.batch import commit_together

    model = micro()
    alone = [Stream(model, p, seed=i) for i, p in enumerate(PROMPTS)]
    together = [Stream(model, p, seed=i) for i, p in enumerate(PROMPTS)]
    together[2].next_chunk()  # one stream ahead: its context length differs
    alone[2].next_chunk()
    for _ in range(3):
        expected = [s.next_chunk() for s in alone]
        jobs = [(s, s.plan()) for s in together]
        frames = commit_together(jobs, denoise_together(jobs))
        for a, b in zip(expected, frames, strict=True):
            assert a.shape == b.shape
            assert abs(a.astype(int) - b.astype(int)).max() <= 1
    for a, b in zip(alone, together, strict=True):
        assert a.chunk_index == b.chunk_index and a.cache.head == b.cache.head
        assert torch.allclose(a.cache.k, b.cache.k, atol=1e-4)
        assert torch.allclose(a.cache.latents, b.cache.latents, atol=1e-4)


def test_a_stopped_chunk_leaves_the_batch_at_the_next_step():
    """`stop` drops a job before its next denoising step (a switch made it stale): it
    gets no result, it costs no more model calls, and the others still get theirs."""
    model = micro()
    streams = [advance(Stream(model, p, seed=i), 3) for i, p in enumerate(PROMPTS[:2])]
    jobs = [(s, s.plan()) for s in streams]
    asked: list[int] = []

    def stop(i: int) -> bool:
        asked.append(i)
        return i == 1 and asked.count(1) > 2  # job 1 is stopped before its third step

    calls = []
    dit = model.dit
    hook = dit.register_forward_hook(lambda m, a, out: calls.append(a[0].shape[0]))
    try:
        out = denoise_together(jobs, stop)
    finally:
        hook.remove()
    assert out[1] is None and torch.allclose(out[0], streams[0].denoise(jobs[0][1]), atol=1e-5)
    steps = streams[0].steps
    assert calls == [2, 2] + [1] * (steps - 2)  # two steps together, then job 0 alone
