"""Run with Home Assistant's own Python (.hass-venv): reads {topic: discovery config} as JSON on stdin, runs each
through the MQTT discovery schema of its component, and prints {topic: {"error", "dropped"}}: what Home Assistant
refuses, and which keys (dotted paths) it drops without a word."""

from __future__ import annotations

import importlib
import json
import sys
from typing import Any

import homeassistant.bootstrap  # noqa: F401 (imports the core in the order hass does; components alone cycle)
import voluptuous as vol


def dropped_keys(given: Any, kept: Any, prefix: str = "") -> list[str]:
    if isinstance(given, dict) and isinstance(kept, dict):
        out = []
        for key, value in given.items():
            if key not in kept:
                out.append(f"{prefix}{key}")
            else:
                out += dropped_keys(value, kept[key], f"{prefix}{key}.")
        return out
    if isinstance(given, list) and isinstance(kept, list) and len(given) == len(kept):
        pairs = enumerate(zip(given, kept, strict=True))
        return [d for i, (g, k) in pairs for d in dropped_keys(g, k, f"{prefix}{i}.")]
    return []


def check(topic: str, config: dict[str, Any]) -> dict[str, Any]:
    component = topic.split("/")[-3]
    schema = importlib.import_module(f"homeassistant.components.mqtt.{component}").DISCOVERY_SCHEMA
    try:
        validated = schema(dict(config))
    except vol.Invalid as exc:
        return {"error": str(exc), "dropped": []}
    return {"error": None, "dropped": dropped_keys(config, validated)}


def main() -> None:
    configs = json.load(sys.stdin)
    json.dump({topic: check(topic, config) for topic, config in configs.items()}, sys.stdout)


if __name__ == "__main__":
    main()
