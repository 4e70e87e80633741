"""Frames through the codecs a marked video meets on its way back to `endless verify`.

Used by the watermark's tests and benchmark: the live server's VP8 (aiortc's encoder at
its bitrate, RTP payloads, decoder) and an H.264 re-encode such as a screen capture or a
re-upload makes (libx264 through PyAV). uint8 (T, H, W, 3) RGB in and out.
"""

from __future__ import annotations

import fractions
import io

import av
import numpy as np
from aiortc import RTCRtpCodecParameters
from aiortc.codecs import get_decoder, get_encoder
from aiortc.codecs.vpx import vp8_depayload
from aiortc.jitterbuffer import JitterFrame


def h264(frames: np.ndarray, crf: int = 26) -> np.ndarray:
    """An MP4 encode at `crf` (libx264, veryfast, yuv420p, 24 fps) decoded again."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=24)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        s.options = {"crf": str(crf), "preset": "veryfast"}
        for rgb in frames:
            c.mux(s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")))
        c.mux(s.encode())
    buf.seek(0)
    with av.open(buf) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def vp8(frames: np.ndarray, bitrate: int = 500_000, keyframe_every: int = 48) -> np.ndarray:
    """aiortc's VP8 encoder at `bitrate` (the live server's 500 kbit/s by default), its RTP
    payloads depacketised and decoded, a key frame every `keyframe_every` frames."""
    params = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000)
    enc, dec = get_encoder(params), get_decoder(params)
    enc.target_bitrate = bitrate
    out = []
    for i, rgb in enumerate(frames):
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        vf.pts, vf.time_base = i * 3750, fractions.Fraction(1, 90000)
        payloads, ts = enc.encode(vf, i % keyframe_every == 0)
        data = b"".join(vp8_depayload(p) for p in payloads)
        out += [f.to_ndarray(format="rgb24") for f in dec.decode(JitterFrame(data, ts))]
    return np.stack(out)
