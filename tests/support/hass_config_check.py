"""Run with Home Assistant's own Python (.hass-venv): `hass --script check_config`'s own check of the configuration
folder given as the argument, printed as JSON: {"errors": {domain: [messages]}, "warnings": {domain: [messages]},
"domains": {domain: its validated configuration}}. The script itself prints a refused option ("Incorrect config")
and still exits 0, so a test reads this instead of its exit code."""

from __future__ import annotations

import json
import sys
from typing import Any

from homeassistant.scripts.check_config import check


def messages(found: dict[str, list[Any]]) -> dict[str, list[str]]:
    """Only the messages: each is followed by the offending configuration, which check() appends after it."""
    return {domain: [m for m in items if isinstance(m, str)] for domain, items in found.items()}


def main() -> None:
    result = check(sys.argv[1])
    domains = dict(result["components"])
    out = {"errors": messages(result["except"]), "warnings": messages(result["warn"]), "domains": domains}
    json.dump(out, sys.stdout, default=str)


if __name__ == "__main__":
    main()
