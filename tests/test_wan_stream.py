"""A Stream on Wan parts (tiny random denoiser, Wan VAE, umT5): frame counts from the VAE,
its decoder state kept per chunk, so a rewind regenerates the same frames."""

from __future__ import annotations

import numpy as np
import pytest
from wan_tiny import tiny_stream_model

from memory.stream import Stream, chunk_frames_of
from model.chunk_frames import ChunkFrames


@pytest.fixture(scope="module")
def model():
    return tiny_stream_model()


def test_chunks_hold_9_then_12_frames(model):
    """A stream's chunks hold 9, 12, 12 frames, as Stream.frames and the model say."""
    s = Stream(model, "a cat walking in the rain")
    counts = [len(s.next_chunk()) for _ in range(3)]
    assert counts == [9, 12, 12]
    assert s.frames == chunk_frames_of(model) == ChunkFrames(9, 12)


def test_a_rewind_restores_the_decoder_state_exactly(model):
    """Rewinding to chunk 1 and generating again gives chunks 1 and 2 bit for bit: the
    decoder starts again from the state it had after chunk 0, not from its latest."""
    s = Stream(model, "a dog running on the beach", seed=3)
    first = [s.next_chunk() for _ in range(3)]
    s.rewind(1)
    again = [s.next_chunk() for _ in range(2)]
    assert all(np.array_equal(a, b) for a, b in zip(first[1:], again, strict=True))


def test_free_text_prompt_switch_changes_what_follows(model):
    """Any words are a prompt: a switch after a rewind changes the frames from there on."""
    s = Stream(model, "a cat walking in the rain", seed=1)
    first = [s.next_chunk() for _ in range(2)]
    s.rewind(1)
    s.set_prompt("zebras juggling quantum pancakes", at_chunk=1)
    switched = s.next_chunk()
    assert switched.shape == first[1].shape and not np.array_equal(switched, first[1])
