"""A PNG contact sheet (and optional GIF) of generated frames, for looking and the README.

    .venv/bin/python ops/contact_sheet.py --model runs/dit/model.safetensors -o sheet.png \
        --storyboard '[[0, "a big red circle bouncing over the ocean"], [2, "... snow"]]'
"""

from __future__ import annotations

import argparse
import json
from fractions import Fraction

import av
import numpy as np
import torch

from memory.stream import follow_timeline
from model.bundle import VideoModel
from model.sampler import add_sampling_options, use_sampling_options

DEFAULT = [
    [0, "a big red circle bouncing over the ocean"],
    [2, "a big red circle bouncing in the snow"],
    [4, "a small cyan ring moving left in the night"],
]


def write_png(path: str, image: np.ndarray) -> None:
    with av.open(path, "w", format="image2") as c:
        st = c.add_stream("png")
        st.width, st.height, st.pix_fmt = image.shape[1], image.shape[0], "rgb24"
        for p in st.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
            c.mux(p)
        for p in st.encode():
            c.mux(p)


def write_gif(path: str, frames: np.ndarray, fps: int = 24) -> None:
    with av.open(path, "w") as c:
        st = c.add_stream("gif", rate=fps)
        st.width, st.height, st.pix_fmt = frames.shape[2], frames.shape[1], "rgb8"
        st.time_base = Fraction(1, fps)
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24").reformat(format="rgb8")
            vf.pts = i
            for p in st.encode(vf):
                c.mux(p)
        for p in st.encode():
            c.mux(p)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="model/weights/tiny.safetensors")
    ap.add_argument("--storyboard", default=json.dumps(DEFAULT))
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--every", type=int, default=6, help="one frame in this many")
    ap.add_argument("--cols", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    add_sampling_options(ap)
    ap.add_argument("--gif", help="also write the frames as a GIF here")
    ap.add_argument("-o", "--output", default="sheet.png")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = VideoModel.load(args.model)
    use_sampling_options(model, args)
    timeline = [(float(a), p) for a, p in json.loads(args.storyboard)]
    frames = np.stack(list(follow_timeline(model, timeline, args.seconds, args.seed)))
    picked = frames[:: args.every]
    rows = -(-len(picked) // args.cols)
    h, w = frames.shape[1:3]
    sheet = np.zeros((rows * (h + 2), args.cols * (w + 2), 3), np.uint8)
    for i, f in enumerate(picked):
        r, c = divmod(i, args.cols)
        sheet[r * (h + 2) : r * (h + 2) + h, c * (w + 2) : c * (w + 2) + w] = f
    write_png(args.output, sheet)
    if args.gif:
        write_gif(args.gif, frames)


if __name__ == "__main__":
    main()
