#!/usr/bin/env bash
# Create .venv and install endless with its test tools. Idempotent; needs only python3.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip >/dev/null 2>&1 || true
# torch first, as a CPU build: a plain `pip install torch` would pull GBs of CUDA wheels.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  $PIP install -q "torch==2.13.0" 2>/dev/null \
    || $PIP install -q torch --index-url https://download.pytorch.org/whl/cpu \
    || $PIP install -q torch
fi
if [ "${1:-}" = "--test" ]; then
  $PIP install -q -e ".[test,wan,ray]"
  # third-party players the browser tests load (a WHEP client, hls.js), pinned by the lock
  if command -v npm >/dev/null; then
    (cd tests/js && npm ci --no-audit --no-fund --silent)
  else
    echo "ops/setup.sh: npm missing; the output browser tests need tests/js/node_modules" >&2
  fi
else
  $PIP install -q -e .
fi
