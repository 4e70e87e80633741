"""`endless watch`: watch a live stream over WebRTC, send prompts, record to MP4.

    endless watch ws://127.0.0.1:8765/ws --prompt "a big red circle bouncing over the ocean" \
        --record out.mp4 --seconds 10 [--storyboard s.json] [--stream ID --token T]

Without --stream it creates a stream with --prompt (with --key, or ENDLESS_API_KEY, when
the server needs one) and prints its control and view tokens; with --stream it joins that
one with --token (a control token steers, a view token only watches) and sends --prompt
(if given) as a prompt switch. A storyboard file is a JSON list of
{"at": seconds, "prompt": "..."} (or {"items": [...]}). When stdin is a terminal, each
line typed is sent as a prompt.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
from pathlib import Path

from model.errors import StoryboardError

DEFAULT_PROMPT = "a big red circle bouncing over the ocean"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("url", help="websocket URL of the server, e.g. ws://127.0.0.1:8765/ws")
    p.add_argument("--prompt", help=f"prompt (creating: default {DEFAULT_PROMPT!r})")
    p.add_argument("--seed", type=int, default=0, help="seed of a created stream")
    p.add_argument("--stream", help="join this stream instead of creating one")
    p.add_argument("--token", help="the --stream's control or view token")
    p.add_argument("--key", help="the server's API key, to create (default: $ENDLESS_API_KEY)")
    p.add_argument("--storyboard", type=Path, help="JSON storyboard to play")
    p.add_argument("--record", type=Path, help="write the received video to this MP4 file")
    p.add_argument("--seconds", type=float, default=10.0, help="how long to watch")
    p.add_argument("--codec", choices=["vp8", "h264"], help="ask for this codec")


def read_storyboard(path: Path) -> list[dict]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise StoryboardError(f"cannot read storyboard {path}: {exc}", value=str(path)) from None
    items = data.get("items") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise StoryboardError(f"{path}: expected a list of {{at, prompt}} items", value=str(path))
    return items


def _read_lines(loop: asyncio.AbstractEventLoop, lines: asyncio.Queue) -> None:
    """stdin lines onto the queue ("" at the end). Runs in a daemon thread: a readline
    blocked at exit must not hold the process (an executor thread would be joined)."""
    try:
        for line in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line)
        loop.call_soon_threadsafe(lines.put_nowait, "")
    except RuntimeError:  # the loop has closed: nobody is listening any more
        return


async def _typed_prompts(session, stream: str) -> None:
    lines: asyncio.Queue[str] = asyncio.Queue()
    reader = threading.Thread(
        target=_read_lines, args=(asyncio.get_running_loop(), lines), daemon=True
    )
    reader.start()
    while True:
        line = await lines.get()
        if not line:
            return
        if line.strip():
            try:
                reply = await session.prompt(stream, line.strip())
                print(f"prompt applied from frame {reply['frame']}")
            except Exception as exc:  # report and keep watching
                print(f"prompt rejected: {exc}")


async def watch(args: argparse.Namespace) -> int:
    from client.session import LiveSession, Mp4Recorder  # aiortc: only when watching

    storyboard = read_storyboard(args.storyboard) if args.storyboard else None
    # a watch may last hours: keep only recent events and frames (memory stays flat)
    key = args.key or os.environ.get("ENDLESS_API_KEY") or None
    async with LiveSession(args.url, max_events=1000, key=key) as session:
        if args.stream:
            info = await session.join(args.stream, args.token)
            print(f"joined stream {args.stream} ({info['role']} token)")
            stream = args.stream
            if args.prompt:
                reply = await session.prompt(stream, args.prompt)
                print(f"prompt applied from frame {reply['frame']}")
        else:
            info = await session.create(args.prompt or DEFAULT_PROMPT, args.seed)
            stream = info["stream"]
            print(f"created stream {stream}")
            print(f"  control token (steers): {info['control_token']}")
            print(f"  view token (share to watch): {info['view_token']}")
        viewer = await session.watch(stream, codec=args.codec, keep_images=False, history=1)
        print(f"watching {stream} ({viewer.codec})")
        recorder = None
        if args.record:
            recorder = Mp4Recorder(
                str(args.record), info.get("fps", 24), info.get("ticks_per_frame", 3750)
            )
            viewer.on_frame.append(recorder.write)
        if storyboard:
            reply = await session.storyboard(stream, storyboard)
            for item in reply["items"]:
                print(f"  at {item['at']:.2f}s (frame {item['frame']}): {item['prompt']}")
        typed = None
        if sys.stdin.isatty():
            typed = asyncio.ensure_future(_typed_prompts(session, stream))
        t0 = time.monotonic()
        try:
            await asyncio.sleep(args.seconds)
        finally:
            if typed is not None:
                typed.cancel()
            if recorder is not None:
                recorder.close()
        n = viewer.received
        elapsed = time.monotonic() - t0
        print(f"received {n} frames in {elapsed:.1f}s ({n / max(elapsed, 1e-9):.1f} fps)")
        if recorder is not None:
            print(f"recorded {recorder.frames} frames to {args.record}")
    return 0


def run(args: argparse.Namespace) -> int:
    import uvloop

    return uvloop.run(watch(args))
