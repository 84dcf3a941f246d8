"""The daemon's health as one snapshot: what /healthz and /metrics (spkidd.healthserver) report. Kept apart from
the HTTP side so a daemon with both endpoints off never imports aiohttp or prometheus-client (about 10 MB)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class StreamHealth:
    online: bool
    audio_s: float
    processing_s: float
    lag_s: float
    events: int
    dropped_chunks: int
    reconnects: int
    speech_s: float

    @property
    def realtime_factor(self) -> float:
        """Processing time per second of audio: below 1 keeps up with real time."""
        return self.processing_s / self.audio_s if self.audio_s > 0 else 0.0

    @property
    def speech_ratio(self) -> float:
        return self.speech_s / self.audio_s if self.audio_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "online": self.online,
            "lag_s": round(self.lag_s, 3),
            "rtf": round(self.realtime_factor, 4),
            "audio_s": round(self.audio_s, 1),
            "speech_ratio": round(self.speech_ratio, 3),
            "events": self.events,
            "dropped_chunks": self.dropped_chunks,
            "reconnects": self.reconnects,
        }


@dataclass(frozen=True)
class MqttHealth:
    connected: bool = False
    published: int = 0
    events_dropped: int = 0
    reconnects: int = 0
    queued: int = 0


@dataclass(frozen=True)
class DaemonHealth:
    uptime_s: float
    streams: dict[str, StreamHealth] = field(default_factory=dict)
    mqtt: MqttHealth = MqttHealth()

    @property
    def healthy(self) -> bool:
        """Connected to the broker and every source delivering audio."""
        return self.mqtt.connected and all(s.online for s in self.streams.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": "ok" if self.healthy else "degraded",
            "uptime_s": round(self.uptime_s, 1),
            "streams": {name: s.to_dict() for name, s in self.streams.items()},
            "mqtt": asdict(self.mqtt),
        }


Snapshot = Callable[[], DaemonHealth]
