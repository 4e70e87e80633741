"""Start from an image, measured: does the video continue the still it was given?

    .venv/bin/python ops/eval_image_start.py --images 32 --json runs/image_start.json

Each image is the first frame of a TinyWorld scene (all five attributes; even images on
held-out colour/shape/background triples, as ops/eval_model.py picks them), rendered at
`--image-size` and fitted to the stream's frame. The stream starts from it under a prompt
that says only the motion (`--say motion`, the default: colour, shape, size and background
must come from the image) or everything (`--say all`); as the product does, the prompt's
unsaid colour and shape are first read from the image (`--no-fill`: not). Measured on the
chunks after the image's own chunk:
- first chunk: each attribute read as the image has it, and the object's centre on the
  chunk's first frame within 0.1 frame widths of where the image has it;
- the following `--seconds` (4 s): the evaluator's adherence to the image's attributes
  with the prompt's motion, split held-out / seen;
- beside it, the same scenes from the text alone (the full caption, no image).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np
import torch

from memory.stream import Stream, prepare_start_image
from model.bundle import VideoModel
from model.precision import add_dtype_option, dtype_name, resolve_dtype
from model.sampler import add_sampling_options, use_sampling_options
from model.tinyworld.captions import evaluation_prompts
from model.tinyworld.evaluate import evaluate_frames
from model.tinyworld.reading import FrameReader
from model.tinyworld.render import World
from model.tinyworld.spec import (
    BACKGROUND_NAMES,
    COLOUR_NAMES,
    SHAPES,
    SIZE_NAMES,
    is_held_out,
    parse_prompt,
)

READ_NAMES = {
    "colour": COLOUR_NAMES,
    "shape": SHAPES,
    "size": SIZE_NAMES,
    "background": BACKGROUND_NAMES,
}
NEAR_FW = 0.1  # frame widths: "where the image has it"


def wrap_distance(a, b) -> float:
    dx, dy = (abs(u - v) % 1.0 for u, v in zip(a, b, strict=True))
    return math.hypot(min(dx, 1 - dx), min(dy, 1 - dy))


def start_image(prompt: str, seed: int, size: int):
    """(frame 0 of the scene at `size`, the object's centre there, the scene's attributes)."""
    world = World(parse_prompt(prompt).attributes, seed, size)
    (x, y), _ = world.state(0)
    return world.frame(0), (x % 1.0, y % 1.0), world.attributes


def first_chunk_reading(frames: np.ndarray, attrs) -> dict[str, bool]:
    """Whether the chunk's frames read as the image's attributes (majority vote)."""
    reader = FrameReader(frames.shape[1])
    reads = [reader.read(f) for f in frames]
    out = {}
    for name, words in READ_NAMES.items():
        votes = [getattr(r, name) for r in reads if getattr(r, name) >= 0]
        read = words[max(set(votes), key=votes.count)] if votes else None
        out[name] = read == getattr(attrs, name)
    return out


def centre_on(frame: np.ndarray):
    return FrameReader(frame.shape[0]).read(frame).centre


def one_image(model, i: int, prompt: str, args) -> dict:
    image, centre, attrs = start_image(prompt, args.seed + i, args.image_size)
    said = attrs.motion if args.say == "motion" else attrs.caption()
    if args.fill:  # what `endless render --image` and a live `create` do
        said, image = prepare_start_image(model, said, image)
    stream = Stream(model, said, seed=args.seed + i, image=image)
    fpc = stream.frames_per_chunk
    n = 1 + round(args.seconds * stream.fps / fpc)
    chunks = [stream.next_chunk() for _ in range(1 + n)]
    shown, first = chunks[0], chunks[1]
    found = centre_on(first[0])
    asked = attrs.caption()  # the image's attributes, the prompt's (the image's) motion
    after = np.concatenate(chunks[1:])
    report = evaluate_frames(list(after), [(0.0, asked)], fps=stream.fps, chunk_frames=fpc)
    text_report = report
    if args.text_baseline:
        text = Stream(model, asked, seed=args.seed + i)
        alone = np.concatenate([text.next_chunk() for _ in range(n)])
        text_report = evaluate_frames(list(alone), [(0.0, asked)], fps=stream.fps, chunk_frames=fpc)
    return {
        "prompt": said,
        "scene": asked,
        "held_out": is_held_out(attrs.colour, attrs.shape, attrs.background),
        "image_chunk": first_chunk_reading(shown, attrs),
        "first_chunk": first_chunk_reading(first, attrs),
        "centre_distance_fw": None if found is None else wrap_distance(found, centre),
        "adherence": report.adherence,
        "text_only_adherence": text_report.adherence,
        "chunks": report.chunks_scored,
    }


def mean(values) -> float | None:
    values = [float(v) for v in values if v is not None]
    return sum(values) / len(values) if values else None


def summary(rows: list[dict], args) -> dict:
    def rates(key: str) -> dict:
        names = rows[0][key].keys()
        return {n: mean(r[key][n] for r in rows) for n in names}

    def adherence(key: str, part: list[dict]) -> dict:
        names = ("colour", "shape", "size", "motion", "background", "all")
        total = sum(r["chunks"] for r in part)
        return {n: sum((r[key][n] or 0) * r["chunks"] for r in part) / max(1, total) for n in names}

    near = [r["centre_distance_fw"] for r in rows]
    held = [r for r in rows if r["held_out"]]
    return {
        "images": len(rows),
        "held_out_images": len(held),
        "image_chunk_reads": rates("image_chunk"),
        "first_chunk_reads": rates("first_chunk")
        | {"all": mean(all(r["first_chunk"].values()) for r in rows)},
        "first_chunk_object_within_0.1fw": mean(d is not None and d <= NEAR_FW for d in near),
        "first_chunk_centre_distance_median_fw": float(
            np.median([d for d in near if d is not None])
        )
        if any(d is not None for d in near)
        else None,
        "adherence": adherence("adherence", rows),
        "adherence_held_out": adherence("adherence", held),
        "adherence_seen": adherence("adherence", [r for r in rows if not r["held_out"]]),
        "text_only_adherence": adherence("text_only_adherence", rows)
        if args.text_baseline
        else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="model/weights/tiny.safetensors")
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--image-size", type=int, default=128, help="side the image is rendered at")
    ap.add_argument("--say", choices=("motion", "all"), default="motion")
    ap.add_argument(
        "--fill",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="complete the prompt's unsaid colour/shape from the image (as the product does)",
    )
    ap.add_argument(
        "--text-baseline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also generate each scene from its full caption alone",
    )
    ap.add_argument("--seconds", type=float, default=4.0, help="scored after the first chunk")
    ap.add_argument("--seed", type=int, default=0)
    add_sampling_options(ap)
    add_dtype_option(ap, default="bf16")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = VideoModel.load(args.model, resolve_dtype(args.dtype))
    use_sampling_options(model, args)
    t0 = time.time()
    prompts = evaluation_prompts(args.images, args.seed)
    rows = [one_image(model, i, p, args) for i, p in enumerate(prompts)]
    result = {
        "model": args.model,
        "dtype": dtype_name(model.dtype),
        "say": args.say,
        "image_size": args.image_size,
        **model.config.sampler.sampling(),
        "fill": args.fill,
        **summary(rows, args),
        "eval_seconds": round(time.time() - t0, 1),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result | {"per_image": rows}, f, indent=2)


if __name__ == "__main__":
    main()
