"""Full-size Wan2.1-1.3B streaming benchmark with random weights (no download).

    ops/bench_gpu.sh                                   # one GPU, under 10 minutes
    .venv/bin/python ops/bench_gpu.py --device cpu --size 128x64 --layers 2 --dim 128 \
        --heads 2 --text-layers 1 --text-dim 64 --vae-dim 8 --minutes 0.2 --mark 6

Builds the whole engine as `endless serve --model longlive:...` runs it, with random
weights of the published sizes: our WanModel (Wan2.1-T2V-1.3B: 30 layers, width 1536, 12
heads), diffusers' AutoencoderKLWan (Wan2.1's VAE) decoded chunk by chunk with its cache,
and transformers' UMT5EncoderModel at umT5-XXL's size (24 layers, width 4096) with a word
tokenizer standing in for umT5's SentencePiece one (tokenising costs nothing next to the
encoder). It streams the family's preset (default LongLive: 3 latent frames a chunk, 4
steps, sink 3 + window 6) at 832x480 in bf16 with SDPA, switching the prompt every
`--switch-every` chunks, and prints JSON:
  fps_end_to_end     video frames per second of wall time, everything included
  fps_denoise        video frames per second of the denoise stage alone
  ttff_s             time to first frame: stream creation (prompt encoding) to the first
                     chunk's frames
  switch_ms          median time from a prompt switch to the next chunk's frames
                     (encoding, re-cache, the chunk)
  memory             device memory (allocated / reserved, GiB; host RSS on the CPU) at
                     minute 1 and at the last minute of generated video
Stops at `--minutes` of video or after `--deadline` seconds of wall time, whichever first.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import zlib
from dataclasses import replace

import torch

from memory.stream import Stream
from model.bundle import VideoModel, parse_size
from model.config import PRESETS, ModelConfig, TextConfig, VAEConfig
from model.dit import WanModel
from model.precision import add_dtype_option, resolve_dtype
from model.wan.presets import FAMILIES, check_size

PROMPTS = [
    "a cat walking in the rain on a neon-lit street",
    "a red fox running through fresh snow in a pine forest",
    "waves crashing on black volcanic rocks at sunset",
    "a paper boat drifting down a gutter after a storm",
]


class WordTokenizer:
    """Stand-in for umT5's tokenizer: words hashed into the vocabulary, `</s>` (1) at the
    end, padding (0) to max_length; the call signature of a transformers tokenizer."""

    def __init__(self, vocab: int):
        self.vocab = vocab

    def __call__(self, texts, max_length: int, **_):
        ids = torch.zeros(len(texts), max_length, dtype=torch.long)
        for i, text in enumerate(texts):
            words = [3 + zlib.crc32(w.encode()) % (self.vocab - 3) for w in text.split()]
            row = (words[: max_length - 1] + [1])[:max_length]
            ids[i, : len(row)] = torch.tensor(row)
        return {"input_ids": ids, "attention_mask": (ids != 0).long()}


def random_umt5(args, device, dtype):
    """umT5's encoder at the asked size, random (normal 0.02, norms 1), built in place."""
    from transformers import UMT5Config, UMT5EncoderModel

    cfg = UMT5Config(
        vocab_size=args.vocab,
        d_model=args.text_dim,
        d_kv=64,
        d_ff=args.text_ff,
        num_layers=args.text_layers,
        num_heads=args.text_heads,
        feed_forward_proj="gated-gelu",
    )
    with torch.device("meta"):
        enc = UMT5EncoderModel(cfg).to(dtype)
    enc = enc.to_empty(device=device)
    g = torch.Generator(device=device).manual_seed(2)
    with torch.no_grad():
        for name, p in enc.named_parameters():
            if "layer_norm" in name:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=g)
    return enc.eval()


def build(args) -> VideoModel:
    from diffusers import AutoencoderKLWan

    from model.wan.text import UMT5TextEncoder
    from model.wan.vae import WanVAE

    device, dtype = torch.device(args.device), resolve_dtype(args.dtype)
    family = FAMILIES[args.family]
    width, height = parse_size(args.size)
    dit_cfg = replace(
        PRESETS["wan-1.3b"].dit,
        num_layers=args.layers,
        dim=args.dim,
        num_heads=args.heads,
        ffn_dim=args.ffn or PRESETS["wan-1.3b"].dit.ffn_dim * args.dim // 1536,
        text_dim=args.text_dim,
    )
    check_size(dit_cfg, height, width)
    torch.manual_seed(0)
    with torch.device(device):
        dit = WanModel(dit_cfg)
        vae = WanVAE(AutoencoderKLWan(base_dim=args.vae_dim).eval())
    text = UMT5TextEncoder(random_umt5(args, device, dtype), WordTokenizer(args.vocab))
    config = ModelConfig(
        name=args.family,
        vae=VAEConfig(z_dim=vae.z_dim, time_stride=vae.time_stride, space_stride=vae.space_stride),
        dit=dit_cfg,
        text=TextConfig(dim=args.text_dim),
        sampler=family.sampler,
        stream=replace(family.stream, width=width, height=height),
    )
    model = VideoModel(config, dtype, dit=dit, vae=vae, text=text)
    model.to(device)
    if args.compile:
        for block in model.dit.blocks:
            block.compile()
    return model


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def memory(device: torch.device) -> dict:
    if device.type == "cuda":
        return {
            "allocated_gib": round(torch.cuda.memory_allocated(device) / 2**30, 3),
            "reserved_gib": round(torch.cuda.memory_reserved(device) / 2**30, 3),
            "peak_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 3),
        }
    with open("/proc/self/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
    return {"rss_gib": round(rss / 2**20, 3)}


def run(model: VideoModel, args) -> dict:
    device = torch.device(args.device)
    fps = model.config.stream.fps
    t_start = time.perf_counter()
    stream = Stream(model, PROMPTS[0], seed=0)
    frames = denoise_s = 0.0
    chunk_ms, switch_ms, marks = [], [], {}
    first_frame = None
    k = 0
    next_mark = args.mark
    while frames / fps < args.minutes * 60 and time.perf_counter() - t_start < args.deadline:
        t0 = time.perf_counter()
        switched = k > 0 and k % args.switch_every == 0
        if switched:
            stream.set_prompt(PROMPTS[(k // args.switch_every) % len(PROMPTS)])
        plan = stream.plan()
        sync(device)
        t1 = time.perf_counter()
        latents = stream.denoise(plan)
        sync(device)
        denoise_s += time.perf_counter() - t1
        out = stream.commit(plan, latents)  # decoded frames on the host: synchronised
        t3 = time.perf_counter()
        if first_frame is None:
            first_frame = t3 - t_start
        (switch_ms if switched else chunk_ms).append((t3 - t0) * 1e3)
        frames += len(out)
        k += 1
        if frames / fps >= next_mark:
            marks[f"video_s_{int(next_mark)}"] = memory(device)
            next_mark = max(next_mark + args.mark, args.minutes * 60)
    wall = time.perf_counter() - t_start - first_frame
    marks["last"] = memory(device) | {"video_s": round(frames / fps, 1)}
    after_first = frames - stream.frames.first
    return {
        "fps_end_to_end": round(after_first / wall, 2) if wall > 0 else None,
        "fps_denoise": round(frames / denoise_s, 2),
        "ttff_s": round(first_frame, 3),
        "chunk_ms": round(statistics.median(chunk_ms), 1) if chunk_ms else None,
        "switch_ms": round(statistics.median(switch_ms), 1) if switch_ms else None,
        "chunks": k,
        "video_s": round(frames / fps, 1),
        "cache_bytes": stream.cache.nbytes,
        "memory": marks,
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--size", default="832x480", help="WIDTHxHEIGHT")
    p.add_argument("--family", default="longlive", choices=sorted(FAMILIES))
    p.add_argument("--layers", type=int, default=30, help="denoiser blocks (Wan-1.3B: 30)")
    p.add_argument("--dim", type=int, default=1536, help="denoiser width (Wan-1.3B: 1536)")
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--ffn", type=int, default=0, help="FFN width (0: Wan's 8960 scaled by dim)")
    p.add_argument("--text-layers", type=int, default=24, help="umT5 layers (XXL: 24)")
    p.add_argument("--text-dim", type=int, default=4096, help="umT5 width (XXL: 4096)")
    p.add_argument("--text-ff", type=int, default=0, help="umT5 FFN (0: 2.5 x width)")
    p.add_argument("--text-heads", type=int, default=0, help="umT5 heads (0: width / 64)")
    p.add_argument("--vocab", type=int, default=256384, help="umT5 vocabulary")
    p.add_argument("--vae-dim", type=int, default=96, help="Wan VAE base width (Wan2.1: 96)")
    p.add_argument("--minutes", type=float, default=10.0, help="minutes of video to make")
    p.add_argument("--deadline", type=float, default=540.0, help="wall-clock limit, seconds")
    p.add_argument("--mark", type=float, default=60.0, help="memory every N s of video")
    p.add_argument("--switch-every", type=int, default=20, help="chunks between switches")
    p.add_argument("--compile", action="store_true", help="torch.compile each DiT block")
    p.add_argument("--out", help="also write the JSON here")
    add_dtype_option(p)
    args = p.parse_args(argv)
    args.text_ff = args.text_ff or args.text_dim * 5 // 2
    args.text_heads = args.text_heads or max(1, args.text_dim // 64)
    t0 = time.perf_counter()
    model = build(args)
    sync(torch.device(args.device))
    build_s = time.perf_counter() - t0
    with torch.no_grad():
        result = run(model, args)
    result |= {
        "build_s": round(build_s, 1),
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "dtype": str(model.dtype).removeprefix("torch."),
        "family": args.family,
        "size": args.size,
        "layers": args.layers,
        "compile": args.compile,
        "threads": torch.get_num_threads(),
    }
    text = json.dumps(result)
    print(text, flush=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return result


if __name__ == "__main__":
    main()
