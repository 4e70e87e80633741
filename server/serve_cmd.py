"""`endless serve`: run the live server (websocket control + WebRTC video) until Ctrl-C
or SIGTERM (a clean shutdown within 5 s; a second signal exits at once)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

import uvloop

from model.precision import add_dtype_option
from model.sampler import add_sampling_options, sampling_changes
from server.config import CODECS, ServerConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = ServerConfig()
    p.add_argument("--host", default=d.host, help="interface to bind (default %(default)s)")
    p.add_argument("--port", type=int, default=8765, help="port (0: any free one; default 8765)")
    p.add_argument(
        "--model",
        default=d.model,
        help='"tiny" (shipped weights; random init if absent), "random[:PRESET]", or a '
        "checkpoint path (default %(default)s)",
    )
    p.add_argument(
        "--codec",
        choices=list(CODECS),
        default=d.codec,
        help="preferred video codec (default %(default)s)",
    )
    p.add_argument(
        "--bitrate",
        type=int,
        default=d.bitrate,
        help="target bits/s per encode (default %(default)s)",
    )
    p.add_argument(
        "--keyframe-seconds",
        type=float,
        default=d.keyframe_seconds,
        help="keyframe at least this often (default %(default)s)",
    )
    p.add_argument(
        "--ahead",
        type=int,
        default=d.ahead_chunks,
        help="chunks generated ahead of playback (default %(default)s)",
    )
    p.add_argument("--max-streams", type=int, default=d.max_streams)
    p.add_argument(
        "--grace",
        type=float,
        default=d.grace_seconds,
        help="seconds an abandoned stream lives on (default %(default)s)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=d.torch_threads,
        help="torch threads of the model worker (default %(default)s)",
    )
    add_dtype_option(p, default=d.dtype)
    add_sampling_options(p)  # for every stream
    p.add_argument(
        "--state-dir",
        default=None,
        help="keep each stream's state here (every few seconds and at shutdown); a server "
        "started again on it brings the streams back",
    )
    p.add_argument("--log-level", default="INFO")


def config_from(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(
        host=args.host,
        port=args.port,
        model=args.model,
        codec=args.codec,
        bitrate=args.bitrate,
        keyframe_seconds=args.keyframe_seconds,
        ahead_chunks=args.ahead,
        max_streams=args.max_streams,
        grace_seconds=args.grace,
        torch_threads=args.threads,
        dtype=args.dtype,
        state_dir=args.state_dir,
        **sampling_changes(args),
    )


async def serve(config: ServerConfig) -> None:
    from server.app import LiveServer  # loads torch and aiortc: only when serving

    server = LiveServer(config)
    await server.start()
    print(f"endless: serving on {server.url}  (websocket {server.ws_url})", flush=True)
    print(f"endless: open {server.url} in a browser; metrics at {server.url}metrics", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():  # a second signal: exit at once
            print("endless: second signal: exiting now", flush=True)
            os._exit(130)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        await stop.wait()
    finally:
        print("endless: shutting down", flush=True)
        await server.close()


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    uvloop.run(serve(config_from(args)))
    # The shutdown above is complete (clients told, state and files written, peers and the
    # engine closed). The interpreter's own teardown with torch and aiortc loaded takes
    # seconds more, past the 5 s a shutdown may take: skip it.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
