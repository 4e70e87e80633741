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
# the outputs' tests talk to real third-party tools: liblo's oscsend (OSC), nginx with its
# RTMP module (an RTMP server to push to) and promtool (checks /metrics)
if ! command -v oscsend >/dev/null || [ ! -e /usr/lib/nginx/modules/ngx_rtmp_module.so ] \
    || ! command -v promtool >/dev/null; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      liblo-tools nginx libnginx-mod-rtmp prometheus) >/dev/null
  else
    echo "ops/test.sh: install liblo-tools, libnginx-mod-rtmp and prometheus for the output tests" >&2
  fi
fi
exec .venv/bin/python -m pytest "$@"
