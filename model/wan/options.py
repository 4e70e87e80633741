"""The command-line options that go with `--model` on every tool that loads a model."""

from __future__ import annotations

import argparse


def add_wan_options(p: argparse.ArgumentParser) -> None:
    """`--base DIR`, `--lora LORA`, `--size WxH`, `--device DEV`."""
    p.add_argument(
        "--base",
        metavar="DIR",
        help="the Wan2.1 T2V base (diffusers or original layout) whose VAE and text encoder "
        "a causal checkpoint uses",
    )
    p.add_argument("--lora", metavar="LORA", help="a LoRA merged into the denoiser (LongLive's)")
    p.add_argument(
        "--size",
        metavar="WxH",
        help="frame size, e.g. 832x480: multiples of 16 (default: the model's; tiny 128x128)",
    )
    p.add_argument(
        "--device",
        default="auto",
        help="where a Wan2.1 model runs: auto (a CUDA GPU when there is one, else the CPU), "
        "cpu, cuda, cuda:N (default %(default)s; the tiny model runs on the CPU)",
    )
