"""The invisible watermark: embed -> codecs -> detect, payload integrity, no false alarms."""

from __future__ import annotations

import numpy as np
import pytest

from model.tinyworld.render import render_clip
from server.provenance.payload import Payload
from server.provenance.roundtrip import h264, vp8
from server.provenance.watermark import Z_FOUND, Watermarker, decode_bits, detect_frames

PAYLOAD = Payload.make("test-server", "abcd1234", 1_790_000_000)


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return render_clip("a big magenta triangle moving down in the ocean", 2.0, seed=1)


def test_payload_bits_round_trip_and_a_flipped_bit_fails_the_crc():
    """72 coded bits decode to the same payload; any single flipped bit is caught by the CRC."""
    bits = PAYLOAD.bits()
    assert bits.shape == (72,) and Payload.from_bits(bits) == PAYLOAD
    for i in range(72):
        flipped = bits.copy()
        flipped[i] ^= 1
        assert Payload.from_bits(flipped) is None


def test_chase_decoding_repairs_the_least_certain_bits():
    """Soft values with two wrong but weak bits still decode to the payload."""
    soft = (PAYLOAD.bits().astype(float) * 2 - 1) * 3.0
    soft[[5, 40]] *= -0.1  # wrong sign, low confidence
    assert decode_bits(soft) == PAYLOAD
    soft[7] = -soft[7]  # a confident wrong bit: not repaired, and not mistaken for another
    assert decode_bits(soft) != PAYLOAD


def test_mark_survives_vp8_at_500k_then_h264_crf26_from_2_seconds(clip):
    """2 s of marked frames through the live codec (VP8 500 kbit/s) and an H.264 crf 26
    re-encode still give the exact payload, well above the detection threshold."""
    marked = Watermarker().mark(clip, PAYLOAD)
    found = detect_frames(h264(vp8(marked)))
    assert found.found and found.payload == PAYLOAD
    assert found.z > Z_FOUND + 2


def test_mark_is_small_psnr_above_34_db(clip):
    """The mark changes frames by little: PSNR of marked against unmarked above 34 dB
    (a textured ocean clip: the mark is strongest where texture hides it)."""
    marked = Watermarker().mark(clip, PAYLOAD)
    mse = np.mean((marked.astype(np.float64) - clip) ** 2)
    assert 10 * np.log10(255**2 / mse) > 34


def test_unmarked_videos_are_not_detected():
    """Renderer clips, noise and flat frames through H.264: never found, z far below threshold."""
    rng = np.random.default_rng(0)
    clips = [
        render_clip("a small blue circle moving left in the night", 2.0, seed=3),
        render_clip("a big yellow ring circling in the forest", 2.0, seed=4),
        rng.integers(0, 256, (48, 128, 128, 3), dtype=np.uint8),
        np.full((48, 96, 160, 3), 128, np.uint8),
    ]
    for c in clips:
        result = detect_frames(h264(c))
        assert not result.found and result.payload is None
        assert result.z < Z_FOUND - 2


def test_another_key_does_not_find_the_mark(clip):
    """The sync word and patterns come from the key: a different key finds nothing."""
    marked = Watermarker().mark(clip, PAYLOAD)
    assert not detect_frames(marked, key=b"someone else's key").found
