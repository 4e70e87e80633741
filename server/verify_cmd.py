"""`endless verify FILE`: is this video endless's? The watermark's payload and the C2PA manifest.

Prints one JSON object. Exit status: 0 the watermark was found, 1 it was not, 2 the file
could not be read.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import av

from model.errors import EndlessError
from server.provenance.c2pa_sign import read_manifest
from server.provenance.watermark import Detector


class VerifyError(EndlessError):
    code = "bad_file"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="a video file (MP4, WebM, ...)")
    p.add_argument(
        "--seconds",
        type=float,
        default=30.0,
        help="read at most this much video from the start (default %(default)s; 2 s suffice)",
    )


def detect_file(path: str | Path, seconds: float = 30.0) -> dict:
    """The watermark detection on the first `seconds` of a video file, as a dict."""
    det = Detector()
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            rate = float(stream.average_rate or stream.guessed_rate or 24)
            limit = max(1, round(seconds * rate))
            for frame in container.decode(stream):
                det.add(frame.to_ndarray(format="rgb24"))
                if det.frames >= limit:
                    break
    except (OSError, IndexError, av.error.FFmpegError) as exc:
        raise VerifyError(f"cannot read a video from {path}: {exc}", value=str(path)) from None
    return det.result().as_dict()


def run(args: argparse.Namespace) -> int:
    if not Path(args.file).is_file():
        raise VerifyError(f"no file {args.file}", value=args.file)
    mark = detect_file(args.file, args.seconds)
    report = {"file": args.file, "watermark": mark, "c2pa": read_manifest(args.file)}
    print(json.dumps(report, indent=2))
    return 0 if mark["found"] else 1
