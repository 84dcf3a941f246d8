"""docs/mqtt-and-home-assistant.md taken at its word: its config snippets are accepted by config.toml's loader, its
install commands name files the repository has, its automation is valid YAML both ways the page says to paste it,
and every metric it lists is one /metrics serves. (tests/test_home_assistant.py runs the automation in a real Home
Assistant.)"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml
from prometheus_client import generate_latest

from spkidd.config import HealthConfig, MqttConfig, from_table
from spkidd.health import DaemonHealth, StreamHealth
from spkidd.healthserver import make_registry

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "mqtt-and-home-assistant.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"^ *```{language}\n(.*?)^ *```", DOCS.read_text(), re.DOTALL | re.MULTILINE)


def _section(heading: str) -> str:
    text = DOCS.read_text()
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start : end if end >= 0 else len(text)]


def test_every_toml_snippet_is_accepted_by_the_config_loader() -> None:
    snippets = [tomllib.loads(block) for block in _blocks("toml")]
    assert {name for snippet in snippets for name in snippet} == {"mqtt", "health"}
    for snippet in snippets:
        if "mqtt" in snippet:
            mqtt = from_table(MqttConfig, snippet["mqtt"], file=DOCS, where="mqtt")
            assert (mqtt.broker, mqtt.username, mqtt.password_file) == (
                "external",
                "spkidd",
                Path("/etc/spkidd/mqtt.pass"),
            )
        if "health" in snippet:
            assert from_table(HealthConfig, snippet["health"], file=DOCS, where="health").enabled


def test_the_install_commands_name_files_of_the_repository_and_the_units_paths() -> None:
    install = _section("## Installing as a systemd service under /opt")
    commands = re.search(r"```bash\n(.*?)```", install, re.DOTALL)
    assert commands is not None
    for path in ("scripts/setup.sh", "config.toml", "systemd/spkidd.service"):
        assert f" {path} " in commands.group(1) and (REPO / path).is_file(), path
    unit = (REPO / "systemd" / "spkidd.service").read_text()
    assert "ExecStart=/opt/spkidd/.venv/bin/spkidd run --config /etc/spkidd/config.toml\n" in unit
    assert "PYTHON=/usr/bin/python3 bash scripts/setup.sh" in commands.group(1)
    assert "install -m 0640 -o root -g spkidd /dev/null /etc/spkidd/mqtt.pass" in DOCS.read_text()


def test_the_automation_is_valid_yaml_in_automations_yaml_and_in_the_editor() -> None:
    """automations.yaml takes the list as printed; the editor's YAML mode one automation, pasted as the page says:
    without the leading `- ` and every other line two spaces less indented."""
    section = _section("### An automation that runs once per utterance")
    block = re.search(r"```yaml\n(.*?)```", section, re.DOTALL)
    assert block is not None
    automations = yaml.safe_load(block.group(1))
    assert isinstance(automations, list) and len(automations) == 1
    first, *rest = block.group(1).splitlines()
    assert first.startswith("- ") and all(line.startswith("  ") for line in rest)
    in_editor = "\n".join([first[2:], *(line[2:] for line in rest)])
    assert yaml.safe_load(in_editor) == automations[0]
    assert set(automations[0]) == {"alias", "trigger", "condition", "action"}
    said = " ".join(section.split())
    assert "without the leading `- ` and with every other line two spaces less indented" in said


def test_every_metric_the_page_lists_is_served() -> None:
    stream = StreamHealth(True, 10.0, 0.5, 0.01, 3, 0, 1, 6.0)
    served = generate_latest(make_registry(lambda: DaemonHealth(12.0, {"kitchen": stream}))).decode()
    listed = set(re.findall(r"`(spkidd_[a-z_]+)`", _section("## Health and metrics")))
    assert len(listed) == 14
    for name in sorted(listed):
        assert re.search(rf"^{name}(\{{| )", served, re.MULTILINE), name
