#!/usr/bin/env bash
# Sets up everything spkidd needs on a fresh Debian 12 machine: system packages (as root), a venv in .venv,
# and the Python packages. Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(python3-venv mosquitto mosquitto-clients ffmpeg espeak-ng sox libsndfile1 portaudio19-dev openssl
  python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good
  gstreamer1.0-plugins-bad pulseaudio pulseaudio-utils libasound2-plugins systemd chromium chromium-driver)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing system packages (${missing[*]}); run as root or: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
  echo "setup: installing system packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PYTHON" -m venv .venv
fi
# torch first and pinned, so pip takes the CPU wheel and never a multi-GB CUDA build.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  echo "setup: installing torch (CPU)"
  .venv/bin/pip install -q torch==2.13.0
fi
echo "setup: installing spkidd and its Python dependencies"
.venv/bin/pip install -q -e '.[dev]'
echo "setup: the pretrained speaker encoder (resemblyzer 0.1.4's GE2E weights, Apache-2.0)"
if ! .venv/bin/python -m train.encoder_weights; then
  echo "setup: could not fetch or convert the encoder weights (see above); spkidd train needs them" \
    "(or train from scratch with --encoder none)" >&2
  exit 1
fi
