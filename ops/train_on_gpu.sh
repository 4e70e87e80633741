#!/usr/bin/env bash
# Train the DiT on a lent GPU machine (the device tool) over several calls of at most 10
# minutes each: `start` launches ops/train_dit.py in its own process session, so it runs
# on between calls while the machine stays held; `watch N` prints its progress for N
# seconds (or until it ends) and then leaves the newest checkpoints under $OUT, split
# into pieces the tool brings back; `collect` does that at once. Join the pieces here
# with `cat DIR/model.safetensors.part-* > runs/gpu/model.safetensors`.
#
#   ops/train_on_gpu.sh start --init model/weights/tiny.safetensors --minutes 21 ...
#   ops/train_on_gpu.sh watch 540
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:-/tmp/endless_gpu_run}
PY=${PY:-python3}

collect() {
  local out=${OUT:?OUT is where the device tool collects files}
  for name in model last; do
    if [ -f "$RUN/$name.safetensors" ]; then
      cp "$RUN/$name.safetensors" "$RUN/$name.copy"  # saves replace the file atomically
      split -b 15M "$RUN/$name.copy" "$out/$name.safetensors.part-"
    fi
  done
  cp "$RUN/train.log" "$out/train.log" 2>/dev/null || true
}

running() { pgrep -f "train_dit.py --device cuda --out $RUN" >/dev/null; }

case "${1:-}" in
  start)
    shift
    mkdir -p "$RUN"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    PYTHONPATH=$PWD PYTHONUNBUFFERED=1 setsid nohup "$PY" ops/train_dit.py \
      --device cuda --out "$RUN" "$@" >>"$RUN/train.log" 2>&1 </dev/null &
    echo "started: $RUN/train.log"
    ;;
  watch)
    end=$((SECONDS + ${2:?seconds}))
    sleep 5
    while [ $SECONDS -lt "$end" ] && running; do
      tail -n 1 "$RUN/train.log"
      sleep 30
    done
    running && echo "still training" || { echo "trainer ended:"; tail -n 5 "$RUN/train.log"; }
    collect
    ;;
  collect) collect ;;
  *)
    echo "usage: $0 start TRAIN_DIT_ARGS... | watch SECONDS | collect" >&2
    exit 2
    ;;
esac
