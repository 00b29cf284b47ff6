#!/usr/bin/env bash
# Installs refind and runs `refind demo` on the embedded default (real weights, a real clip).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/refind demo "$@"
