#!/usr/bin/env bash
# Full-size Wan2.1-1.3B (random weights) streaming on one GPU: FPS end to end and denoise
# only, time to first frame, switch latency, memory at minute 1 and minute 10 of video.
# One run, under 10 minutes (the wall-clock deadline stops it early if the GPU is slow).
# Extra arguments go to ops/bench_gpu.py, e.g. --family self-forcing or --compile.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
PYTHONPATH=$PWD exec "$PY" ops/bench_gpu.py --device cuda --size 832x480 --dtype bf16 \
    --family longlive --minutes 10 --deadline 480 --out "${OUT:-/tmp}/bench_gpu.json" "$@"
