"""A household that changes under a running `spkidd run` and a real Home Assistant 2024.1.6 (scripts/install-hass.sh),
neither restarted, asserted through Home Assistant's own API: the "Current speaker" sensors' `speakers` attribute
follows an enrollment with `spkidd enroll` and SIGHUP, and a forget and renames on the household page, while the
entities keep their registry entries and a user's customization; a source removed by a reload leaves Home Assistant
without its entities and with a log free of template and JSON errors.

Home Assistant 2024.1 keeps a discovered sensor's first attributes template whatever discovery says later, so this
is what only a real Home Assistant shows. The sources play silence: no speech, no new decision, so only the
republished state can carry a new list."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from spkidd.modelfile import load_model
from tests.conftest import TRAIN_SENTENCES
from tests.support import hass as ha
from tests.support.daemon import SPKIDD, DaemonProcess, conversation, file_source, random_model, write_config
from tests.support.mosquitto import Collector, free_port, running_mosquitto, wait_port
from tests.support.page_http import change
from tests.support.polling import until

pytestmark = pytest.mark.slow

NODE = "changes"
SOURCES = ("kitchen", "hall")
TRAINED = ["alice", "bob", "Guest"]
CUSTOM_NAME = "Who talks in the kitchen"
SHOWN_S = 20.0
"""How long Home Assistant may take to show a change: the user's report waited this long in vain."""
ROLES = ("speaker", "speaking", "event", "confidence")
"""What ends each entity's unique id, spkidd_<node>_<source>_<role>."""


class HomeAssistant(ha.HomeAssistant):
    """The shared helper, plus what a user does in the entity settings dialog."""

    async def rename_entity(self, entity_id: str, name: str) -> None:
        await self._websocket_command({"type": "config/entity_registry/update", "entity_id": entity_id, "name": name})


def silence(path: Path, seconds: float = 2.0) -> Path:
    sf.write(path, np.zeros(int(seconds * 16000), np.float32), 16000, subtype="PCM_16")
    return path


def file_sources(wav: Path, names: tuple[str, ...]) -> str:
    return "".join(file_source(wav, name) for name in names)


async def registry(hass: ha.HomeAssistant, source: str) -> dict[str, dict[str, Any]]:
    """The source's entities' registry entries by role (speaker, speaking, ...), found by spkidd's unique ids."""
    by_unique_id = {e["unique_id"]: e for e in await hass.entity_registry() if e["platform"] == "mqtt"}
    return {role: entry for role in ROLES if (entry := by_unique_id.get(f"spkidd_{NODE}_{source}_{role}"))}


def speakers_shown(states: dict[str, dict[str, Any]], sensors: list[str], speakers: list[str]) -> bool:
    """Every given "Current speaker" sensor is available and its `speakers` attribute is exactly `speakers`."""
    return all(
        states.get(s, {}).get("state") not in (None, "unavailable")
        and states[s]["attributes"].get("speakers") == speakers
        for s in sensors
    )


def complaints(log: str) -> list[str]:
    """Home Assistant's warnings and errors about MQTT, templates or JSON."""
    pattern = re.compile(r"\S+ \S+ (WARNING|ERROR|CRITICAL) ")
    words = ("mqtt", "template", "json")
    return [line for line in log.splitlines() if pattern.match(line) and any(w in line.lower() for w in words)]


async def test_home_assistant_follows_household_changes_and_a_removed_source(tmp_path: Path) -> None:
    assert ha.installed(), f"Home Assistant is not installed in {ha.HASS_VENV}: run bash scripts/install-hass.sh"
    model = random_model(tmp_path / "voices.safetensors", TRAINED)
    quiet = silence(tmp_path / "silence.wav")
    voice = conversation(tmp_path, [("dave", TRAIN_SENTENCES[0]), ("dave", TRAIN_SENTENCES[1])], lead_s=0.3)
    web_port = free_port()
    web = f"[web]\nenabled = true\nport = {web_port}\n"
    with running_mosquitto(tmp_path) as broker:
        mqtt = f'broker = "external"\nhost = "127.0.0.1"\nport = {broker.port}\n'
        config = tmp_path / "config.toml"
        write_config(config, model, file_sources(quiet, SOURCES), mqtt, web, instance=NODE)
        hass = HomeAssistant(tmp_path / "homeassistant")
        daemon: DaemonProcess | None = None
        hass.start()
        try:
            await hass.onboard()
            await hass.add_mqtt(broker.port)
            async with Collector(broker.port, ["spkidd/#", "homeassistant/#"]) as sub:
                daemon = DaemonProcess(config, tmp_path / "daemon.log")
                await asyncio.to_thread(wait_port, web_port, lambda: daemon.process.poll() is None, 90)
                kitchen, hall = await _entities_appear(hass)
                sensors = [kitchen["speaker"]["entity_id"], hall["speaker"]["entity_id"]]
                await hass.rename_entity(sensors[0], CUSTOM_NAME)

                await _enroll_with_the_cli_and_sighup(hass, daemon, model, voice, sensors)
                await _forget_and_rename_on_the_page(hass, model, f"http://127.0.0.1:{web_port}", sensors)
                assert await registry(hass, "kitchen") == {
                    **kitchen,
                    "speaker": {**kitchen["speaker"], "name": CUSTOM_NAME},
                }, "the entities were neither removed nor made again, and the user's name for one stays"
                states = await hass.states()
                assert states[sensors[0]]["attributes"]["friendly_name"] == CUSTOM_NAME

                write_config(config, model, file_sources(quiet, SOURCES[:1]), mqtt, web, instance=NODE)
                daemon.signal(signal.SIGHUP)
                await _a_removed_source_leaves_home_assistant(hass, sub, hall)
                await _later_messages_are_read(hass, f"http://127.0.0.1:{web_port}", sensors[0])
        finally:
            if daemon is not None:
                daemon.kill()
            hass.stop()
    assert complaints(hass.log_text()) == []
    assert daemon is not None and "Traceback" not in daemon.text(), daemon.text()[-3000:]


async def _entities_appear(hass: HomeAssistant) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Both sources' entities, their "Current speaker" listing the trained speakers."""
    await hass.wait_states(
        lambda states: [s["attributes"].get("speakers") for s in states.values()].count(TRAINED) == 2, 90
    )
    deadline = time.monotonic() + 30
    while len(kitchen := await registry(hass, "kitchen")) + len(hall := await registry(hass, "hall")) < 2 * len(ROLES):
        assert time.monotonic() < deadline, (kitchen, hall)
        await asyncio.sleep(0.3)
    return kitchen, hall


async def _enroll_with_the_cli_and_sighup(
    hass: HomeAssistant, daemon: DaemonProcess, model: Path, voice: Path, sensors: list[str]
) -> None:
    """`spkidd enroll` on the model file, then SIGHUP, as the CLI's help says."""
    command = [SPKIDD, "enroll", str(model), str(voice), "--speaker", "CliPerson", "--force"]
    enrolled = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True)
    assert enrolled.returncode == 0, enrolled.stderr
    daemon.signal(signal.SIGHUP)
    await hass.wait_states(lambda states: speakers_shown(states, sensors, [*TRAINED, "CliPerson"]), SHOWN_S)


async def _forget_and_rename_on_the_page(hass: HomeAssistant, model: Path, base: str, sensors: list[str]) -> None:
    """The user's report: Guest renamed Zoë and CliPerson renamed Bob (once bob is forgotten) on the page."""
    steps = [
        ("/api/voices/forget", {"speaker": "bob"}, ["alice", "Guest", "CliPerson"]),
        ("/api/voices/rename", {"speaker": "Guest", "new_name": "Zoë"}, ["alice", "Zoë", "CliPerson"]),
        ("/api/voices/rename", {"speaker": "CliPerson", "new_name": "Bob"}, ["alice", "Zoë", "Bob"]),
    ]
    for path, body, speakers in steps:
        status, answer = await asyncio.to_thread(change, base, path, body)
        assert status == 200 and load_model(model).labels == speakers, (path, body, answer)
        await hass.wait_states(lambda states, speakers=speakers: speakers_shown(states, sensors, speakers), SHOWN_S)


async def _a_removed_source_leaves_home_assistant(
    hass: HomeAssistant, sub: Collector, hall: dict[str, dict[str, Any]]
) -> None:
    """The reload removes hall: its entities leave Home Assistant's states and registry, and its retained topics
    are emptied on the broker."""
    gone = {entry["entity_id"] for entry in hall.values()}
    await hass.wait_states(lambda states: not gone & set(states), timeout=30)
    assert await registry(hass, "hall") == {}
    topics = [f"spkidd/{NODE}/hall/{name}" for name in ("status", "speaking", "speaker")]
    await sub.wait_for(lambda ms: all(sub.on(t) and sub.on(t)[-1].payload == b"" for t in topics), timeout=30)


async def _later_messages_are_read(hass: HomeAssistant, base: str, sensor: str) -> None:
    """One more rename, shown by Home Assistant and in its log: whatever the emptied topics made Home Assistant
    log came before, so the log checked afterwards is complete."""
    status, answer = await asyncio.to_thread(change, base, "/api/voices/rename", {"speaker": "Bob", "new_name": "Rob"})
    assert status == 200, answer
    await hass.wait_states(lambda states: speakers_shown(states, [sensor], ["alice", "Zoë", "Rob"]), SHOWN_S)
    received = f"message on spkidd/{NODE}/kitchen/speaker"
    await until(
        lambda: any(received in line and '"Rob"' in line for line in hass.log_text().splitlines()),
        "Home Assistant's log to show the last message",
        10,
    )
