"""docs/mqtt-and-home-assistant.md's section on a TV in the room taken at its word: its automation is the tested one
(tests/test_home_assistant.py runs it in a real Home Assistant) with one more condition, the TV's media player, and
the unknown-clips setting it names is one config.toml accepts."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from spkidd.config import from_table
from spkidd.unknown_clips import UnknownClipSettings

DOCS = Path(__file__).resolve().parents[1] / "docs" / "mqtt-and-home-assistant.md"
TV = "## A TV or radio in the room"


def _automation(heading: str) -> dict[str, Any]:
    """The one automation of the first YAML block after `heading` (indented as a list item's block may be)."""
    text = DOCS.read_text()
    block = re.search(r"^( *)```yaml\n(.*?)^ *```", text[text.index(heading) :], re.DOTALL | re.MULTILINE)
    assert block is not None, f"{DOCS}: no YAML block after {heading!r}"
    indent = len(block.group(1))
    automations = yaml.safe_load("".join(line[indent:] for line in block.group(2).splitlines(keepends=True)))
    assert isinstance(automations, list) and len(automations) == 1
    automation = automations[0]
    assert isinstance(automation, dict)
    return automation


def test_the_tv_automation_is_the_tested_one_with_the_tv_off_as_a_condition() -> None:
    tested = _automation("### An automation that runs once per utterance")
    tv = _automation(TV)
    assert (tv["trigger"], tv["action"]) == (tested["trigger"], tested["action"])
    *same, tv_off = tv["condition"]
    assert same == tested["condition"]
    assert tv_off["condition"] == "state" and tv_off["entity_id"].startswith("media_player.")
    assert "off" in tv_off["state"]


def test_the_clip_interval_the_section_names_is_a_setting_of_config_toml() -> None:
    section = " ".join(DOCS.read_text()[DOCS.read_text().index(TV) :].split())
    setting = re.search(r"`\[unknown_clips\] min_interval_s = (\d+)`", section)
    assert setting is not None
    table = {"folder": "/var/lib/spkidd/unknown", "min_interval_s": float(setting.group(1))}
    settings = from_table(UnknownClipSettings, table, file=DOCS, where="unknown_clips")
    assert settings.min_interval_s == 60.0
