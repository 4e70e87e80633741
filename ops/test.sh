#!/usr/bin/env bash
# Set up (venv, packages, headless Chromium for the browser tests) and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
./ops/setup.sh --test
if [ ! -x /usr/bin/chromium ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) >/dev/null
  else
    echo "ops/test.sh: /usr/bin/chromium missing; install Debian's chromium for browser tests" >&2
  fi
fi
exec .venv/bin/python -m pytest "$@"
