"""Position jump at a resume point: how far the object moves between the last frame before
a stream's snapshot and the first frame its restored copy makes (an engine restart, or a
server started again on its --state-dir), against the same step in the original stream.

    .venv/bin/python ops/bench_resume.py --seeds 8 --chunk 6

For each seed and prompt: a stream of the shipped model runs `--chunk` chunks, its
snapshot goes through bytes (as it does to the server and to disk), a restored stream
makes the next chunk. In frame widths (fw), medians over the streams where the object is
read: `resume_jump` (last frame before, first frame after the restore), `natural_step`
(the same two frames of the original), `off_original` (restored vs original first frame).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from memory.snapshot import StreamSnapshot  # noqa: E402
from memory.stream import Stream  # noqa: E402
from model.bundle import VideoModel  # noqa: E402
from model.tinyworld.steadiness import object_track  # noqa: E402

PROMPTS = [
    "a big red circle bouncing over the ocean",
    "a small blue square moving left in the snow",
    "a big yellow triangle circling in the desert",
]


def wrap_distance(a, b) -> float:
    dx, dy = (abs(u - v) % 1.0 for u, v in zip(a, b, strict=True))
    return math.hypot(min(dx, 1 - dx), min(dy, 1 - dy))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--chunk", type=int, default=6, help="restore before this chunk")
    args = p.parse_args()
    model = VideoModel.load_default(torch.float32)
    rows = {"resume_jump": [], "natural_step": [], "off_original": []}
    sizes, restore_ms = [], []
    for seed in range(args.seeds):
        for prompt in PROMPTS:
            orig = Stream(model, prompt, seed=seed)
            last = None
            for _ in range(args.chunk):
                last = orig.next_chunk()
            data = orig.snapshot().to_bytes()
            sizes.append(len(data))
            t0 = time.perf_counter()
            restored = Stream.restore(model, StreamSnapshot.from_bytes(data))
            restore_ms.append((time.perf_counter() - t0) * 1e3)
            same, after = orig.next_chunk(), restored.next_chunk()
            before, o, r = object_track([last[-1], same[0], after[0]])
            if np.isnan([*before, *o, *r]).any():
                continue
            rows["resume_jump"].append(wrap_distance(before, r))
            rows["natural_step"].append(wrap_distance(before, o))
            rows["off_original"].append(wrap_distance(o, r))
    out = {k: round(statistics.median(v), 4) for k, v in rows.items() if v}
    out.update(
        streams=args.seeds * len(PROMPTS),
        read=len(rows["resume_jump"]),
        p90_resume_jump=round(float(np.percentile(rows["resume_jump"], 90)), 4),
        snapshot_bytes=int(statistics.median(sizes)),
        restore_ms=round(statistics.median(restore_ms), 1),
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
