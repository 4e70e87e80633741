"""Remuxing without a server: the H.264 encode's access units into MP4 and HLS segments."""

from __future__ import annotations

import io

import av
import numpy as np

from server.fanout import SharedEncoder
from server.hls import HlsSegmenter
from server.output_metrics import OutputMetrics
from server.packets import H264Remuxer
from server.playout import ticks_per_frame

FPS = 24
TPF = ticks_per_frame(FPS)


def _frames(n: int, key_every: int | None = 48):
    """n encoded frames of a moving bar, as the server's H.264 encoder makes them."""
    enc = SharedEncoder("video/H264", 500_000, key_every or 10**9, TPF)
    for tick in range(n):
        image = np.zeros((128, 128, 3), np.uint8)
        image[:, (3 * tick) % 128] = 255
        yield enc, enc.encode(image, tick, tick, enc.plan_keyframe(tick, False))


def test_every_h264_frame_carries_its_access_unit_and_its_rtp_payloads_from_one_encode():
    """One encode gives both: Annex B NAL units (SPS/PPS before a keyframe) and payloads."""
    made = list(_frames(3))
    for _, frame in made:
        assert frame.payloads and frame.access_unit.startswith(b"\x00\x00\x00\x01")
        if frame.keyframe:
            assert frame.access_unit[4] & 0x1F == 7  # an SPS first
    assert made[0][1].keyframe and made[-1][0].encodes == 3  # one encode per frame


def test_access_units_remux_into_an_mp4_that_decodes_frame_for_frame():
    """120 frames remuxed into MP4 (no encoder opened) decode to 120 frames of 5 s."""
    out = io.BytesIO()
    remux = None
    for _, frame in _frames(120):
        remux = remux or H264Remuxer(out, "mp4", frame.access_unit)
        remux.write(frame.access_unit, frame.timestamp, frame.keyframe)
    remux.close()
    with av.open(io.BytesIO(out.getvalue())) as c:
        frames = list(c.decode(video=0))
        assert len(frames) == 120 and (frames[0].width, frames[0].height) == (128, 128)
        assert abs(c.duration / av.time_base - 5.0) < 0.05


class _Stream:
    """What a segmenter needs of a LiveStream."""

    class playout:
        ticks_per_frame = TPF

    def __init__(self):
        self.removed = False

    def remove_sink(self, sink) -> None:
        self.removed = True


async def test_hls_segments_are_cut_at_requested_keyframes_and_memory_stays_flat(monkeypatch):
    """A minute of frames: 1 s segments (a keyframe asked for each), only `keep` held,
    their bytes bounded; each segment is a decodable MPEG-TS of 24 frames."""
    from prometheus_client import CollectorRegistry

    # frames come faster than real time here: no wall-clock gap between keyframe requests
    monkeypatch.setattr("server.fanout.KEYFRAME_REQUEST_GAP", 0.0)

    stream = _Stream()
    hls = HlsSegmenter(stream, OutputMetrics(CollectorRegistry()), 1.0, keep=6)
    sizes = []
    for enc, frame in _frames(24 * 60, key_every=None):  # keyframes only when asked
        if hls.encoder is None:
            hls.encoder = enc
            enc.request_keyframe()
            continue
        hls.offer(frame)
        sizes.append(sum(len(s.data) for s in hls.segments))
    assert len(hls.segments) == 6 and hls.segments[-1].seq >= 50
    assert all(abs(s.seconds - 1.0) < 0.3 for s in hls.segments)
    assert max(sizes[-24 * 30 :]) <= 2 * max(sizes[24 * 10 : 24 * 20])  # flat, not growing
    with av.open(io.BytesIO(hls.segments[-1].data), format="mpegts") as c:
        assert len(list(c.decode(video=0))) == round(hls.segments[-1].seconds * FPS)
    playlist = hls.playlist("TOKEN")
    assert playlist.count("#EXTINF") == 4 and f"{hls.segments[-1].seq}.ts?token=TOKEN" in playlist
    assert not stream.removed
