"""docs/mqtt-and-home-assistant.md's section on a TV in the room taken at its word: its automations are the tested one
(tests/test_home_assistant.py runs it in a real Home Assistant) with one more condition, the TV's media player, and
one on `unknown` events that pauses after each run; the unknown-clips setting it names is one config.toml accepts.
Home Assistant 2024.1.6's own configuration check (`hass --script check_config`, from .hass-venv) accepts both
automations and the recorder section's `recorder:` YAML, which keeps exactly what it says
(tests/test_home_assistant_recorder.py holds its entity ids to what spkidd's discovery creates)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from spkidd.config import from_table
from spkidd.unknown_clips import UnknownClipSettings
from tests.support import hass as ha

DOCS = Path(__file__).resolve().parents[1] / "docs" / "mqtt-and-home-assistant.md"
TV = "## A TV or radio in the room"
RECORDER = "## Home Assistant's recorder"
CONFIG_CHECK = Path(__file__).parent / "support" / "hass_config_check.py"


def _yaml_blocks(heading: str) -> list[Any]:
    """Each YAML block of the section under `heading` (indented as a list item's block may be), parsed, in order."""
    text = DOCS.read_text()
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    section = text[start : end if end >= 0 else None]
    blocks = re.findall(r"^( *)```yaml\n(.*?)^ *```", section, re.DOTALL | re.MULTILINE)
    return [yaml.safe_load("".join(line[len(i) :] for line in block.splitlines(keepends=True))) for i, block in blocks]


def _automations(heading: str) -> list[dict[str, Any]]:
    """The automation of each YAML block of the section under `heading`, in order."""
    found = []
    for automations in _yaml_blocks(heading):
        assert isinstance(automations, list) and len(automations) == 1 and isinstance(automations[0], dict)
        found.append(automations[0])
    return found


def _check_config(directory: Path) -> dict[str, Any]:
    """Home Assistant's own check of a configuration folder: errors, warnings and each domain's validated config."""
    assert ha.installed(), f"Home Assistant is not installed in {ha.HASS_VENV}: run bash scripts/install-hass.sh"
    proc = subprocess.run(
        [str(ha.HASS_PYTHON), str(CONFIG_CHECK), str(directory)], capture_output=True, text=True, check=True
    )
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def _tv_off(condition: dict[str, Any]) -> bool:
    return (
        condition["condition"] == "state"
        and condition["entity_id"].startswith("media_player.")
        and "off" in condition["state"]
    )


def test_the_tv_automation_is_the_tested_one_with_the_tv_off_as_a_condition() -> None:
    tested = _automations("### An automation that runs once per utterance")[0]
    tv = _automations(TV)[0]
    assert (tv["trigger"], tv["action"]) == (tested["trigger"], tested["action"])
    *same, tv_off = tv["condition"]
    assert same == tested["condition"] and _tv_off(tv_off)


def test_the_automation_on_unknown_runs_at_most_once_per_pause_and_not_while_the_tv_plays() -> None:
    tested = _automations("### An automation that runs once per utterance")[0]
    _, on_unknown = _automations(TV)
    assert on_unknown["trigger"] == [{**tested["trigger"][0], "payload": "unknown"}]
    assert [_tv_off(c) for c in on_unknown["condition"]] == [True]
    assert (on_unknown["mode"], on_unknown["max_exceeded"]) == ("single", "silent")
    assert on_unknown["action"][-1] == {"delay": "00:10:00"}


def test_the_clip_interval_the_section_names_is_a_setting_of_config_toml() -> None:
    section = " ".join(DOCS.read_text()[DOCS.read_text().index(TV) :].split())
    setting = re.search(r"`\[unknown_clips\] min_interval_s = (\d+)`", section)
    assert setting is not None
    table = {"folder": "/var/lib/spkidd/unknown", "min_interval_s": float(setting.group(1))}
    settings = from_table(UnknownClipSettings, table, file=DOCS, where="unknown_clips")
    assert settings.min_interval_s == 60.0


def test_home_assistant_accepts_the_recorder_exclusion_and_the_tv_automations(tmp_path: Path) -> None:
    [recorder] = _yaml_blocks(RECORDER)
    automations = [a for block in _yaml_blocks(TV) for a in block]
    (tmp_path / "automations.yaml").write_text(yaml.safe_dump(automations))
    configuration = {"homeassistant": {"name": "check", "time_zone": "UTC"}, "mqtt": None, **recorder}
    text = yaml.safe_dump(configuration) + "automation: !include automations.yaml\n"
    (tmp_path / "configuration.yaml").write_text(text)
    checked = _check_config(tmp_path)
    assert (checked["errors"], checked["warnings"]) == ({}, {})
    assert [a["alias"] for a in checked["domains"]["automation"]] == [a["alias"] for a in automations]
    exclude = checked["domains"]["recorder"]["exclude"]
    assert exclude["entities"] == recorder["recorder"]["exclude"]["entities"]
    assert exclude["entity_globs"] == recorder["recorder"]["exclude"]["entity_globs"]


def test_home_assistant_refuses_what_the_check_must_catch(tmp_path: Path) -> None:
    """The check is not blind: an entity id Home Assistant cannot have is a warning it reports."""
    [recorder] = _yaml_blocks(RECORDER)
    recorder["recorder"]["exclude"]["entities"].append("not an entity id")
    (tmp_path / "configuration.yaml").write_text(yaml.safe_dump({"homeassistant": {"time_zone": "UTC"}, **recorder}))
    checked = _check_config(tmp_path)
    assert "recorder" not in checked["domains"]
    assert any("not an entity id" in message for message in checked["warnings"]["recorder"])
