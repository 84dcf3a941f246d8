#!/usr/bin/env bash
# Installs Home Assistant 2024.1.6 (the last release line on Python 3.11) into its own venv, .hass-venv, for the
# real-Home-Assistant tests. Its own venv because its pins clash with spkidd's; its own constraints file because
# plain `pip install homeassistant` stalls in dependency resolution. Safe to run again: it only installs what is
# missing.
set -euo pipefail
cd "$(dirname "$0")/.."

HASS_VERSION=2024.1.6
HASS_VENV=${HASS_VENV:-.hass-venv}
PYTHON=${PYTHON:-python3}

if [ -x "$HASS_VENV/bin/hass" ] && "$HASS_VENV/bin/python" -c \
  "import homeassistant.const as c, sys; sys.exit(c.__version__ != '$HASS_VERSION')" 2>/dev/null; then
  echo "install-hass: Home Assistant $HASS_VERSION already in $HASS_VENV"
  exit 0
fi

start=$(date +%s)
[ -x "$HASS_VENV/bin/python" ] || "$PYTHON" -m venv "$HASS_VENV"
download=$(mktemp -d)
trap 'rm -rf "$download"' EXIT
"$HASS_VENV/bin/pip" download -q --no-deps -d "$download" "homeassistant==$HASS_VERSION"
"$HASS_VENV/bin/python" - "$download" <<'PY'
import pathlib, sys, zipfile
folder = pathlib.Path(sys.argv[1])
wheel = next(folder.glob("homeassistant-*.whl"))
with zipfile.ZipFile(wheel) as archive:
    (folder / "constraints.txt").write_bytes(archive.read("homeassistant/package_constraints.txt"))
PY
# fnv-hash-fast and psutil-home-assistant are what hass would otherwise install itself at its first start.
"$HASS_VENV/bin/pip" install -q -c "$download/constraints.txt" "homeassistant==$HASS_VERSION" \
  paho-mqtt==1.6.1 Pillow==10.1.0 janus==1.0.0 fnv-hash-fast psutil-home-assistant
echo "install-hass: Home Assistant $HASS_VERSION installed in $HASS_VENV in $(( $(date +%s) - start )) s"
