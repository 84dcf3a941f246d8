"""A microphone as the household uses one: `spkidd run` with `kind = "mic"` and `spkidd listen --source mic:pulse`,
recording a private PulseAudio server's virtual microphone (a null sink's monitor) into which the test plays
synthetic speech, name the household voices that speak (over MQTT for the daemon, as JSON lines for listen)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import HELD_OUT_SENTENCES
from tests.support.daemon import SPKIDD, DaemonProcess, conversation, write_config
from tests.support.mosquitto import Collector, Received, kill_group, running_mosquitto
from tests.support.pulse import PulseServer, running_pulse

pytestmark = pytest.mark.timeout(300)

P = "spkidd/testhouse"
RELAXED = "[decision]\nmin_score = 0.0\n"
"""The suite's model is small and its cosine threshold strict; these tests are about the microphone path."""


@pytest.fixture(scope="module")
def pulse() -> Iterator[PulseServer]:
    with running_pulse(rate=16000) as server:
        yield server


def finals(messages: list[Received]) -> list[dict[str, object]]:
    events = [json.loads(m.payload) for m in messages if m.topic == f"{P}/kitchen/event"]
    return [e for e in events if e["final"]]


async def test_the_daemon_names_voices_heard_by_its_microphone(
    tmp_path: Path, trained_model: Path, pulse: PulseServer
) -> None:
    """[[sources]] kind = "mic" with `device` (the config's `mic:DEVICE`): the source comes online, and two people
    speaking into the microphone in turn are each named in the final events, in order."""
    wav = conversation(tmp_path, [("alice", HELD_OUT_SENTENCES[0]), ("bob", HELD_OUT_SENTENCES[1])], lead_s=0.5)
    sources = '[[sources]]\nname = "kitchen"\nkind = "mic"\ndevice = "pulse"\n'
    with running_mosquitto(tmp_path) as broker:
        mqtt = f'broker = "external"\nhost = "127.0.0.1"\nport = {broker.port}\n'
        config = write_config(tmp_path / "config.toml", trained_model, sources, mqtt, RELAXED)
        async with Collector(broker.port, [f"{P}/kitchen/#"]) as sub:
            daemon = DaemonProcess(config, tmp_path / "daemon.log")
            try:
                status = f"{P}/kitchen/status"
                await sub.wait_for(lambda ms: [m.payload for m in ms if m.topic == status][-1:] == [b"online"], 90)
                await asyncio.to_thread(pulse.play, wav)
                await sub.wait_for(lambda ms: len(finals(ms)) >= 2, timeout=60)
            finally:
                daemon.kill()
    spoken = finals(sub.messages)
    assert [e["speaker"] for e in spoken] == ["alice", "bob"], spoken
    assert all(str(e["utterance_id"]).startswith("kitchen-") for e in spoken)
    log = daemon.text()
    assert "source kitchen: online" in log and "Traceback" not in log, log[-3000:]


class Lines:
    """Collects a child's stdout lines in a thread, so the test can play audio while it waits for them."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._process = process
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            self.lines.append(line)

    def finals(self) -> list[dict[str, object]]:
        events = [json.loads(line) for line in list(self.lines) if line.strip()]
        return [e for e in events if e["final"]]

    def join(self) -> None:
        self._thread.join(timeout=30)


def test_listen_on_the_microphone_prints_who_spoke(tmp_path: Path, trained_model: Path, pulse: PulseServer) -> None:
    """`spkidd listen MODEL --source mic:pulse --json` prints the final identification of a voice played into the
    microphone, then stops cleanly on Ctrl-C. Listen does not say when its microphone is open, so the sentence is
    played again (at most three times) until an answer comes."""
    wav = conversation(tmp_path, [("carol", HELD_OUT_SENTENCES[2])], lead_s=0.5)
    command = [SPKIDD, "listen", str(trained_model), "--source", "mic:pulse", "--json", "--min-score", "0"]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    lines = Lines(process)
    try:
        for _ in range(3):
            pulse.play(wav)
            deadline = time.monotonic() + 20
            while not lines.finals() and time.monotonic() < deadline and process.poll() is None:
                time.sleep(0.1)
            if lines.finals() or process.poll() is not None:
                break
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0
    finally:
        kill_group(process)  # type: ignore[arg-type]
    lines.join()
    heard = lines.finals()
    assert heard, "no final identification was printed"
    assert heard[0]["speaker"] == "carol" and heard[0]["source"] == "listen", heard
