"""`endless render`: generate a video file offline from a prompt or a storyboard."""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import secrets
import sys
from pathlib import Path

from model.errors import RenderError
from model.precision import add_dtype_option
from model.sampler import add_sampling_options, use_sampling_options
from model.still import read_image_file
from model.storyboard import load_storyboard
from model.upscale import add_upscale_option, resolve_upscaler
from model.wan.options import add_wan_options
from server.offline import RenderProgress, check_duration, render_video, resolve_model
from server.provenance.c2pa_sign import ManifestInfo, sign_mp4, signer_config
from server.provenance.marking import StreamMarker
from server.provenance.options import add_provenance_options
from server.provenance.policy import PromptPolicy, PromptRefused

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", nargs="?", help='e.g. "a big red circle bouncing over the ocean"')
    p.add_argument("--storyboard", help='JSON file: [{"at": 0, "prompt": "..."}, ...]')
    p.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="video length (default 60, or 20 s past the storyboard's last item)",
    )
    p.add_argument("-o", "--output", required=True, help="output .mp4 path")
    p.add_argument(
        "--image",
        help="start from this PNG or JPEG (fitted to the frame; the video opens on it and "
        "continues it under the prompt)",
    )
    add_upscale_option(p)
    p.add_argument(
        "--seed", type=int, default=0, help="random seed: same seed, same video (default 0)"
    )
    add_sampling_options(p)
    p.add_argument(
        "--model",
        default="tiny",
        help="'tiny' (shipped), 'random:PRESET', a .safetensors path, or a Wan2.1 model: "
        "wan:DIR, self-forcing:CKPT, causvid:CKPT, longlive:CKPT (docs/models.md)",
    )
    add_wan_options(p)
    p.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="torch threads (default: every core, %(default)s here)",
    )
    add_dtype_option(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_provenance_options(p)
    p.add_argument("--no-c2pa", dest="c2pa", action="store_false", help="no C2PA manifest")


def progress_bar(p: RenderProgress) -> None:
    width = 30
    done = int(width * p.chunk / p.chunks)
    sys.stderr.write(
        f"\r[{'#' * done}{'.' * (width - done)}] {p.video_seconds:7.1f}s of video  "
        f"{p.chunk}/{p.chunks} chunks  realtime x{p.realtime_factor:.2f}"
    )
    sys.stderr.flush()


def check_policy(policy: PromptPolicy, timeline: list[tuple[float, str]], board: bool) -> None:
    """Every prompt of the timeline against the operator's policy, before any work."""
    for i, (_, text) in enumerate(timeline):
        try:
            policy.check(text)
        except PromptRefused as err:
            if board:
                err.message = f"storyboard item {i}: {err.message}"
            raise


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="endless render: %(levelname)s %(message)s")
    if (args.prompt is None) == (args.storyboard is None):
        raise RenderError("give either a PROMPT or --storyboard FILE (not both)")
    if args.storyboard is not None:
        timeline = load_storyboard(args.storyboard)
        if timeline[0][0] != 0:
            raise RenderError("the storyboard's first item must be at 0 seconds")
        seconds = args.seconds if args.seconds is not None else timeline[-1][0] + 20.0
    else:
        timeline = [(0.0, args.prompt)]
        seconds = 60.0 if args.seconds is None else args.seconds
    check_duration(seconds)
    out = Path(args.output)
    if out.suffix.lower() != ".mp4":
        raise RenderError(f"output must be an .mp4 file, got {out}", value=str(out))
    if not out.parent.exists():
        raise RenderError(f"output folder {out.parent} does not exist", value=str(out))
    if not os.access(out.parent, os.W_OK):
        raise RenderError(f"output folder {out.parent} is not writable", value=str(out))
    if args.prompt_policy:
        check_policy(PromptPolicy.load(args.prompt_policy), timeline, args.storyboard is not None)
    signer = signer_config(args.c2pa_key, args.c2pa_cert, args.state_dir) if args.c2pa else None
    image = read_image_file(args.image) if args.image is not None else None
    upscaler = resolve_upscaler(args.upscale)
    model = resolve_model(
        args.model, args.threads, args.dtype, args.base, args.lora, args.size, args.device
    )
    use_sampling_options(model, args)
    if not args.quiet:
        print(f"model: {model.description}", file=sys.stderr)
    for _, text in timeline:
        model.text.check(text)
    started = dt.datetime.now(dt.UTC)
    render_id = secrets.token_hex(4)
    marker = StreamMarker(args.server_name) if args.watermark else None
    if marker is None:
        log.warning("watermark OFF (--no-watermark): %s will carry no provenance mark", out)
    result = render_video(
        model,
        timeline,
        seconds,
        out,
        seed=args.seed,
        on_progress=None if args.quiet else progress_bar,
        mark=None if marker is None else lambda frames: marker.mark(render_id, frames),
        image=image,
        upscaler=upscaler,
    )
    if not args.quiet:
        sys.stderr.write("\n")
    extra = {"seed": args.seed, "prompts": [[at, text] for at, text in timeline]}
    if image is not None:
        extra["start_image"] = os.path.basename(args.image)
        extra["prompts"][0][1] = result.prompt  # as used: completed from the image
        print(f"started from {args.image} with the prompt {result.prompt!r}")
    if upscaler is not None:
        extra["upscale"] = upscaler.scale
    if marker is not None:
        extra["watermark"] = marker.payload(render_id).as_dict()
        print(f"watermark: {extra['watermark']}")
    if signer is not None:
        sign_mp4(out, ManifestInfo(args.model, started, extra=extra), signer)
        dev = " (a development key)" if signer.development else ""
        print(f"C2PA manifest signed with {signer.cert}{dev}")
    print(
        f"wrote {result.path} ({result.frames} frames of {result.width}x{result.height}, "
        f"{result.video_seconds:.1f} s) in "
        f"{result.wall_seconds:.1f} s: realtime x{result.realtime_factor:.2f}"
    )
    return 0
