"""A pipeline that fails inside a running daemon (in process, with a fault injected into the model step: the
failure of a bug, not of a source) and a pipeline that cannot be rebuilt (issue 11 items 3 and 6): the open
utterance is closed on MQTT, the stream comes back where it was with new ids, and shutdown still runs to the end
with no child process left."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from spkidd.config import load_config
from spkidd.daemon import Daemon
from spkidd.steprunner import StepRunner
from tests.conftest import HELD_OUT_SENTENCES
from tests.support.daemon import conversation, file_source, random_model, write_config
from tests.support.mosquitto import Collector, Received, free_port, wait_port
from tests.support.polling import until
from tests.support.procs import alive, command, descendants

P = "spkidd/testhouse/kitchen"


class StepFault:
    """Makes the next model step raise, once per arm()."""

    def __init__(self) -> None:
        self.armed = threading.Event()
        self.original = StepRunner._step_group

    def arm(self) -> None:
        self.armed.set()

    def __call__(self, *args: Any) -> None:
        if self.armed.is_set():
            self.armed.clear()
            raise RuntimeError("injected model step failure")
        self.original(*args)


def _speaking(messages: list[Received]) -> list[bytes]:
    return [m.payload for m in messages if m.topic == f"{P}/speaking"]


def _events(messages: list[Received]) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in messages if m.topic == f"{P}/event"]


async def test_a_failing_pipeline_closes_its_utterance_and_a_stream_that_cannot_restart_does_not_break_shutdown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    fault = StepFault()
    monkeypatch.setattr(StepRunner, "_step_group", staticmethod(fault))
    model = random_model(tmp_path / "random.safetensors", ["alice", "bob"])
    turns = [("alice", HELD_OUT_SENTENCES[0]), ("bob", HELD_OUT_SENTENCES[1])]
    wav = conversation(tmp_path, turns, lead_s=0.5, gap_s=1.0)
    port = free_port()
    source = file_source(wav)
    extra = f'[embedded_broker]\nport = {port}\nimplementation = "mosquitto"\n[decision]\nmin_score = 0.0\n'
    config = write_config(tmp_path / "config.toml", model, source, 'broker = "embedded"\nclear_after_s = 1.0', extra)
    before = descendants(os.getpid())
    daemon = Daemon(load_config(config))
    run = asyncio.create_task(daemon.run())
    try:
        # The deadline is wait_port's own: a thread cannot be cancelled, so it must end by itself.
        await asyncio.to_thread(wait_port, port, lambda: not run.done(), 60.0)
        async with Collector(port, [f"{P}/#"]) as sub:
            children = descendants(os.getpid()) - before
            assert any("mosquitto" in command(pid) for pid in children)
            await sub.wait_for(lambda ms: any(e["final"] for e in _events(ms)), timeout=60)
            first = len(sub.messages)
            await sub.wait_for(lambda ms: _speaking(ms[first:])[-1:] == [b"ON"], timeout=60)
            cut = len(sub.messages)
            fault.arm()
            # The open utterance ends on MQTT (it stayed ON for good), and the speaker returns to `none`.
            await sub.wait_for(lambda ms: bool(_speaking(ms[cut:])), timeout=20)
            assert _speaking(sub.messages[cut:])[0] == b"OFF"
            await sub.wait_for(
                lambda ms: any(m.topic == f"{P}/speaker" and json.loads(m.payload)["state"] == "none" for m in ms[cut:])
            )
            assert "pipeline failed" in caplog.text
            # The stream comes back where it was: a new utterance with a new id, later on the same time line.
            heard = _events(sub.messages[:cut])
            await sub.wait_for(lambda ms: len([e for e in _events(ms[cut:]) if e["final"]]) >= 1, timeout=60)
            later = [e for e in _events(sub.messages[cut:]) if e["final"]]
            assert {e["utterance_id"] for e in later}.isdisjoint({e["utterance_id"] for e in heard})
            assert later[0]["start"] > heard[-1]["start"], (heard[-1], later[0])

            # The file goes away, and the pipeline fails again: its rebuild cannot read the source.
            wav.rename(tmp_path / "moved.wav")
            fault.arm()
            await sub.wait_for(lambda ms: any(m.topic == f"{P}/status" and m.payload == b"offline" for m in ms[cut:]))
            # The rebuilt pipeline (after its backoff) finds the file gone: the source fails and the stream stays
            # ended, which is the state the stop below must cope with.
            await until(lambda: "source kitchen: source failed" in caplog.text, "the rebuilt pipeline to end", 30)
            assert "kitchen: source failed" in caplog.text
            daemon.stop()
            assert await asyncio.wait_for(run, 60) == 0
    finally:
        daemon.stop()
        if not run.done():
            await asyncio.wait_for(run, 60)
    assert not alive(children), [command(p) for p in alive(children)]
    assert "source kitchen: source failed" in caplog.text and "mosquitto stopped" in caplog.text
