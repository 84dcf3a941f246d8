"""A change made on the household page reaches Home Assistant: after a voice is enrolled, forgotten or renamed through
the page's HTTP API, the running daemon republishes its discovery over a real Mosquitto, and the "Current speaker"
sensor's options and the retained state's `speakers` (the sensor's `speakers` attribute in Home Assistant) name the
voices as they are now. No restart, no SIGHUP (README: "Home Assistant's list of speakers is republished")."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.daemon import DaemonProcess, conversation, file_source, random_model, write_config
from tests.support.mosquitto import Collector, Received, free_port, running_mosquitto, wait_port
from tests.support.page_http import change, http, record

pytestmark = pytest.mark.timeout(120)

SENSOR = "homeassistant/sensor/spkidd_testhouse_kitchen_speaker/config"
STATE = "spkidd/testhouse/kitchen/speaker"
EXTRA = ["unrecognized", "none"]


def latest(messages: list[Received], topic: str) -> dict[str, object] | None:
    payloads = [json.loads(m.payload) for m in messages if m.topic == topic and m.payload]
    return payloads[-1] if payloads else None


def announces(speakers: list[str]) -> Callable[[list[Received]], bool]:
    """A predicate: the latest "Current speaker" discovery's options and the latest retained state's `speakers`
    (what the sensor's `speakers` attribute shows) name exactly `speakers`."""

    def check(messages: list[Received]) -> bool:
        config, state = latest(messages, SENSOR), latest(messages, STATE)
        return bool(config and state and config["options"] == [*speakers, *EXTRA] and state["speakers"] == speakers)

    return check


async def test_enroll_forget_and_rename_on_the_page_are_republished_to_home_assistant(tmp_path: Path) -> None:
    model = random_model(tmp_path / "voices.safetensors", ["alice", "bob", "carol"])
    wav = conversation(tmp_path, [("dave", "My name is Dave and this is my voice for the household.")], lead_s=0.3)
    web_port = free_port()
    sources = file_source(wav)
    extra = f"[web]\nenabled = true\nport = {web_port}\n"
    base = f"http://127.0.0.1:{web_port}"
    with running_mosquitto(tmp_path) as broker:
        mqtt = f'broker = "external"\nhost = "127.0.0.1"\nport = {broker.port}\n'
        config = write_config(tmp_path / "config.toml", model, sources, mqtt, extra)
        async with Collector(broker.port, ["homeassistant/#", STATE]) as sub:
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
                async with Collector(broker.port, [SENSOR, STATE]) as late:
                    await late.wait_for(lambda ms: len(ms) == 2, timeout=10)
                    assert all(m.retain for m in late.messages)
                    assert announces(["alice", "caroline", "dave"])(late.messages)
            finally:
                daemon.kill()
    assert "Traceback" not in daemon.text(), daemon.text()[-3000:]
