#!/usr/bin/env bash
# The main job on a fresh machine: set everything up, train a model on synthetic voices, then run the spkidd
# daemon with its embedded MQTT broker on a replayed conversation and print every MQTT message as it arrives.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"
