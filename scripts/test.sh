#!/usr/bin/env bash
# Sets everything up (Home Assistant too, in .hass-venv), then runs the linters, the type checker and the whole
# test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/install-hass.sh      # a real Home Assistant for tests/test_home_assistant.py
echo "== ruff check"; .venv/bin/ruff check spkidd train tests benchmarks scripts
echo "== ruff format --check"; .venv/bin/ruff format --check spkidd train tests benchmarks scripts
echo "== mypy"; .venv/bin/mypy
echo "== pytest"; .venv/bin/pytest -q -p no:cacheprovider "$@"
