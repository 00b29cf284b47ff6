#!/usr/bin/env bash
# Installs everything (apt + pip) and runs the whole test suite. `.ci/run` calls this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
# two workers (pytest-xdist): each module on one, the modules that start Ray on the same one
exec .venv/bin/python -m pytest -q -n 2 --durations=30 tests "$@"
