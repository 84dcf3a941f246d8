"""Reloading in process (what SIGHUP runs): sources added, changed and removed, Home Assistant discovery
following them, and a bad config refused while the running one stays."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from pathlib import Path

from spkidd.config import load_config
from spkidd.daemon import Daemon, root_level, speakers_change
from tests.conftest import HELD_OUT_SENTENCES
from tests.support.daemon import conversation, file_source, random_model, write_config
from tests.support.mosquitto import Collector, running_mosquitto


async def test_reload_adds_changes_and_removes_sources(tmp_path: Path) -> None:
    """Also: the daemon was started with `-v`, and every reload keeps it at DEBUG whatever [logging] says."""
    root = logging.getLogger()
    level_before = root.level
    model = random_model(tmp_path / "random.safetensors", ["alice", "bob"])
    wav = conversation(tmp_path, [("alice", HELD_OUT_SENTENCES[0])], lead_s=0.3)
    with running_mosquitto(tmp_path) as broker:
        mqtt = f'broker = "external"\nport = {broker.port}\n'
        path = write_config(tmp_path / "config.toml", model, file_source(wav, "kitchen"), mqtt)
        async with Collector(broker.port, ["homeassistant/+/+/config", "spkidd/testhouse/+/status"]) as sub:
            daemon = Daemon(load_config(path), command_line_level=logging.DEBUG)
            run = asyncio.create_task(daemon.run())
            try:
                await sub.wait_for(lambda ms: any(m.topic.endswith("kitchen/status") for m in ms))
                kitchen = daemon.streams["kitchen"]

                write_config(path, model, file_source(wav, "kitchen") + file_source(wav, "hall"), mqtt)
                assert await daemon.reload()
                assert set(daemon.streams) == {"kitchen", "hall"} and daemon.streams["kitchen"] is kitchen
                assert root.level == logging.DEBUG
                hall_sensor = "homeassistant/sensor/spkidd_testhouse_hall_speaker/config"
                await sub.wait_for(lambda ms: any(m.topic == hall_sensor for m in ms))

                write_config(path, model, file_source(wav, "hall"), mqtt, "[vad]\nhangover_ms = 450\n")
                hall = daemon.streams["hall"]
                assert await daemon.reload()
                assert set(daemon.streams) == {"hall"} and daemon.streams["hall"] is not hall
                assert daemon.streams["hall"].settings.gate.hangover_ms == 450
                gone = "homeassistant/sensor/spkidd_testhouse_kitchen_speaker/config"
                await sub.wait_for(lambda ms: any(m.topic == gone and m.payload == b"" for m in ms))
                kitchen_status = "spkidd/testhouse/kitchen/status"
                await sub.wait_for(lambda ms: sub.on(kitchen_status)[-1].payload == b"")  # deleted from the broker

                write_config(path, model, file_source(wav, "hall"), mqtt, "[vad]\nhangover = 1\n")
                assert not await daemon.reload()
                assert set(daemon.streams) == {"hall"} and daemon.reloads == 2

                daemon.stop()
                assert await asyncio.wait_for(run, 60) == 0
                speaker = json.loads(next(m.payload for m in sub.messages if m.topic == hall_sensor))
                assert speaker["options"] == ["alice", "bob", "unrecognized", "none"]
            finally:
                daemon.stop()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(run, 60)
                root.setLevel(level_before)


def test_the_command_lines_verbosity_outlives_the_configs_level() -> None:
    """`spkidd -v run` logs at DEBUG whatever [logging] level says, at start and after a reload; without -v the
    config decides, quieter or louder."""
    assert root_level("WARNING", logging.DEBUG) == logging.DEBUG
    assert root_level("INFO", logging.DEBUG) == logging.DEBUG
    assert root_level("WARNING", None) == logging.WARNING
    assert root_level("DEBUG", None) == logging.DEBUG


def test_a_reload_says_how_many_speakers_and_who_changed() -> None:
    """A model of 250 voices listed in full on every reload was 2 kB of log each time."""
    many = [f"s{i}" for i in range(250)]
    assert speakers_change(many, many) == "250 speakers"
    changed = speakers_change(["alice", "bob"], ["alice", "carol", "dave"])
    assert changed == "3 speakers (added carol, dave) (removed bob)"
    assert speakers_change([], many).endswith("s8, s9 and 240 more)")
