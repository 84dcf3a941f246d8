"""Events that flow from a stream's pipeline to its consumers (MQTT publisher, `spkidd listen`, benchmarks).

They are plain dataclasses so producers never depend on how an event is serialized.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

EventType = Literal["identified", "changed", "final", "unknown"]
UNKNOWN = "unknown"


def as_percent(confidence: float) -> str:
    """A confidence as people read it: rounded down, so that nothing short of certainty shows as 100% (the
    confidence of `unknown` can be 0.999, and "unknown 100%" reads as a certainty nobody has)."""
    return f"{math.floor(confidence * 100)}%"


def utc_now_iso() -> str:
    """Wall-clock time as ISO-8601 UTC with milliseconds and a Z, as MQTT payloads carry it."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Identification:
    """One decision about who is speaking in one utterance of one source."""

    source: str
    utterance_id: str
    event_type: EventType
    speaker: str
    confidence: float
    top_k: dict[str, float]
    final: bool
    start: float
    end: float
    speech_s: float
    time: str = field(default_factory=utc_now_iso)
    model: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SpeechActivity:
    """The gate's utterance boundary: `speaking` turns True at an utterance start and False at its end."""

    source: str
    utterance_id: str
    speaking: bool
    time_s: float


@dataclass(frozen=True)
class SourceStatus:
    """Health of a source: online while it delivers audio, offline while it is reconnecting."""

    source: str
    online: bool
    detail: str = ""
    failed: bool = False
    """The source ended with an error, not at the end of its audio (`spkidd listen` exits non-zero)."""
