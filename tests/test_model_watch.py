"""The model file replaced from outside the daemon: `spkidd enroll` while `spkidd run` runs is taken up without a
SIGHUP (spkidd/model_watch.py), a file it cannot use is refused with the running model kept, and the daemon's own
writes (the page's) are not read back."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from spkidd.config import load_config
from spkidd.daemon import Daemon
from spkidd.model_watch import ModelFileWatch
from tests.conftest import HELD_OUT_SENTENCES
from tests.support.daemon import SPKIDD, conversation, file_source, random_model, write_config
from tests.support.mosquitto import Collector, running_mosquitto

SENSOR = "homeassistant/sensor/spkidd_testhouse_kitchen_speaker/config"


def _replace(path: Path, content: bytes) -> None:
    """As save_model writes: a whole new file renamed over the old one."""
    fresh = path.with_suffix(".new")
    fresh.write_bytes(content)
    os.replace(fresh, path)


async def test_a_replaced_file_is_reported_once_it_has_settled(tmp_path: Path) -> None:
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"first")
    seen: list[bytes] = []

    async def changed() -> None:
        seen.append(model.read_bytes())

    watch = ModelFileWatch(model, changed, interval_s=0.05)
    task = asyncio.create_task(watch.run())
    try:
        await asyncio.sleep(0.3)
        assert seen == [], "the file it started with is not a change"
        _replace(model, b"second")
        await asyncio.sleep(0.3)
        assert seen == [b"second"], "a replaced file is reported once"
        _replace(model, b"the daemon's own")
        watch.remember()
        model.unlink()
        await asyncio.sleep(0.3)
        assert seen == [b"second"], "neither the daemon's own write nor a missing file is a change"
        with model.open("wb") as growing:
            growing.write(b"half")
            growing.flush()
            await asyncio.sleep(0.02)
            growing.write(b" and the rest")
        await asyncio.sleep(0.3)
        assert seen == [b"second", b"half and the rest"], "read once it has stayed the same for a poll"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.mark.timeout(180)
async def test_enroll_beside_a_running_daemon_needs_no_sighup(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = random_model(tmp_path / "voices.safetensors", ["alice", "bob"])
    wav = conversation(tmp_path, [("alice", HELD_OUT_SENTENCES[0])], lead_s=0.3)
    (tmp_path / "dave").mkdir()
    dave = conversation(tmp_path / "dave", [("dave", " ".join(HELD_OUT_SENTENCES[:2]))], lead_s=0.3)
    with running_mosquitto(tmp_path) as broker:
        mqtt = f'broker = "external"\nport = {broker.port}\n'
        path = write_config(tmp_path / "config.toml", model, file_source(wav), mqtt)
        async with Collector(broker.port, [SENSOR]) as sub:
            daemon = Daemon(load_config(path))
            run = asyncio.create_task(daemon.run())
            try:

                def options() -> list[str]:
                    return list(json.loads(sub.on(SENSOR)[-1].payload)["options"]) if sub.on(SENSOR) else []

                await sub.wait_for(lambda _: options() == ["alice", "bob", "unrecognized", "none"])
                with caplog.at_level(logging.INFO, logger="spkidd.daemon"):
                    enroll = [SPKIDD, "enroll", str(model), "-s", "dave", str(dave)]
                    done = await asyncio.to_thread(subprocess.run, enroll, capture_output=True, text=True)
                    assert done.returncode == 0, done.stderr
                    await sub.wait_for(lambda _: "dave" in options(), timeout=20)
                    assert daemon.bundle is not None and daemon.bundle.labels == ["alice", "bob", "dave"]
                    assert "the model file changed" in caplog.text and daemon.reloads == 0

                    caplog.clear()
                    _replace(model, b"not a model at all")
                    await asyncio.wait_for(_until(lambda: "cannot be used" in caplog.text), 20)
                    assert "still running the previous model" in caplog.text
                    assert daemon.bundle.labels == ["alice", "bob", "dave"] and not run.done()
                daemon.stop()
                assert await asyncio.wait_for(run, 60) == 0
            finally:
                daemon.stop()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(run, 60)


async def _until(check: Callable[[], bool]) -> None:
    while not check():
        await asyncio.sleep(0.1)
