"""Watermark benchmark: detection on live captures and renders, false alarms, and its cost.

    .venv/bin/python ops/bench_watermark.py                  # 20 captures, 20 renders, 120 nulls
    .venv/bin/python ops/bench_watermark.py --json wm.json   # the figures as JSON too

- live captures: a real server (shipped tiny weights) and a real aiortc viewer on loopback
  (VP8 at the server's 500 kbit/s); each capture's first 2 s (48 frames) re-encoded to
  H.264 crf 26 with PyAV (a screen capture re-uploaded), then detected;
- offline renders: `render_video` with the mark, the MP4 it writes, and that file
  re-encoded to H.264 crf 26; 2 s each;
- false alarms: clips endless never marked (TinyWorld renderer output, noise, synthetic
  patterns, several sizes) through H.264 crf 26; the largest z seen against Z_FOUND;
- 832x480: renderer clips scaled up, marked, VP8 500 kbit/s then H.264 crf 26;
- cost: PSNR marked vs unmarked, the evaluator's adherence with and without the mark,
  milliseconds per frame, and the realtime factor with and without it;
- with `invisible-watermark` installed, its DWT-DCT through the same codecs, for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

from model.bundle import VideoModel
from model.tinyworld.captions import evaluation_prompts
from model.tinyworld.evaluate import evaluate_frames
from model.tinyworld.render import render_clip
from server.offline import render_video
from server.provenance.marking import StreamMarker
from server.provenance.payload import Payload
from server.provenance.roundtrip import h264, vp8
from server.provenance.watermark import Z_FOUND, Watermarker, detect_frames
from server.verify_cmd import detect_file


def resize(frames: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.stack(
        [
            av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
            .reformat(width=width, height=height)
            .to_ndarray(format="rgb24")
            for f in frames
        ]
    )


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return 10 * np.log10(255**2 / max(mse, 1e-12))


def rate(hits: list[bool]) -> str:
    return f"{sum(hits)}/{len(hits)} ({100 * sum(hits) / max(len(hits), 1):.1f}%)"


# -- offline renders (and the mark's cost on the model's own frames) ---------------------------
def bench_renders(model: VideoModel, n: int, seed: int) -> dict:
    marker = StreamMarker("bench")
    found_file, found_crf26, zs, psnrs, adh_raw, adh_marked = [], [], [], [], [], []
    adh_file_raw, adh_file_marked = [], []
    mark_ms, gen_s, video_s, mark_s = [], 0.0, 0.0, [0.0]
    for i, prompt in enumerate(evaluation_prompts(n, seed=seed)):
        raw, marked = [], []

        def mark(frames, render_id=f"render-{i}", raw=raw, marked=marked):
            t = time.perf_counter()
            out = marker.mark(render_id, frames)
            mark_s[0] += time.perf_counter() - t
            mark_ms.append((time.perf_counter() - t) * 1e3 / len(frames))
            raw.append(frames)
            marked.append(out)
            return out

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "r.mp4"
            t = time.perf_counter()
            result = render_video(model, [(0.0, prompt)], 2.0, path, seed=i, mark=mark)
            gen_s += time.perf_counter() - t
            video_s += result.video_seconds
            got = detect_file(path)
            want = marker.payload(f"render-{i}").as_dict()
            found_file.append(got["found"] and got["payload"] == want)
            raw_f, marked_f = np.concatenate(raw), np.concatenate(marked)
            written = np.stack(list(av_frames(path)))
            adh_file_marked.append(evaluate_frames(written, [(0.0, prompt)]).adherence["all"])
            adh_file_raw.append(
                evaluate_frames(h264(raw_f, crf=18), [(0.0, prompt)]).adherence["all"]
            )
            again = detect_frames(h264(written))
            found_crf26.append(again.found and again.payload.as_dict() == want)
            zs.append(again.z)
        psnrs.append(psnr(raw_f, marked_f))
        adh_raw.append(evaluate_frames(raw_f, [(0.0, prompt)]).adherence["all"])
        adh_marked.append(evaluate_frames(marked_f, [(0.0, prompt)]).adherence["all"])
        print(f"  render {i:2d} {prompt[:44]:44s} psnr {psnrs[-1]:.1f}  crf26 z {zs[-1]:.1f}")
    return {
        "renders": n,
        "found_in_file": rate(found_file),
        "found_after_h264_crf26": rate(found_crf26),
        "z_after_h264_crf26_min": round(min(zs), 1),
        "z_after_h264_crf26_median": round(statistics.median(zs), 1),
        "psnr_db_mean": round(statistics.mean(psnrs), 2),
        "psnr_db_min": round(min(psnrs), 2),
        "adherence_unmarked": round(statistics.mean(adh_raw), 4),
        "adherence_marked": round(statistics.mean(adh_marked), 4),
        "adherence_file_unmarked_crf18": round(statistics.mean(adh_file_raw), 4),
        "adherence_file_marked_crf18": round(statistics.mean(adh_file_marked), 4),
        "mark_ms_per_frame_128": round(statistics.median(mark_ms), 2),
        "realtime_factor_with_mark": round(video_s / gen_s, 3),
        "realtime_factor_without_mark": round(video_s / (gen_s - mark_s[0]), 3),
    }


def av_frames(path):
    with av.open(str(path)) as c:
        for f in c.decode(video=0):
            yield f.to_ndarray(format="rgb24")


# -- the evaluator with and without the mark, over several payloads -----------------------------
def bench_adherence(model: VideoModel, n: int, payloads: int, seed: int) -> dict:
    """Adherence ("all") of n 2 s clips unmarked and marked with `payloads` payloads each,
    as frames and as the crf 18 files a render writes."""
    from memory.stream import Stream

    wm = Watermarker()
    raw, marked, raw_file, marked_file, better, worse = [], [], [], [], 0, 0
    for i, prompt in enumerate(evaluation_prompts(n, seed=seed)):
        stream = Stream(model, prompt, seed=i)
        frames = np.concatenate([stream.next_chunk() for _ in range(4)])

        def score(clip, prompt=prompt):
            return evaluate_frames(clip, [(0.0, prompt)]).adherence["all"]

        r, rf = score(frames), score(h264(frames, crf=18))
        for k in range(payloads):
            m = wm.mark(frames, Payload.make("bench", f"s{k}", 1_790_000_000 + 60 * k))
            sm = score(m)
            raw.append(r)
            raw_file.append(rf)
            marked.append(sm)
            marked_file.append(score(h264(m, crf=18)))
            better += sm > r
            worse += sm < r
    return {
        "clips": n,
        "payloads_each": payloads,
        "frames_unmarked": round(statistics.mean(raw), 4),
        "frames_marked": round(statistics.mean(marked), 4),
        "clip_payload_pairs_better_worse": [better, worse],
        "files_crf18_unmarked": round(statistics.mean(raw_file), 4),
        "files_crf18_marked": round(statistics.mean(marked_file), 4),
    }


# -- live viewer captures ----------------------------------------------------------------------
async def capture_live(model: VideoModel, n: int, seed: int) -> dict:
    from client.session import LiveSession
    from server.app import LiveServer
    from server.config import ServerConfig

    hits, zs = [], []
    async with LiveServer(ServerConfig(server_name="bench"), model) as server:
        async with LiveSession(server.ws_url) as s:
            await s.connect(10)
            for i, prompt in enumerate(evaluation_prompts(n, seed=seed + 100)):
                created = await s.create(prompt, seed=i)
                stream = created["stream"]
                viewer = await s.watch(stream)
                frames = await viewer.wait_frames(48, 120)
                capture = np.stack([f.image for f in frames[:48]])
                await s.stop(stream)
                result = detect_frames(h264(capture))
                want = server.marker.payload(stream)
                hits.append(result.found and result.payload == want)
                zs.append(result.z)
                note = "" if hits[-1] else f" (read {result.payload}, marked {want})"
                print(f"  capture {i:2d} {prompt[:44]:44s} z {result.z:.1f} {hits[-1]}{note}")
    return {
        "captures": n,
        "found_after_h264_crf26": rate(hits),
        "z_min": round(min(zs), 1),
        "z_median": round(statistics.median(zs), 1),
    }


# -- clips endless never marked ----------------------------------------------------------------
def null_clips(n_render: int, n_noise: int, n_synth: int, seed: int):
    rng = np.random.default_rng(seed)
    for i, prompt in enumerate(evaluation_prompts(n_render, seed=seed + 200)):
        yield "renderer", render_clip(prompt, 2.0, seed=i)
    for i in range(n_noise):
        h, w = [(128, 128), (240, 320), (480, 832)][i % 3]
        if i % 2:
            yield "noise", rng.integers(0, 256, (48, h, w, 3), dtype=np.uint8)
        else:  # smooth noise: random fields blurred by an up-scale
            small = rng.integers(0, 256, (48, h // 16, w // 16, 3), dtype=np.uint8)
            yield "smooth noise", resize(small, w, h)
    t = np.arange(48)[:, None, None]
    for i in range(n_synth):
        h, w = [(128, 128), (240, 320), (480, 832)][i % 3]
        y, x = np.mgrid[0:h, 0:w]
        kind = i % 4
        if kind == 0:  # scrolling gradient
            g = (x[None] + 3 * t + 2 * y[None]) % 256
        elif kind == 1:  # moving bars
            g = ((x[None] // (4 + i) + t) % 2) * 200 + 20
        elif kind == 2:  # drifting checkerboard
            g = (((x[None] + t) // 8 + y[None] // 8) % 2) * 180 + 40
        else:  # a disc moving on a flat colour
            g = 60 + 150 * ((x[None] - 2 * t - w / 4) ** 2 + (y[None] - h / 2) ** 2 < (h / 5) ** 2)
        rgb = np.stack([g, (g * 7 + 30 * i) % 256, 255 - g], -1).astype(np.uint8)
        yield "synthetic", rgb


def bench_nulls(n_render: int, n_noise: int, n_synth: int, seed: int) -> dict:
    found, zs, kinds = 0, [], {}
    for kind, clip in null_clips(n_render, n_noise, n_synth, seed):
        r = detect_frames(h264(clip))
        found += r.found
        zs.append(r.z)
        kinds[kind] = kinds.get(kind, 0) + 1
    return {
        "clips": len(zs),
        "by_kind": kinds,
        "found": found,
        "z_max": round(max(zs), 2),
        "z_mean": round(statistics.mean(zs), 2),
        "z_std": round(statistics.pstdev(zs), 2),
        "z_found": Z_FOUND,
    }


# -- 832x480 -----------------------------------------------------------------------------------
def bench_large(n: int, seed: int) -> dict:
    wm, payload = Watermarker(), Payload.make("bench", "large", time.time())
    hits, zs, nulls, psnrs, ms = [], [], [], [], []
    for i, prompt in enumerate(evaluation_prompts(n, seed=seed + 300)):
        clip = resize(render_clip(prompt, 2.0, seed=i, size=480), 832, 480)
        t = time.perf_counter()
        marked = wm.mark(clip, payload)
        ms.append((time.perf_counter() - t) * 1e3 / len(clip))
        psnrs.append(psnr(clip, marked))
        r = detect_frames(h264(vp8(marked)))
        hits.append(r.found and r.payload == payload)
        zs.append(r.z)
        nulls.append(detect_frames(h264(vp8(clip))).z)
    return {
        "clips": n,
        "found_after_vp8_500k_h264_crf26": rate(hits),
        "z_min": round(min(zs), 1),
        "unmarked_z_max": round(max(nulls), 2),
        "psnr_db_mean": round(statistics.mean(psnrs), 2),
        "mark_ms_per_frame_832x480": round(statistics.median(ms), 1),
    }


# -- invisible-watermark (DWT-DCT), for comparison ---------------------------------------------
def bench_dwtdct(n: int, seed: int) -> dict | str:
    try:
        import cv2
        from imwatermark import WatermarkDecoder, WatermarkEncoder
    except ImportError as exc:
        return f"not installed ({exc})"
    bits = list(np.random.default_rng(seed).integers(0, 2, 64))
    enc = WatermarkEncoder()
    enc.set_watermark("bits", bits)
    dec = WatermarkDecoder("bits", 64)
    out = {}
    try:
        enc.encode(np.zeros((128, 128, 3), np.uint8), "dwtDct")
    except Exception as exc:  # it refuses frames under 256x256
        out["128x128"] = f"refused: {exc}"
    for w, h in ((256, 256), (832, 480)):
        accs_raw, accs, psnrs = [], [], []
        for i, prompt in enumerate(evaluation_prompts(n, seed=seed + 400)):
            clip = resize(render_clip(prompt, 2.0, seed=i), w, h)
            marked = np.stack(
                [enc.encode(f[..., ::-1].copy(), "dwtDct")[..., ::-1] for f in clip]
            ).astype(np.uint8)
            psnrs.append(psnr(clip, marked))
            for frames, accs_ in ((marked, accs_raw), (h264(vp8(marked)), accs)):
                votes = np.array([dec.decode(f[..., ::-1].copy(), "dwtDct") for f in frames])
                accs_.append(float(np.mean((votes.mean(0) > 0.5) == np.array(bits))))
        out[f"{w}x{h}"] = {
            "psnr_db_mean": round(statistics.mean(psnrs), 2),
            "bit_accuracy_uncompressed": round(statistics.mean(accs_raw), 3),
            "bit_accuracy_after_vp8_h264": round(statistics.mean(accs), 3),
            "all_64_bits_right_after_codecs": f"{sum(a == 1.0 for a in accs)}/{n}",
        }
    del cv2
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--captures", type=int, default=20)
    ap.add_argument("--renders", type=int, default=20)
    ap.add_argument("--nulls", type=int, default=120, help="clips never marked (half renderer)")
    ap.add_argument("--large", type=int, default=6, help="832x480 clips")
    ap.add_argument("--dwtdct", type=int, default=6, help="clips for the DWT-DCT comparison")
    ap.add_argument("--adherence", type=int, default=0, help="clips for the adherence study")
    ap.add_argument("--payloads", type=int, default=8, help="payloads per adherence clip")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = VideoModel.load_default()
    figures = {}
    t0 = time.perf_counter()
    if args.captures:  # a section with a count of 0 is skipped
        print("live captures (aiortc viewer, VP8 500 kbit/s -> H.264 crf 26):")
        # its own model: the server applies its sampling settings (no warm-up) to the model
        live_model = VideoModel.load_default()
        figures["live"] = asyncio.run(capture_live(live_model, args.captures, args.seed))
    if args.renders:
        print("offline renders:")
        figures["offline"] = bench_renders(model, args.renders, args.seed)
    if args.nulls:
        print("clips endless never marked:")
        half, quarter = args.nulls // 2, args.nulls // 4
        figures["nulls"] = bench_nulls(half, quarter, args.nulls - half - quarter, 0)
    if args.large:
        print("832x480:")
        figures["832x480"] = bench_large(args.large, args.seed)
    if args.dwtdct:
        print("invisible-watermark DWT-DCT:")
        figures["dwtdct"] = bench_dwtdct(args.dwtdct, args.seed)
    if args.adherence:
        print("adherence with and without the mark:")
        figures["adherence"] = bench_adherence(model, args.adherence, args.payloads, args.seed)
    figures["wall_seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
