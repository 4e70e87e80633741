"""Engine -> server frame transport: the cost per frame of the shared-memory FrameRing (as
the server uses it: a child process writes chunks, the server copies them out) against
sending the frames through the pipe, and against the VP8 encode each shown frame costs.

    .venv/bin/python ops/bench_engine_ipc.py                 # tiny: 12 x 128 x 128
    .venv/bin/python ops/bench_engine_ipc.py --frames 81 --height 480 --width 832

Prints one JSON object: microseconds per frame for each transport (end to end, child to
server, in a steady stream of chunks) and for the encode.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from server.frame_ring import FrameRing  # noqa: E402


def _writer(conn, ring_args, free, shape, chunks: int, use_ring: bool) -> None:
    frames = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    ring = FrameRing.attach(*ring_args) if use_ring else None
    conn.recv()  # go
    for k in range(chunks):
        if ring is not None:
            free.acquire()
            conn.send(("chunk", k, ring.write(frames), frames.shape))
        else:
            conn.send(("chunk", k, None, frames))
    conn.send(("done",))
    if ring is not None:
        ring.close()


def transport_us_per_frame(shape, chunks: int, use_ring: bool) -> float:
    ctx = mp.get_context("spawn")
    slot = int(np.prod(shape))
    ring = FrameRing.create(4, slot)
    free = ctx.Semaphore(4)
    ours, theirs = ctx.Pipe()
    proc = ctx.Process(
        target=_writer, args=(theirs, (ring.name, 4, slot), free, shape, chunks, use_ring)
    )
    proc.start()
    ours.send("go")
    t0 = time.perf_counter()
    while (msg := ours.recv())[0] != "done":
        if use_ring:
            out = ring.read(msg[2], msg[3])
            free.release()
        else:
            out = msg[3]
        assert out.shape == shape
    elapsed = time.perf_counter() - t0
    proc.join()
    ring.close()
    return elapsed / (chunks * shape[0]) * 1e6


def encode_us_per_frame(shape, n: int) -> float:
    from server.fanout import SharedEncoder

    enc = SharedEncoder("video/VP8", 500_000, 48, 3750)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, shape[1:], dtype=np.uint8)
    t0 = time.perf_counter()
    for i in range(n):
        image = np.roll(base, i, axis=1)  # moving content, as a stream has
        enc.encode(image, i, i, i == 0)
    return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=12, help="frames per chunk")
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--chunks", type=int, default=200)
    args = p.parse_args()
    shape = (args.frames, args.height, args.width, 3)
    result = {
        "chunk_shape": list(shape),
        "ring_us_per_frame": round(transport_us_per_frame(shape, args.chunks, True), 1),
        "pipe_us_per_frame": round(transport_us_per_frame(shape, args.chunks, False), 1),
        "vp8_encode_us_per_frame": round(encode_us_per_frame(shape, 96), 1),
    }
    result["ring_over_encode"] = round(
        result["ring_us_per_frame"] / result["vp8_encode_us_per_frame"], 4
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
