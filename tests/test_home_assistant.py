"""`spkidd run` against a real Home Assistant 2024.1.6 (installed by scripts/install-hass.sh into .hass-venv),
sharing one Mosquitto: everything is asserted through Home Assistant's own API — the entities and their devices,
states that follow a conversation, `unrecognized` for a stranger, the documented attributes, availability on
SIGTERM / kill -9 / restart, rediscovery after a Home Assistant restart, the docs' automation running exactly once
per event, and a log without MQTT warnings; and the default set-up, Home Assistant on spkidd's embedded broker,
through a stop and a start of spkidd."""

from __future__ import annotations

import asyncio
import json
import re
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from spkidd.modelfile import load_model
from spkidd.mqtt.payloads import SPEAKER_ATTRIBUTES
from tests.conftest import TRAIN_SENTENCES
from tests.support import hass as ha
from tests.support.daemon import REPO, DaemonProcess, conversation, file_source, write_config
from tests.support.mosquitto import Collector, Received, free_port, running_mosquitto, wait_port
from tests.support.polling import until
from tests.support.sequences import is_subsequence

DOCS = REPO / "docs" / "mqtt-and-home-assistant.md"
NODE, SOURCE = "livingroom", "kitchen"
PAGE_URL = "http://spkidd.test:8730/"
"""[web] public_url: where Home Assistant's device pages send a user ("Visit")."""
"""The docs' automation names this instance and source: the test uses them so it loads that YAML unchanged."""
P = f"spkidd/{NODE}"
TURNS = [("alice", TRAIN_SENTENCES[0]), ("erin", TRAIN_SENTENCES[1]), ("erin", TRAIN_SENTENCES[2])]
TURNS += [("bob", TRAIN_SENTENCES[6])]
QUIET_END_S = 60.0
"""Silence after the conversation: the source stays online and idle while the test restarts Home Assistant."""

HELPERS = """\
counter:
  kitchen_light_turned_on:
    initial: 0
light:
  - platform: template
    lights:
      kitchen:
        turn_on:
          service: counter.increment
          target:
            entity_id: counter.kitchen_light_turned_on
        turn_off: []
automation: !include automations.yaml
"""
"""The docs' automation turns `light.kitchen` on: here a template light that counts how often it is asked to."""
COUNTER = "counter.kitchen_light_turned_on"
HA_STATUS = "homeassistant/status"


def docs_automation() -> str:
    """The YAML block under the docs' automation heading, as a user pastes it into automations.yaml."""
    text = DOCS.read_text()
    section = text[text.index("### An automation that runs once per utterance") :]
    match = re.search(r"```yaml\n(.*?)```", section, re.DOTALL)
    assert match is not None, f"{DOCS}: no YAML block under the automation heading"
    return match.group(1)


def documented_speaker_attributes() -> list[str]:
    """The attribute names the docs promise for "Current speaker": the list after "Its attributes are"."""
    text = DOCS.read_text()
    start = text.index("Its attributes are")
    return re.findall(r"`([a-z_]+)`", text[start : text.index(":", start)])


def quiet_ending_conversation(directory: Path) -> Path:
    wav = conversation(directory, TURNS)
    audio, rate = sf.read(wav, dtype="float32")
    sf.write(wav, np.concatenate([audio, np.zeros(int(QUIET_END_S * rate), np.float32)]), rate, subtype="PCM_16")
    return wav


@dataclass(frozen=True)
class Entities:
    """Entity ids by role, from Home Assistant's entity registry (found by the unique ids spkidd publishes)."""

    status: str
    speaker: str
    speaking: str
    event: str
    confidence: str

    @property
    def of_source(self) -> list[str]:
        return [self.speaker, self.speaking, self.event, self.confidence]


def _events(messages: list[Received]) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in messages if m.topic == f"{P}/{SOURCE}/event"]


def _alice_identified(messages: list[Received]) -> int:
    return sum(e["event_type"] == "identified" and e["speaker"] == "alice" for e in _events(messages))


def _conversation_done(messages: list[Received], runs: int) -> bool:
    """The last turn (bob) of the `runs`-th replay has had its final event."""
    return sum(e["final"] and e["utterance_id"].endswith(f"{len(TURNS):06d}") for e in _events(messages)) >= runs


async def _entities(hass: ha.HomeAssistant) -> Entities:
    by_unique_id = {e["unique_id"]: e["entity_id"] for e in await hass.entity_registry() if e["platform"] == "mqtt"}
    uid = f"spkidd_{NODE}_{SOURCE}"
    return Entities(
        status=by_unique_id[f"spkidd_{NODE}_status"],
        speaker=by_unique_id[f"{uid}_speaker"],
        speaking=by_unique_id[f"{uid}_speaking"],
        event=by_unique_id[f"{uid}_event"],
        confidence=by_unique_id[f"{uid}_confidence"],
    )


async def _availability(hass: ha.HomeAssistant, entities: Entities, available: bool, timeout: float = 30) -> None:
    def matches(states: dict[str, dict[str, Any]]) -> bool:
        gone = [states.get(e, {}).get("state") == "unavailable" for e in entities.of_source]
        return all(not g for g in gone) if available else all(gone)

    await hass.wait_states(matches, timeout)


SETTLE_S = 2.0
"""How long a count must stay put to prove "exactly once": a late automation run (for a restored entity or a
replayed event) follows its trigger within well under this."""


async def _automation_runs_match_events(hass: ha.HomeAssistant, sub: Collector) -> None:
    """The light was turned on once per `identified` event naming alice: never for a restored or old one. Waits
    for the runs the events call for, then proves no other one follows."""
    expected = _alice_identified(sub.messages)
    await hass.wait_states(lambda states: int(float(states[COUNTER]["state"])) >= expected, timeout=30)
    await asyncio.sleep(SETTLE_S)
    states = await hass.states()
    assert int(float(states[COUNTER]["state"])) == expected, (
        states[COUNTER],
        [(e["event_type"], e["speaker"], e["utterance_id"]) for e in _events(sub.messages)],
    )


async def _check_devices(hass: ha.HomeAssistant, entities: Entities) -> None:
    devices = {d["id"]: d for d in await hass.device_registry()}
    by_identifier = {tuple(i) for d in devices.values() for i in d["identifiers"]}
    assert ("mqtt", f"spkidd_{NODE}") in by_identifier and ("mqtt", f"spkidd_{NODE}_{SOURCE}") in by_identifier
    registry = {e["entity_id"]: e for e in await hass.entity_registry()}
    bridge = devices[registry[entities.status]["device_id"]]
    assert bridge["name"] == f"spkidd {NODE}" and bridge["manufacturer"] == "spkidd"
    source_devices = {registry[e]["device_id"] for e in entities.of_source}
    assert len(source_devices) == 1
    source = devices[source_devices.pop()]
    assert source["name"] == f"spkidd {NODE} {SOURCE}" and source["via_device_id"] == bridge["id"]
    assert bridge["configuration_url"] == source["configuration_url"] == PAGE_URL, "the devices link to the page"


def _conversation_ended(recorder: ha.StateRecorder, entities: Entities) -> bool:
    """Home Assistant has shown bob, the last speaker, and then `speaking` off."""
    changes = recorder.changes
    speaking = [c.new for c in changes if c.entity_id == entities.speaking and c.new in ("on", "off")]
    return speaking[-1:] == ["off"] and any(c.entity_id == entities.speaker and c.new == "bob" for c in changes)


def _check_conversation(recorder: ha.StateRecorder, entities: Entities, labels: list[str]) -> None:
    changes = recorder.changes
    names = [c.new for c in changes if c.entity_id == entities.speaker and c.new not in ("unavailable", "unknown")]
    assert is_subsequence(["alice", "unrecognized", "bob"], names), names
    assert names[-1] in ("bob", "none"), names
    speaking = [c.new for c in changes if c.entity_id == entities.speaking and c.new in ("on", "off")]
    assert speaking.count("on") >= len(TURNS) - 1 and speaking[-1] == "off", speaking
    events = [c.attributes.get("event_type") for c in changes if c.entity_id == entities.event]
    assert {"identified", "final", "unknown"} <= set(events), events
    alice = next(c for c in changes if c.entity_id == entities.speaker and c.new == "alice")
    assert list(SPEAKER_ATTRIBUTES) == documented_speaker_attributes()
    shown = {k: v for k, v in alice.attributes.items() if k in SPEAKER_ATTRIBUTES}
    assert set(shown) == set(SPEAKER_ATTRIBUTES), alice.attributes
    assert shown["decision"] == "identified" and shown["speaker"] == "alice" and shown["speakers"] == labels
    assert 0 < shown["confidence"] <= 1 and "alice" in shown["top_k"]
    assert set(alice.attributes) - set(SPEAKER_ATTRIBUTES) <= {"friendly_name", "icon", "device_class", "options"}
    stranger = next(c for c in changes if c.entity_id == entities.speaker and c.new == "unrecognized")
    assert (stranger.attributes["decision"], stranger.attributes["speaker"]) == ("unknown", "unknown")


def _check_discovery_schemas(messages: list[Received]) -> None:
    """Every discovery config the daemon published, through Home Assistant's own schemas."""
    configs = {m.topic: json.loads(m.payload) for m in messages if m.topic.endswith("/config") and m.payload}
    assert len(configs) == 5, sorted(configs)
    ha.assert_discovery_accepted(configs)


def _mqtt_complaints(log: str) -> list[str]:
    return [
        line
        for line in log.splitlines()
        if re.match(r"\S+ \S+ (WARNING|ERROR|CRITICAL) ", line) and ("mqtt" in line.lower() or "template" in line)
    ]


@pytest.mark.slow
async def test_home_assistant_follows_the_daemon(tmp_path: Path, household_model: Path) -> None:
    assert ha.installed(), f"Home Assistant is not installed in {ha.HASS_VENV}: run bash scripts/install-hass.sh"
    wav = quiet_ending_conversation(tmp_path)
    labels = load_model(household_model).labels
    with running_mosquitto(tmp_path) as broker:
        hass = ha.HomeAssistant(tmp_path / "homeassistant", HELPERS)
        (hass.directory / "automations.yaml").write_text("[]\n")
        sources = file_source(wav, SOURCE, loop=None)
        mqtt = f'broker = "external"\nhost = "127.0.0.1"\nport = {broker.port}\n'
        page = f'[web]\nenabled = true\nport = {free_port()}\npublic_url = "{PAGE_URL}"\n'
        config = write_config(tmp_path / "config.toml", household_model, sources, mqtt, page, instance=NODE)
        daemons: list[DaemonProcess] = []

        def start_daemon() -> DaemonProcess:
            daemons.append(DaemonProcess(config, tmp_path / "daemon.log"))
            return daemons[-1]

        hass.start()
        try:
            await hass.onboard()
            await hass.add_mqtt(broker.port)
            # As a user does: MQTT first, then the docs' automation pasted into automations.yaml and reloaded.
            (hass.directory / "automations.yaml").write_text(docs_automation())
            await hass.call_service("automation", "reload")
            async with Collector(broker.port, ["spkidd/#", "homeassistant/#"]) as sub, ha.StateRecorder(hass) as rec:
                daemon = start_daemon()
                entities = await _a_conversation_is_followed(hass, sub, rec, labels)
                await _sigterm_makes_the_entities_unavailable(hass, daemon, entities)
                await _a_killed_daemon_leaves_its_last_will(hass, sub, entities, start_daemon)
                await _a_restarted_daemon_is_followed_again(hass, sub, entities, start_daemon)
                await _a_restarted_home_assistant_rediscovers(hass, sub, rec, entities)
        finally:
            for daemon in daemons:
                daemon.kill()
            hass.stop()
    assert _mqtt_complaints(hass.log_text()) == []


async def _a_conversation_is_followed(
    hass: ha.HomeAssistant, sub: Collector, rec: ha.StateRecorder, labels: list[str]
) -> Entities:
    """A conversation: the entities, their devices, the states it goes through, the automation."""
    await sub.wait_for(lambda ms: _conversation_done(ms, 1), timeout=180)
    entities = await _entities(hass)
    await _check_devices(hass, entities)
    await until(lambda: _conversation_ended(rec, entities), "Home Assistant to show the conversation's end", 30)
    _check_conversation(rec, entities, labels)
    _check_discovery_schemas(sub.messages)
    await _automation_runs_match_events(hass, sub)
    return entities


async def _sigterm_makes_the_entities_unavailable(
    hass: ha.HomeAssistant, daemon: DaemonProcess, entities: Entities
) -> None:
    """SIGTERM: a clean exit, and Home Assistant shows the source's entities unavailable."""
    daemon.signal(signal.SIGTERM)
    assert await asyncio.to_thread(daemon.wait, 60) == 0
    await _availability(hass, entities, available=False)
    assert (await hass.states())[entities.status]["state"] == "off"


async def _a_killed_daemon_leaves_its_last_will(
    hass: ha.HomeAssistant, sub: Collector, entities: Entities, start_daemon: Callable[[], DaemonProcess]
) -> None:
    """Started again, and killed (-9) as soon as it has said "alice" (identified, no final yet): the last will
    makes the entities unavailable."""
    daemon = start_daemon()
    await _availability(hass, entities, available=True, timeout=90)
    said = _alice_identified(sub.messages)
    await sub.wait_for(lambda ms: _alice_identified(ms) > said, timeout=60)
    daemon.kill()
    await _availability(hass, entities, available=False)


async def _a_restarted_daemon_is_followed_again(
    hass: ha.HomeAssistant, sub: Collector, entities: Entities, start_daemon: Callable[[], DaemonProcess]
) -> None:
    """Started again: available, the event entity shows that "alice" again, and the automation does not run for
    it; the conversation is followed again."""
    start_daemon()
    await _availability(hass, entities, available=True, timeout=90)
    await sub.wait_for(lambda ms: _conversation_done(ms, 2), timeout=180)
    await _automation_runs_match_events(hass, sub)


async def _a_restarted_home_assistant_rediscovers(
    hass: ha.HomeAssistant, sub: Collector, rec: ha.StateRecorder, entities: Entities
) -> None:
    """Home Assistant restarts while spkidd idles: spkidd rediscovers, entities come back, and the automation does
    not run for the event entity's restored last event."""
    counter_before = (await hass.states())[COUNTER]["state"]
    configs_before = len([m for m in sub.messages if m.topic.endswith("/config")])
    hass.stop()
    hass.start()
    await rec.resubscribed()
    await sub.wait_for(lambda ms: any(m.topic == HA_STATUS and m.payload == b"online" for m in ms))
    await sub.wait_for(lambda ms: len([m for m in ms if m.topic.endswith("/config")]) >= configs_before + 5)
    await _availability(hass, entities, available=True)
    await _automation_runs_match_events(hass, sub)
    assert (await hass.states())[COUNTER]["state"] == counter_before
    assert _alice_identified(sub.messages) >= 3


async def _discovered(hass: ha.HomeAssistant) -> Entities:
    """The entities, once Home Assistant has registered all of them."""
    while True:
        try:
            return await _entities(hass)
        except KeyError:
            await asyncio.sleep(0.5)


async def _a_name_is_shown(hass: ha.HomeAssistant, entities: Entities, labels: list[str]) -> None:
    await hass.wait_states(lambda states: states[entities.speaker]["state"] in labels, timeout=120)


@pytest.mark.slow
async def test_home_assistant_on_the_embedded_broker(tmp_path: Path, household_model: Path) -> None:
    """The default set-up: Home Assistant connects to the broker spkidd starts. A stopped spkidd takes its broker
    along, so Home Assistant loses the connection; it shows every spkidd entity `unavailable` (the bridge's Status
    included) and, when spkidd starts again, reconnects by itself and follows the speakers again."""
    assert ha.installed(), f"Home Assistant is not installed in {ha.HASS_VENV}: run bash scripts/install-hass.sh"
    labels = load_model(household_model).labels
    port = free_port()
    sources = file_source(conversation(tmp_path, TURNS), SOURCE)
    config = write_config(
        tmp_path / "config.toml",
        household_model,
        sources,
        'broker = "embedded"',
        f"[embedded_broker]\nport = {port}",
        instance=NODE,
    )
    hass = ha.HomeAssistant(tmp_path / "homeassistant")
    daemons: list[DaemonProcess] = []

    def start_daemon() -> None:
        daemons.append(DaemonProcess(config, tmp_path / "daemon.log"))
        wait_port(port, lambda: daemons[-1].process.poll() is None, timeout=60)

    start_daemon()
    hass.start()
    try:
        await hass.onboard()
        await hass.add_mqtt(port)
        entities = await asyncio.wait_for(_discovered(hass), 60)
        await _availability(hass, entities, available=True)
        await _a_name_is_shown(hass, entities, labels)
        daemons[-1].signal(signal.SIGTERM)
        assert await asyncio.to_thread(daemons[-1].wait, 60) == 0
        await hass.wait_states(
            lambda states: all(states[e]["state"] == "unavailable" for e in [entities.status, *entities.of_source]),
            timeout=60,
        )
        start_daemon()
        await hass.wait_states(lambda states: states[entities.status]["state"] == "on", timeout=120)
        await _availability(hass, entities, available=True)
        await _a_name_is_shown(hass, entities, labels)
    finally:
        for daemon in daemons:
            daemon.kill()
        hass.stop()
