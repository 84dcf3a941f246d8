"""The MQTT contract, frozen: a known conversation through a real Mosquitto gives exactly these topics, flags
and JSON keys, in this order."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from spkidd.events import SourceStatus
from spkidd.mqtt import MqttPublisher
from tests.support.hass import assert_discovery_accepted
from tests.support.mosquitto import Collector, Received, running_mosquitto
from tests.support.mqtt_events import EVENT_KEYS, STATE_KEYS, activity, identification, mqtt_settings

DISCOVERY = [
    "homeassistant/binary_sensor/spkidd_testnode_status/config",
    "homeassistant/sensor/spkidd_testnode_kitchen_speaker/config",
    "homeassistant/binary_sensor/spkidd_testnode_kitchen_speaking/config",
    "homeassistant/event/spkidd_testnode_kitchen_event/config",
    "homeassistant/sensor/spkidd_testnode_kitchen_confidence/config",
]
P = "spkidd/testnode"


def _summary(m: Received) -> tuple[str, str, bool]:
    """Topic, the payload's kind (its state, event type or raw text) and the retain flag."""
    if m.topic.endswith("/speaker"):
        body = json.loads(m.payload)
        assert list(body) == STATE_KEYS and body["v"] == 1 and body["speakers"] == ["alice", "bob"]
        return m.topic, f"{body['state']}:{body['speaker']}", m.retain
    if m.topic.endswith("/event"):
        body = json.loads(m.payload)
        assert list(body) == EVENT_KEYS and body["v"] == 1
        return m.topic, f"{body['event_type']}:{body['speaker']}", m.retain
    if m.topic.endswith("/config"):
        return m.topic, "discovery", m.retain
    return m.topic, m.payload.decode(), m.retain


async def test_known_conversation_gives_the_frozen_topics_and_keys(tmp_path: Path) -> None:
    with running_mosquitto(tmp_path) as broker:
        async with Collector(broker.port, ["spkidd/#", "homeassistant/#"]) as sub:
            publisher = MqttPublisher(mqtt_settings(broker.port), "testnode", ["kitchen"], ["alice", "bob"])
            publisher.start()
            await _connecting_announces_discovery_then_states(sub)
            sub.messages.clear()
            await _a_conversation_gives_the_frozen_sequence(sub, publisher)
        await _a_late_subscriber_sees_the_retained_states_only(broker.port)


async def _connecting_announces_discovery_then_states(sub: Collector) -> None:
    """Discovery first (every config one Home Assistant accepts), then each topic's state, then `online`; QoS 1."""
    await sub.wait_for(lambda ms: any(m.topic == f"{P}/status" for m in ms))
    connect = [_summary(m) for m in sub.messages]
    assert_discovery_accepted({m.topic: json.loads(m.payload) for m in sub.messages if m.topic in DISCOVERY})
    assert all(q == 1 for q in (m.qos for m in sub.messages))
    assert connect == [
        *((t, "discovery", False) for t in DISCOVERY),
        (f"{P}/kitchen/status", "offline", False),
        (f"{P}/kitchen/speaking", "OFF", False),
        (f"{P}/kitchen/speaker", "none:none", False),
        (f"{P}/status", "online", False),
    ]


async def _a_conversation_gives_the_frozen_sequence(sub: Collector, publisher: MqttPublisher) -> None:
    """Two utterances (named; named, changed, then unknown), then a clean close: every message in order."""
    publisher.handle(SourceStatus("kitchen", True))
    publisher.handle(activity("kitchen", 1, True))
    publisher.handle(identification("kitchen", 1, "identified", "alice", 0.8))
    publisher.handle(identification("kitchen", 1, "final", "alice", 0.9))
    publisher.handle(activity("kitchen", 1, False))
    publisher.handle(activity("kitchen", 2, True))
    publisher.handle(identification("kitchen", 2, "identified", "bob", 0.7))
    publisher.handle(identification("kitchen", 2, "changed", "alice", 0.75))
    publisher.handle(identification("kitchen", 2, "unknown", "unknown", 0.3))
    publisher.handle(activity("kitchen", 2, False))
    await sub.wait_for(lambda ms: any(_summary(m)[1] == "none:none" for m in ms), timeout=10)
    await publisher.close()
    await sub.wait_for(lambda ms: ms[-1].topic == f"{P}/status")
    assert [_summary(m) for m in sub.messages] == [
        (f"{P}/kitchen/status", "online", False),
        (f"{P}/kitchen/speaking", "ON", False),
        (f"{P}/kitchen/event", "identified:alice", False),
        (f"{P}/kitchen/speaker", "identified:alice", False),
        (f"{P}/kitchen/event", "final:alice", False),
        (f"{P}/kitchen/speaking", "OFF", False),
        (f"{P}/kitchen/speaking", "ON", False),
        (f"{P}/kitchen/event", "identified:bob", False),
        (f"{P}/kitchen/speaker", "identified:bob", False),
        (f"{P}/kitchen/event", "changed:alice", False),
        (f"{P}/kitchen/speaker", "identified:alice", False),
        (f"{P}/kitchen/event", "unknown:unknown", False),
        (f"{P}/kitchen/speaker", "unknown:unknown", False),
        (f"{P}/kitchen/speaking", "OFF", False),
        (f"{P}/kitchen/speaker", "none:none", False),
        (f"{P}/status", "offline", False),
    ]


async def _a_late_subscriber_sees_the_retained_states_only(port: int) -> None:
    """A late subscriber sees the retained state of every topic, and no events."""
    async with Collector(port, ["spkidd/#"]) as late:
        await late.wait_for(lambda ms: len(ms) >= 4)
        await asyncio.sleep(0.3)
        assert sorted(_summary(m) for m in late.messages) == [
            (f"{P}/kitchen/speaker", "none:none", True),
            (f"{P}/kitchen/speaking", "OFF", True),
            (f"{P}/kitchen/status", "online", True),
            (f"{P}/status", "offline", True),
        ]
