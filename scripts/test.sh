#!/usr/bin/env bash
# Installs everything (apt + pip) and runs the whole test suite. `.ci/run` calls this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
exec .venv/bin/python -m pytest -q --durations=30 tests "$@"
