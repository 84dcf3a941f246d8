"""docs/mqtt-and-home-assistant.md's recorder exclusion in a real Home Assistant 2024.1.6 (scripts/install-hass.sh):
the entity ids it names are ones spkidd's discovery really creates (found in Home Assistant's entity registry by the
unique ids spkidd publishes), and while `spkidd run` follows two rooms the recorder's database gets no row of the
entities it excludes, though Home Assistant showed each of them changing, and still rows of the ones it keeps."""

from __future__ import annotations

import fnmatch
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import TRAIN_SENTENCES
from tests.support import hass as ha
from tests.support.daemon import REPO, DaemonProcess, conversation, file_source, random_model, write_config
from tests.support.mosquitto import running_mosquitto
from tests.support.polling import until

DOCS = REPO / "docs" / "mqtt-and-home-assistant.md"
RECORDER = "## Home Assistant's recorder"
NODE, TV_ROOM, OTHER_ROOM = "livingroom", "kitchen", "hall"
"""The docs' example names its instance and the room with the TV; the hall is a room whose history is kept."""


def docs_recorder() -> dict[str, Any]:
    """The YAML block of the recorder section, as a user adds it to configuration.yaml."""
    text = DOCS.read_text()
    match = re.search(r"```yaml\n(.*?)```", text[text.index(RECORDER) :], re.DOTALL)
    assert match is not None, f"{DOCS}: no YAML block in the recorder section"
    config: dict[str, Any] = yaml.safe_load(match.group(1))
    return config


def excluded(exclude: dict[str, list[str]], entity_id: str) -> bool:
    """The recorder's rule for an entity id: named in `entities` or matched by one of `entity_globs`."""
    globs = exclude.get("entity_globs", [])
    return entity_id in exclude.get("entities", []) or any(fnmatch.fnmatchcase(entity_id, g) for g in globs)


async def spkidd_entities(hass: ha.HomeAssistant, count: int) -> dict[str, str]:
    """Entity id by unique id of spkidd's discovered entities, once all `count` are registered."""
    found: dict[str, str] = {}

    async def registered() -> bool:
        found.clear()
        for entry in await hass.entity_registry():
            if entry["platform"] == "mqtt" and entry["unique_id"].startswith(f"spkidd_{NODE}_"):
                found[entry["unique_id"]] = entry["entity_id"]
        return len(found) == count

    await until(registered, "spkidd's entities in Home Assistant's registry", timeout_s=90, every_s=0.5)
    return found


def recorded_rows(database: Path) -> dict[str, int]:
    """Rows of the recorder's `states` table by entity id (schema of 2023.4 and later: ids in `states_meta`)."""
    with sqlite3.connect(database) as db:
        query = "SELECT m.entity_id, COUNT(*) FROM states s JOIN states_meta m USING (metadata_id) GROUP BY 1"
        return {entity_id: rows for entity_id, rows in db.execute(query)}


@pytest.mark.slow
async def test_the_recorder_stores_no_row_of_the_entities_the_docs_exclude(tmp_path: Path) -> None:
    assert ha.installed(), f"Home Assistant is not installed in {ha.HASS_VENV}: run bash scripts/install-hass.sh"
    recorder = docs_recorder()
    exclude = recorder["recorder"]["exclude"]
    model = random_model(tmp_path / "model.safetensors", ["alice", "bob", "carol"])
    wav = conversation(tmp_path, [("alice", TRAIN_SENTENCES[0]), ("erin", TRAIN_SENTENCES[1])], gap_s=0.8)
    sources = "".join(file_source(wav, room, realtime=False, loop=True) for room in (TV_ROOM, OTHER_ROOM))
    with running_mosquitto(tmp_path) as broker:
        hass = ha.HomeAssistant(tmp_path / "homeassistant", yaml.safe_dump(recorder))
        mqtt = f'broker = "external"\nhost = "127.0.0.1"\nport = {broker.port}\n'
        config = write_config(tmp_path / "config.toml", model, sources, mqtt, instance=NODE)
        hass.start()
        try:
            await hass.onboard()
            await hass.add_mqtt(broker.port)
            async with ha.StateRecorder(hass) as changes:
                daemon = DaemonProcess(config, tmp_path / "daemon.log")
                try:
                    entities = await spkidd_entities(hass, count=9)
                    ids = set(entities.values())
                    assert set(exclude["entities"]) <= ids, (exclude["entities"], sorted(ids))
                    assert all(fnmatch.filter(ids, glob) for glob in exclude["entity_globs"]), sorted(ids)
                    dropped = {e for e in ids if excluded(exclude, e)}
                    changing = dropped | {e for e in ids - dropped if OTHER_ROOM in e}

                    def all_changed() -> bool:
                        seen = {c.entity_id for c in changes.changes if c.new not in (None, "unavailable", "unknown")}
                        return changing <= seen

                    await until(all_changed, "a state of every per-room entity", timeout_s=90, every_s=0.5)
                finally:
                    daemon.kill()
        finally:
            hass.stop()
    rows = recorded_rows(hass.directory / "home-assistant_v2.db")
    assert {e: rows.get(e, 0) for e in dropped} == dict.fromkeys(dropped, 0)
    assert all(rows.get(e, 0) > 0 for e in ids - dropped), (sorted(ids - dropped), rows)
    assert {e for e in ids - dropped if TV_ROOM in e} == set(), "the TV room keeps no per-room history"
