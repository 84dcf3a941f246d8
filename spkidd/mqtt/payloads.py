"""Topics and payloads of the MQTT contract (/work/shared/MQTT.md, docs/mqtt-and-home-assistant.md).

Pure functions only, no client: the contract test freezes exactly what they build, and the publisher only
decides *when* to send them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from spkidd import __version__
from spkidd.events import UNKNOWN, Identification, utc_now_iso

PAYLOAD_VERSION = 1
ONLINE = b"online"
OFFLINE = b"offline"
EVENT_TYPES = ("identified", "changed", "final", "unknown")
UNRECOGNIZED = "unrecognized"
"""How `unknown` is shown in Home Assistant, which reserves the state `unknown` for "no value"."""
NONE = "none"

StateName = Literal["identified", "unknown", "none"]


@dataclass(frozen=True)
class Topics:
    """Every topic one daemon instance uses, from the prefixes and its (sanitised) instance name."""

    prefix: str
    node: str
    discovery_prefix: str = "homeassistant"

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.node}"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def stats(self) -> str:
        return f"{self.base}/stats"

    @property
    def ha_status(self) -> str:
        return f"{self.discovery_prefix}/status"

    def source_status(self, source: str) -> str:
        return f"{self.base}/{source}/status"

    def speaking(self, source: str) -> str:
        return f"{self.base}/{source}/speaking"

    def speaker(self, source: str) -> str:
        return f"{self.base}/{source}/speaker"

    def event(self, source: str) -> str:
        return f"{self.base}/{source}/event"

    def discovery(self, component: str, unique_id: str) -> str:
        return f"{self.discovery_prefix}/{component}/{unique_id}/config"


@dataclass(frozen=True)
class SpeakerState:
    """The retained `.../speaker` state of one source."""

    source: str
    state: StateName
    speaker: str
    confidence: float | None
    top_k: dict[str, float] = field(default_factory=dict)
    utterance_id: str | None = None
    since: str = field(default_factory=utc_now_iso)

    @property
    def decision(self) -> tuple[str, str]:
        """What must change for the state to be published again (never per frame)."""
        return (self.state, self.speaker)


def encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def _round(value: float) -> float:
    return round(float(value), 4)


def state_from_identification(event: Identification) -> SpeakerState:
    unknown = event.event_type == "unknown" or event.speaker == UNKNOWN
    return SpeakerState(
        source=event.source,
        state="unknown" if unknown else "identified",
        speaker=UNKNOWN if unknown else event.speaker,
        confidence=event.confidence,
        top_k=dict(event.top_k),
        utterance_id=event.utterance_id,
        since=event.time,
    )


def none_state(source: str, utterance_id: str | None = None) -> SpeakerState:
    return SpeakerState(source=source, state="none", speaker=NONE, confidence=None, utterance_id=utterance_id)


def state_payload(state: SpeakerState, speakers: Sequence[str]) -> dict[str, Any]:
    """The state JSON. `speakers`, the enrolled speakers, extends the contract's keys: the sensor's `speakers`
    attribute is read from it (SPEAKER_ATTRIBUTES_TEMPLATE), so a change of the list is a new state message."""
    return {
        "v": PAYLOAD_VERSION,
        "source": state.source,
        "state": state.state,
        "speaker": state.speaker,
        "confidence": None if state.confidence is None else _round(state.confidence),
        "top_k": {k: _round(v) for k, v in state.top_k.items()},
        "utterance_id": state.utterance_id,
        "since": state.since,
        "speakers": list(speakers),
    }


def event_payload(event: Identification) -> dict[str, Any]:
    return {
        "v": PAYLOAD_VERSION,
        "event_type": event.event_type,
        "source": event.source,
        "utterance_id": event.utterance_id,
        "speaker": event.speaker,
        "confidence": _round(event.confidence),
        "top_k": {k: _round(v) for k, v in event.top_k.items()},
        "final": event.final,
        "start": round(event.start, 3),
        "end": round(event.end, 3),
        "speech_s": round(event.speech_s, 3),
        "time": event.time,
        "model": dict(event.model),
    }


def speaking_payload(speaking: bool) -> bytes:
    return b"ON" if speaking else b"OFF"


def status_payload(online: bool) -> bytes:
    return ONLINE if online else OFFLINE


def stats_payload(
    node: str, uptime_s: float, sources: dict[str, dict[str, Any]], mqtt: dict[str, Any]
) -> dict[str, Any]:
    return {
        "v": PAYLOAD_VERSION,
        "node": node,
        "time": utc_now_iso(),
        "uptime_s": round(uptime_s, 1),
        "sources": sources,
        "mqtt": mqtt,
    }


def _bridge_device(node: str, page_url: str | None) -> dict[str, Any]:
    return _with_page(
        {
            "identifiers": [f"spkidd_{node}"],
            "name": f"spkidd {node}",
            "manufacturer": "spkidd",
            "model": "Speaker identification daemon",
            "sw_version": __version__,
        },
        page_url,
    )


def _source_device(node: str, source: str, page_url: str | None) -> dict[str, Any]:
    return _with_page(
        {
            "identifiers": [f"spkidd_{node}_{source}"],
            "name": f"spkidd {node} {source}",
            "manufacturer": "spkidd",
            "model": "Speaker identification stream",
            "sw_version": __version__,
            "via_device": f"spkidd_{node}",
        },
        page_url,
    )


def _with_page(device: dict[str, Any], page_url: str | None) -> dict[str, Any]:
    """Home Assistant's device page links to the household's page ("Visit") when it knows where that is."""
    return device if page_url is None else {**device, "configuration_url": page_url}


ORIGIN = MappingProxyType({"name": "spkidd", "sw_version": __version__})


def speaker_options(speakers: Sequence[str]) -> list[str]:
    """The enum sensor's options: enrolled speakers, then `unrecognized` and `none`, each once."""
    options: list[str] = []
    for name in [*speakers, UNRECOGNIZED, NONE]:
        if name not in options:
            options.append(name)
    return options


SPEAKER_ATTRIBUTES = ("decision", "speaker", "confidence", "top_k", "utterance_id", "since", "speakers")
"""The "Current speaker" sensor's attributes in Home Assistant: the state JSON, with its `state` renamed
`decision` (Home Assistant never shows an attribute named `state`), and the enrolled `speakers` (2024.1 drops
the sensor's `options`, so this is the list every supported version shows)."""


def _speaker_attributes_template() -> str:
    """A Jinja template from the state JSON to SPEAKER_ATTRIBUTES. Everything, the speaker list included, comes
    from the payload: Home Assistant 2024.1 keeps the template it first saw, so a list written into the template
    would stay stale until Home Assistant restarts."""
    renamed = {"decision": "state"}
    pairs = [f"'{name}': value_json.{renamed.get(name, name)}" for name in SPEAKER_ATTRIBUTES]
    return "{{ {" + ", ".join(pairs) + "} | tojson }}"


SPEAKER_ATTRIBUTES_TEMPLATE = _speaker_attributes_template()


def discovery_messages(
    topics: Topics, sources: Sequence[str], speakers: Sequence[str], page_url: str | None = None
) -> dict[str, dict[str, Any]]:
    """Home Assistant discovery configs by topic: the bridge's status, and four entities per source; `page_url`:
    the household's web page as other devices open it."""
    messages = _bridge_status(topics, page_url)
    for source in sources:
        messages.update(_source_entities(topics, source, speakers, page_url))
    return messages


def _bridge_status(topics: Topics, page_url: str | None) -> dict[str, dict[str, Any]]:
    """The daemon's own connectivity sensor, on the bridge device every source's device hangs from."""
    bridge_id = f"spkidd_{topics.node}_status"
    return {
        topics.discovery("binary_sensor", bridge_id): {
            "name": "Status",
            "unique_id": bridge_id,
            "state_topic": topics.status,
            "payload_on": ONLINE.decode(),
            "payload_off": OFFLINE.decode(),
            "device_class": "connectivity",
            "entity_category": "diagnostic",
            "device": _bridge_device(topics.node, page_url),
            "origin": dict(ORIGIN),
        }
    }


def _source_entities(
    topics: Topics, source: str, speakers: Sequence[str], page_url: str | None
) -> dict[str, dict[str, Any]]:
    """One source's device: current speaker, someone speaking, the event entity and the confidence; each is
    available only while both the daemon and the source are online."""
    common = {
        "qos": 1,
        "availability": [{"topic": topics.status}, {"topic": topics.source_status(source)}],
        "availability_mode": "all",
        "payload_available": ONLINE.decode(),
        "payload_not_available": OFFLINE.decode(),
        "device": _source_device(topics.node, source, page_url),
        "origin": dict(ORIGIN),
    }
    uid = f"spkidd_{topics.node}_{source}"
    speaker_topic = topics.speaker(source)
    return {
        topics.discovery("sensor", f"{uid}_speaker"): {
            "name": "Current speaker",
            "unique_id": f"{uid}_speaker",
            "state_topic": speaker_topic,
            "value_template": (
                f"{{{{ '{UNRECOGNIZED}' if value_json.speaker == '{UNKNOWN}' else value_json.speaker }}}}"
            ),
            "json_attributes_topic": speaker_topic,
            "json_attributes_template": SPEAKER_ATTRIBUTES_TEMPLATE,
            "device_class": "enum",
            "options": speaker_options(speakers),
            "icon": "mdi:account-voice",
            **common,
        },
        topics.discovery("binary_sensor", f"{uid}_speaking"): {
            "name": "Someone speaking",
            "unique_id": f"{uid}_speaking",
            "state_topic": topics.speaking(source),
            "payload_on": "ON",
            "payload_off": "OFF",
            "device_class": "sound",
            **common,
        },
        topics.discovery("event", f"{uid}_event"): {
            "name": "Speaker",
            "unique_id": f"{uid}_event",
            "state_topic": topics.event(source),
            "event_types": list(EVENT_TYPES),
            "icon": "mdi:account-voice",
            **common,
        },
        topics.discovery("sensor", f"{uid}_confidence"): {
            "name": "Speaker confidence",
            "unique_id": f"{uid}_confidence",
            "state_topic": speaker_topic,
            "value_template": (
                "{{ (value_json.confidence * 100) | round(1) if value_json.confidence is number else 'None' }}"
            ),
            "unit_of_measurement": "%",
            "state_class": "measurement",
            "entity_category": "diagnostic",
            **common,
        },
    }
