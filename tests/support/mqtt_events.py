"""Test helpers: known events and publisher settings for the MQTT tests."""

from __future__ import annotations

import dataclasses
from typing import Any

from spkidd.config import MqttConfig
from spkidd.events import Identification, SpeechActivity

STATE_KEYS = ["v", "source", "state", "speaker", "confidence", "top_k", "utterance_id", "since", "speakers"]
"""The retained state JSON's keys, in order (docs/mqtt-and-home-assistant.md; `speakers` feeds an attribute)."""
EVENT_KEYS = [
    "v", "event_type", "source", "utterance_id", "speaker", "confidence", "top_k", "final",
    "start", "end", "speech_s", "time", "model",
]  # fmt: skip
"""An event JSON's keys, in order (docs/mqtt-and-home-assistant.md)."""


def mqtt_settings(port: int, **overrides: Any) -> MqttConfig:
    """Fast timings for tests: short backoff, no rediscovery delay unless asked for."""
    base = MqttConfig(
        broker="external",
        host="127.0.0.1",
        port=port,
        keepalive=5,
        backoff_initial_s=0.2,
        backoff_max_s=1.0,
        rediscovery_max_delay_s=0.0,
        clear_after_s=0.5,
        stats_interval_s=3600.0,
        publish_timeout_s=5.0,
    )
    return dataclasses.replace(base, **overrides)


def identification(
    source: str,
    n: int,
    event_type: str = "identified",
    speaker: str = "alice",
    confidence: float = 0.91,
) -> Identification:
    return Identification(
        source=source,
        utterance_id=f"{source}-{n:06d}",
        event_type=event_type,  # type: ignore[arg-type]
        speaker=speaker,
        confidence=confidence,
        top_k={speaker: confidence, "carol" if speaker == "bob" else "bob": round(1 - confidence, 2)},
        final=event_type in ("final", "unknown"),
        start=1.0 * n,
        end=1.0 * n + 0.5,
        speech_s=0.5,
        model={"name": "test", "version": "1"},
    )


def activity(source: str, n: int, speaking: bool) -> SpeechActivity:
    return SpeechActivity(source, f"{source}-{n:06d}", speaking, 1.0 * n)
