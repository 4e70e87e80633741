"""Reconstruction quality of the VAE: PSNR and evaluator adherence of decoded clips.

    .venv/bin/python ops/eval_vae.py --vae runs/vae/last.safetensors --clips 20
    .venv/bin/python ops/eval_vae.py --vae model/weights/tiny.safetensors  # a whole model

Renders evaluation prompts with the TinyWorld renderer, encodes and decodes them chunk by
chunk (as streaming does), and scores the result with the evaluator: the ceiling of what
the DiT can reach through this VAE. Also the motion's stutter (see
model/tinyworld/steadiness.py) of the reconstructions and of the rendered truth.
"""

from __future__ import annotations

import argparse
import json
import math

import torch

from model.checkpoint import load_strict, read_checkpoint
from model.tinyworld.captions import evaluation_prompts
from model.tinyworld.evaluate import evaluate_frames
from model.tinyworld.render import render_clip
from model.tinyworld.steadiness import object_track, stutter
from model.vae import CausalVAE, frames_to_tensor, tensor_to_frames


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vae", default="runs/vae/last.safetensors")
    ap.add_argument("--clips", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg, tensors, meta = read_checkpoint(args.vae)
    if any(k.startswith("vae.") for k in tensors):  # a whole model: its VAE
        tensors = {k[4:]: v for k, v in tensors.items() if k.startswith("vae.")}
    vae = CausalVAE(cfg.vae)
    load_strict(vae, tensors, args.vae)
    vae.eval()
    chunk = cfg.stream.chunk_latent_frames * cfg.vae.time_stride
    hits, n, psnrs, tracks, truth = {}, 0, [], [], []
    for i, prompt in enumerate(evaluation_prompts(args.clips, seed=1)):
        timeline = [(0.0, prompt)]
        clip = render_clip(timeline, args.seconds, size=cfg.stream.height, seed=i)
        out, enc_state, dec_state = [], None, None
        with torch.no_grad():
            for s in range(0, len(clip) - chunk + 1, chunk):
                x = frames_to_tensor(clip[s : s + chunk])
                z, enc_state = vae.encode(x, enc_state)
                y, dec_state = vae.decode(z, dec_state)
                out.extend(tensor_to_frames(y))
                mse = ((y.clamp(-1, 1) - x) ** 2).mean().item()
                psnrs.append(10 * math.log10(4 / max(mse, 1e-10)))
        rep = evaluate_frames(out, timeline, fps=24, chunk_frames=12)
        tracks.append(object_track(out))
        truth.append(object_track(clip[: len(out)]))
        for k, v in rep.adherence.items():
            if v is not None:
                hits[k] = hits.get(k, 0) + v * rep.chunks_scored
        n += rep.chunks_scored
    result = {
        "vae": args.vae,
        "step": meta.get("step"),
        "decoder_step": meta.get("decoder_step"),
        "psnr": sum(psnrs) / len(psnrs),
        "adherence": {k: round(v / n, 4) for k, v in hits.items()},
        "stutter": stutter(tracks, cfg.vae.time_stride),
        "stutter_of_truth": stutter(truth, cfg.vae.time_stride),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
