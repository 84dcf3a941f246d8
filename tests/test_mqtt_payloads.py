"""Unit tests of the pure payload builders: exact keys, the unknown -> unrecognized mapping, discovery."""

from __future__ import annotations

from spkidd.events import UNKNOWN
from spkidd.mqtt.payloads import (
    SPEAKER_ATTRIBUTES,
    SPEAKER_ATTRIBUTES_TEMPLATE,
    Topics,
    discovery_messages,
    encode,
    event_payload,
    none_state,
    speaker_options,
    state_from_identification,
    state_payload,
)
from tests.support import hass
from tests.support.mqtt_events import EVENT_KEYS, STATE_KEYS, identification

TOPICS = Topics("spkidd", "node1", "homeassistant")
SPEAKER_SENSOR = "homeassistant/sensor/spkidd_node1_kitchen_speaker/config"


def test_state_and_event_payload_keys() -> None:
    event = identification("kitchen", 3, "final", "alice", 0.912345)
    payload = event_payload(event)
    assert list(payload) == EVENT_KEYS
    assert payload["v"] == 1 and payload["confidence"] == 0.9123 and payload["final"] is True
    assert payload["time"].endswith("Z")
    state = state_payload(state_from_identification(event), ["alice", "bob"])
    assert list(state) == STATE_KEYS and state["speakers"] == ["alice", "bob"]
    assert (state["state"], state["speaker"], state["utterance_id"]) == ("identified", "alice", "kitchen-000003")


def test_unknown_and_none_states() -> None:
    unknown = state_payload(state_from_identification(identification("k", 1, "unknown", UNKNOWN, 0.3)), [])
    assert (unknown["state"], unknown["speaker"]) == ("unknown", "unknown")
    cleared = state_payload(none_state("k", "k-000001"), ["alice"])
    assert list(cleared) == STATE_KEYS
    assert (cleared["state"], cleared["speaker"], cleared["confidence"], cleared["top_k"]) == (
        "none",
        "none",
        None,
        {},
    )


def test_discovery_entities_devices_and_availability() -> None:
    messages = discovery_messages(TOPICS, ["kitchen", "hall"], ["alice", "bob"])
    assert sorted(messages) == sorted(
        [
            "homeassistant/binary_sensor/spkidd_node1_status/config",
            *(
                f"homeassistant/{c}/spkidd_node1_{s}_{e}/config"
                for s in ("kitchen", "hall")
                for c, e in (
                    ("sensor", "speaker"),
                    ("binary_sensor", "speaking"),
                    ("event", "event"),
                    ("sensor", "confidence"),
                )
            ),
        ]
    )
    for topic, config in messages.items():
        assert config["unique_id"] == topic.split("/")[2]
        assert config["origin"]["name"] == "spkidd"
        assert "device" in config
    bridge = messages["homeassistant/binary_sensor/spkidd_node1_status/config"]
    assert bridge["state_topic"] == "spkidd/node1/status" and "availability" not in bridge
    assert bridge["device"]["identifiers"] == ["spkidd_node1"] and bridge["device_class"] == "connectivity"
    speaker = messages["homeassistant/sensor/spkidd_node1_kitchen_speaker/config"]
    assert speaker["state_topic"] == speaker["json_attributes_topic"] == "spkidd/node1/kitchen/speaker"
    assert speaker["options"] == ["alice", "bob", "unrecognized", "none"]
    assert speaker["json_attributes_template"] == SPEAKER_ATTRIBUTES_TEMPLATE
    assert speaker["availability_mode"] == "all"
    assert [a["topic"] for a in speaker["availability"]] == ["spkidd/node1/status", "spkidd/node1/kitchen/status"]
    assert speaker["device"]["via_device"] == "spkidd_node1"
    assert "'unrecognized' if value_json.speaker == 'unknown'" in speaker["value_template"]
    event = messages["homeassistant/event/spkidd_node1_kitchen_event/config"]
    assert event["event_types"] == ["identified", "changed", "final", "unknown"]
    assert event["state_topic"] == "spkidd/node1/kitchen/event"
    speaking = messages["homeassistant/binary_sensor/spkidd_node1_hall_speaking/config"]
    assert (speaking["device_class"], speaking["payload_on"], speaking["payload_off"]) == ("sound", "ON", "OFF")
    confidence = messages["homeassistant/sensor/spkidd_node1_hall_confidence/config"]
    assert (confidence["unit_of_measurement"], confidence["state_class"], confidence["entity_category"]) == (
        "%",
        "measurement",
        "diagnostic",
    )


def test_speaker_options_never_repeat() -> None:
    assert speaker_options(["alice", "none", "alice"]) == ["alice", "none", "unrecognized"]


def test_speaker_attributes_rename_state_and_read_the_speaker_list_from_the_state() -> None:
    """Home Assistant never shows an attribute named `state`, and 2024.1 drops `options`: the template renames
    the one and reads the other from the state JSON, so the template is the same whoever is enrolled (2024.1 keeps
    the first template it saw; rendered by a real Home Assistant in tests/test_home_assistant_changes.py)."""
    template = SPEAKER_ATTRIBUTES_TEMPLATE
    assert template.startswith("{{ {") and template.endswith("} | tojson }}")
    assert "'decision': value_json.state," in template and "'speakers': value_json.speakers" in template
    assert [name for name in SPEAKER_ATTRIBUTES if f"'{name}':" not in template] == []
    assert "'state':" not in template
    speakers = {"sensor": ["alice", "bob"], "other": ["carol"]}
    configs = {k: discovery_messages(TOPICS, ["kitchen"], v)[SPEAKER_SENSOR] for k, v in speakers.items()}
    assert configs["sensor"]["json_attributes_template"] == configs["other"]["json_attributes_template"]
    assert configs["sensor"]["options"] != configs["other"]["options"]


def test_a_large_household_keeps_the_state_small() -> None:
    """The list rides in every state message, which is published on a change of decision only: 200 speakers with
    22-character names stay well under Home Assistant's 16 KiB limit for recording an entity's attributes."""
    speakers = [f"speaker-{n:03d}-abcdefghij" for n in range(200)]
    event = identification("kitchen", 3, "final", speakers[0], 0.9)
    assert len(encode(state_payload(state_from_identification(event), speakers))) < 8 * 1024


def test_discovery_passes_home_assistants_own_schemas() -> None:
    """Every discovery config through the installed Home Assistant's MQTT discovery schemas, with and without the
    web page's address on the devices."""
    messages = discovery_messages(TOPICS, ["kitchen", "hall"], ["alice", "bob"])
    assert len(messages) == 9
    assert not any("configuration_url" in m["device"] for m in messages.values())
    hass.assert_discovery_accepted(messages)
    linked = discovery_messages(TOPICS, ["kitchen", "hall"], ["alice", "bob"], "https://spkidd.local:8730/")
    assert {m["device"]["configuration_url"] for m in linked.values()} == {"https://spkidd.local:8730/"}
    hass.assert_discovery_accepted(linked)
