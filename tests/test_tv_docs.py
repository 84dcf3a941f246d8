"""docs/mqtt-and-home-assistant.md's section on a TV in the room taken at its word: its automations are the tested one
(tests/test_home_assistant.py runs it in a real Home Assistant) with one more condition, the TV's media player, and
one on `unknown` events that pauses after each run; the unknown-clips setting it names is one config.toml accepts.
(Home Assistant 2024.1.6's `hass --script check_config` accepted both automations.)"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from spkidd.config import from_table
from spkidd.unknown_clips import UnknownClipSettings

DOCS = Path(__file__).resolve().parents[1] / "docs" / "mqtt-and-home-assistant.md"
TV = "## A TV or radio in the room"


def _automations(heading: str) -> list[dict[str, Any]]:
    """The automation of each YAML block after `heading` (indented as a list item's block may be), in order."""
    text = DOCS.read_text()
    blocks = re.findall(r"^( *)```yaml\n(.*?)^ *```", text[text.index(heading) :], re.DOTALL | re.MULTILINE)
    found = []
    for indent, block in blocks:
        automations = yaml.safe_load("".join(line[len(indent) :] for line in block.splitlines(keepends=True)))
        assert isinstance(automations, list) and len(automations) == 1 and isinstance(automations[0], dict)
        found.append(automations[0])
    return found


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
