"""`endless serve`: run the live server (websocket control + WebRTC video) until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

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
    p.add_argument(
        "--engine",
        choices=["local", "ray"],
        default=d.engine,
        help="local: the model in one supervised process; ray: streams on Ray actors, one "
        "model per GPU worker, on any machine of a Ray cluster (default %(default)s)",
    )
    p.add_argument(
        "--workers", type=int, default=d.workers, help="--engine ray: model workers (default 2)"
    )
    p.add_argument(
        "--ray-address",
        default=d.ray_address,
        help="--engine ray: join the Ray cluster at ADDR (default: start a local one on 127.0.0.1)",
    )
    p.add_argument(
        "--gpus-per-worker",
        type=float,
        default=d.gpus_per_worker,
        help="--engine ray: GPUs each worker asks Ray for (fractions share one; default 1)",
    )
    add_dtype_option(p, default=d.dtype)
    add_sampling_options(p)  # for every stream
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
        engine=args.engine,
        workers=args.workers,
        ray_address=args.ray_address,
        gpus_per_worker=args.gpus_per_worker,
        dtype=args.dtype,
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
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
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
    return 0
