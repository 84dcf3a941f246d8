"""`spkidd run` at its seams, as a child process with real signals and a real Mosquitto: what is published around
a stop or a reload (issue 10 items 4-6), a SIGHUP during start-up or shutdown, an unusable model at start-up and
at a reload, an unreachable broker at shutdown, and that no path leaves a child process behind (issue 11)."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import HELD_OUT_SENTENCES
from tests.support.daemon import DaemonProcess, conversation, random_model, write_config
from tests.support.mosquitto import Collector, Received, free_port, running_mosquitto

P = "spkidd/testhouse"
KITCHEN = f"{P}/kitchen"
RELAXED = "[decision]\nmin_score = 0.0\n"
RUN_ID = re.compile(r"^kitchen-\d{8}T\d{6}-\d{6}$")


def _source(path: Path) -> str:
    return f'[[sources]]\nname = "kitchen"\nkind = "file"\npath = "{path}"\nrealtime = true\nloop = true\n'


def _events(messages: list[Received]) -> list[dict[str, object]]:
    return [json.loads(m.payload) for m in messages if m.topic == f"{KITCHEN}/event"]


def _open_utterance(messages: list[Received]) -> str | None:
    """The id of an utterance that has started (speaking ON) and not ended yet."""
    speaking = [m for m in messages if m.topic == f"{KITCHEN}/speaking"]
    events = _events(messages)
    if not speaking or speaking[-1].payload != b"ON" or not events:
        return None
    started = str(events[-1]["utterance_id"])
    return None if events[-1]["final"] else started


def _statuses(messages: list[Received]) -> list[bytes]:
    return [m.payload for m in messages if m.topic == f"{KITCHEN}/status"]


async def _wait_open_utterance(sub: Collector, after: int = 0) -> str:
    await sub.wait_for(lambda ms: _open_utterance(ms[after:]) is not None, timeout=60)
    found = _open_utterance(sub.messages[after:])
    assert found is not None
    return found


def _final_index(messages: list[Received], utterance: str) -> int:
    return next(
        i
        for i, m in enumerate(messages)
        if m.topic == f"{KITCHEN}/event" and json.loads(m.payload)["utterance_id"] == utterance
        and json.loads(m.payload)["final"]
    )


@pytest.fixture
def household_wav(tmp_path: Path) -> Path:
    turns = [("alice", HELD_OUT_SENTENCES[0]), ("bob", HELD_OUT_SENTENCES[1])]
    return conversation(tmp_path, turns, lead_s=0.5, gap_s=1.0)


async def test_threshold_reload_keeps_the_stream_and_a_stop_says_the_last_words_first(
    tmp_path: Path, household_wav: Path
) -> None:
    """Issue 10: a reload that changes only a threshold does not restart the stream (no offline, the open
    utterance ends normally); a reload that does restart it publishes one offline; SIGTERM publishes the open
    utterance's final and `speaking` OFF before the one `offline`; ids never repeat, also across a restart."""
    model = random_model(tmp_path / "random.safetensors", ["alice", "bob"])
    with running_mosquitto(tmp_path) as broker:
        mqtt = f'broker = "external"\nport = {broker.port}\n'
        config = write_config(tmp_path / "config.toml", model, _source(household_wav), mqtt, RELAXED)
        async with Collector(broker.port, ["spkidd/#"]) as sub:
            daemon = DaemonProcess(config, tmp_path / "daemon.log")
            try:
                cut = await _wait_open_utterance(sub)
                write_config(config, model, _source(household_wav), mqtt, "[decision]\nmin_score = 0.01\n")
                daemon.signal(signal.SIGHUP)
                await asyncio.to_thread(daemon.wait_log, lambda t: "reloaded: model" in t)
                await sub.wait_for(lambda ms: any(e["utterance_id"] == cut and e["final"] for e in _events(ms)))
                assert b"offline" not in _statuses(sub.messages)
                assert daemon.text().count("source kitchen: online") == 1

                seen = len(sub.messages)
                write_config(config, model, _source(household_wav), mqtt, RELAXED + "[vad]\nhangover_ms = 450\n")
                daemon.signal(signal.SIGHUP)
                await sub.wait_for(lambda ms: _statuses(ms[seen:]) == [b"offline", b"online"], timeout=30)

                seen = len(sub.messages)
                last = await _wait_open_utterance(sub, seen)
                await asyncio.sleep(0.3)
                seen = len(sub.messages)
                daemon.signal(signal.SIGTERM)
                assert await asyncio.to_thread(daemon.wait, 30) == 0
                await sub.wait_for(lambda ms: ms[-1].topic == f"{P}/status" and ms[-1].payload == b"offline")
                after = sub.messages[seen:]
                assert _statuses(after) == [b"offline"]
                offline = next(i for i, m in enumerate(after) if m.topic == f"{KITCHEN}/status")
                speaking_off = [i for i, m in enumerate(after) if m.topic == f"{KITCHEN}/speaking"]
                assert _final_index(after, last) < offline and speaking_off and speaking_off[-1] < offline
            finally:
                daemon.kill()
            first_run = {str(e["utterance_id"]) for e in _events(sub.messages)}
            assert all(RUN_ID.match(i) for i in first_run), first_run
            counts = [int(str(e["utterance_id"])[-6:]) for e in _events(sub.messages) if e["final"]]
            assert counts == sorted(counts) and len(counts) == len(set(counts)), counts

            seen = len(sub.messages)
            again = DaemonProcess(config, tmp_path / "again.log")
            try:
                await sub.wait_for(lambda ms: len(_events(ms[seen:])) >= 1, timeout=60)
                again.signal(signal.SIGTERM)
                assert await asyncio.to_thread(again.wait, 30) == 0
            finally:
                again.kill()
            assert not first_run & {str(e["utterance_id"]) for e in _events(sub.messages[seen:])}
    assert "Traceback" not in daemon.text()
