"""A change made on the household page reaches Home Assistant: after a voice is enrolled, forgotten or renamed through
the page's HTTP API, the running daemon republishes its discovery over a real Mosquitto, and the "Current speaker"
sensor's options and `speakers` attribute (what Home Assistant shows) name the voices as they are now. No restart,
no SIGHUP (README: "Home Assistant's list of speakers is republished")."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.daemon import DaemonProcess, conversation, random_model, write_config
from tests.support.mosquitto import Collector, Received, free_port, running_mosquitto, wait_port
from tests.support.page_http import change, http, record

pytestmark = pytest.mark.timeout(120)

SENSOR = "homeassistant/sensor/spkidd_testhouse_kitchen_speaker/config"
EXTRA = ["unrecognized", "none"]


def speaker_list(config: dict[str, object]) -> list[str]:
    """The enrolled speakers written into the sensor's attributes template (its `speakers` attribute)."""
    template = config["json_attributes_template"]
    assert isinstance(template, str)
    found = re.search(r"'speakers': (\[[^\]]*\])", template)
    assert found is not None, template
    return list(json.loads(found.group(1)))


def sensor_configs(messages: list[Received]) -> list[dict[str, object]]:
    return [json.loads(m.payload) for m in messages if m.topic == SENSOR and m.payload]


def announces(speakers: list[str]) -> Callable[[list[Received]], bool]:
    """A predicate: the latest "Current speaker" discovery names exactly `speakers`, in options and attribute."""

    def check(messages: list[Received]) -> bool:
        configs = sensor_configs(messages)
        if not configs:
            return False
        latest = configs[-1]
        return latest["options"] == [*speakers, *EXTRA] and speaker_list(latest) == speakers

    return check


async def test_enroll_forget_and_rename_on_the_page_are_republished_to_home_assistant(tmp_path: Path) -> None:
    model = random_model(tmp_path / "voices.safetensors", ["alice", "bob", "carol"])
    wav = conversation(tmp_path, [("dave", "My name is Dave and this is my voice for the household.")], lead_s=0.3)
    web_port = free_port()
    sources = f'[[sources]]\nname = "kitchen"\nkind = "file"\npath = "{wav}"\nrealtime = true\nloop = true\n'
    extra = f"[web]\nenabled = true\nport = {web_port}\n"
    base = f"http://127.0.0.1:{web_port}"
    with running_mosquitto(tmp_path) as broker:
        mqtt = f'broker = "external"\nhost = "127.0.0.1"\nport = {broker.port}\n'
        config = write_config(tmp_path / "config.toml", model, sources, mqtt, extra)
        async with Collector(broker.port, ["homeassistant/#"]) as sub:
            daemon = DaemonProcess(config, tmp_path / "daemon.log")
            try:
                wait_port(web_port, lambda: daemon.process.poll() is None, timeout=90)
                await sub.wait_for(announces(["alice", "bob", "carol"]), timeout=60)

                status, body = record(base, "dave", wav.read_bytes())
                assert status == 200 and body["speaker"] == "dave", body
                await sub.wait_for(announces(["alice", "bob", "carol", "dave"]), timeout=30)

                status, body = change(base, "/api/voices/forget", {"speaker": "bob"})
                assert status == 200, body
                await sub.wait_for(announces(["alice", "carol", "dave"]), timeout=30)

                status, body = change(base, "/api/voices/rename", {"speaker": "carol", "new_name": "caroline"})
                assert status == 200, body
                await sub.wait_for(announces(["alice", "caroline", "dave"]), timeout=30)

                status, voices = http(f"{base}/api/voices")
                assert [v["name"] for v in voices["speakers"]] == ["alice", "caroline", "dave"]
                assert daemon.process.poll() is None
                assert "reload" not in daemon.text().lower(), "the page's changes need no reload"

                # Retained: a Home Assistant that connects only now is told the current list, not the trained one.
                async with Collector(broker.port, [SENSOR]) as late:
                    await late.wait_for(lambda ms: bool(ms), timeout=10)
                    assert late.messages[0].retain and announces(["alice", "caroline", "dave"])(late.messages)
            finally:
                daemon.kill()
    assert "Traceback" not in daemon.text(), daemon.text()[-3000:]
