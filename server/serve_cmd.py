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
from model.upscale import add_upscale_option
from model.wan.options import add_wan_options
from server.auth import is_loopback
from server.config import CODECS, ServerConfig
from server.provenance.options import add_provenance_options
from server.thread_choice import default_solo_threads


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = ServerConfig()
    p.add_argument("--host", default=d.host, help="interface to bind (default %(default)s)")
    p.add_argument("--port", type=int, default=8765, help="port (0: any free one; default 8765)")
    p.add_argument(
        "--model",
        default=d.model,
        help='"tiny" (shipped weights; random init if absent), "random[:PRESET]", a '
        "checkpoint path, or a Wan2.1 model: wan:DIR, self-forcing:CKPT, causvid:CKPT, "
        "longlive:CKPT (docs/models.md; default %(default)s)",
    )
    add_wan_options(p)
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
    p.add_argument(
        "--max-streams",
        type=int,
        default=d.max_streams,
        help="streams this server runs at once (default %(default)s)",
    )
    p.add_argument(
        "--max-streams-per-key",
        type=int,
        default=d.max_streams_per_key,
        help="streams one API key (with no key: one connection) runs at once (default %(default)s)",
    )
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
        "--solo-threads",
        type=int,
        default=default_solo_threads(),
        metavar="N",
        help="torch threads of the model worker while it runs a single stream, used where "
        "they measure faster than --threads (default %(default)s on this machine)",
    )
    p.add_argument(
        "--api-key",
        action="append",
        metavar="KEY",
        help="creating a stream needs this key (repeatable; or set ENDLESS_API_KEY, which "
        "keeps it out of the process list); needed to bind beyond loopback",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="bind beyond loopback without an API key (anyone who reaches it may create)",
    )
    p.add_argument(
        "--ice-address",
        action="append",
        metavar="ADDR",
        help="offer WebRTC candidates on this IP address (repeatable; default: the --host "
        "address, every address for 0.0.0.0)",
    )
    p.add_argument(
        "--record-dir",
        default=d.record_dir,
        help="where recordings are written (default %(default)s)",
    )
    p.add_argument(
        "--osc-port", type=int, default=None, help="UDP port for OSC control (default: off)"
    )
    p.add_argument(
        "--osc-host",
        default=d.osc_host,
        help="interface for OSC (default %(default)s; beyond loopback needs --osc-key)",
    )
    p.add_argument(
        "--osc-key",
        default=None,
        help="the first argument every OSC message must carry (needed beyond loopback)",
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=d.max_batch,
        help="streams whose chunks share one forward pass (default %(default)s; 1: one at a time)",
    )
    p.add_argument(
        "--no-degrade",
        dest="degrade",
        action="store_false",
        help="keep every chunk at the model's steps even when the engine falls behind "
        "(default: fewer steps, then new streams refused with busy; docs/operations.md)",
    )
    p.add_argument(
        "--min-steps",
        type=int,
        default=d.min_steps,
        help="the fewest denoising steps an overloaded engine degrades to (default: half "
        "the model's)",
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
    add_upscale_option(p, default=d.upscale)
    add_sampling_options(p)  # for every stream
    add_provenance_options(p)
    p.add_argument(
        "--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default INFO)"
    )


def api_keys(args: argparse.Namespace) -> tuple[str, ...]:
    """--api-key values, then ENDLESS_API_KEY's (empty ones dropped)."""
    keys = [*(args.api_key or ()), os.environ.get("ENDLESS_API_KEY", "")]
    return tuple(dict.fromkeys(k for k in keys if k))


def config_from(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(
        host=args.host,
        api_keys=api_keys(args),
        insecure=args.insecure,
        ice_addresses=tuple(args.ice_address) if args.ice_address else None,
        port=args.port,
        model=args.model,
        base=args.base,
        lora=args.lora,
        size=args.size,
        device=args.device,
        codec=args.codec,
        bitrate=args.bitrate,
        keyframe_seconds=args.keyframe_seconds,
        ahead_chunks=args.ahead,
        max_streams=args.max_streams,
        max_streams_per_key=args.max_streams_per_key,
        grace_seconds=args.grace,
        torch_threads=args.threads,
        solo_threads=args.solo_threads,
        max_batch=args.max_batch,
        degrade=args.degrade,
        min_steps=args.min_steps,
        engine=args.engine,
        workers=args.workers,
        ray_address=args.ray_address,
        gpus_per_worker=args.gpus_per_worker,
        dtype=args.dtype,
        upscale=args.upscale,
        watermark=args.watermark,
        server_name=args.server_name,
        prompt_policy=args.prompt_policy,
        c2pa_key=args.c2pa_key,
        c2pa_cert=args.c2pa_cert,
        state_dir=args.state_dir,
        record_dir=args.record_dir,
        osc_port=args.osc_port,
        osc_host=args.osc_host,
        osc_key=args.osc_key,
        **sampling_changes(args),
    )


async def serve(config: ServerConfig) -> None:
    from server.app import LiveServer  # loads torch and aiortc: only when serving

    server = LiveServer(config)
    await server.start()
    print(f"endless: serving on {server.url}  (websocket {server.ws_url})", flush=True)
    print(f"endless: open {server.url} in a browser; metrics at {server.url}metrics", flush=True)
    if config.api_keys:
        print("endless: creating a stream needs the API key", flush=True)
    elif not is_loopback(config.host):
        print(f"endless: warning: serving {config.host} with no API key (--insecure)", flush=True)
    if server.outputs.osc is not None:
        host = config.osc_host
        print(f"endless: OSC control on udp {host}:{server.outputs.osc.port}", flush=True)
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
