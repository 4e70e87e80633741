#!/usr/bin/env bash
# Set up and start the live server (prints the URL to open).
set -euo pipefail
cd "$(dirname "$0")/.."
./ops/setup.sh
exec .venv/bin/endless serve "$@"
