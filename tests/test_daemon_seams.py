"""`spkidd run` at its seams, as a child process with real signals and a real Mosquitto: what is published around
a stop or a reload (issue 10 items 4-6), a SIGHUP during start-up or shutdown, an unusable model at start-up and
at a reload, an unreachable broker at shutdown, and that no path leaves a child process behind (issue 11)."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from datetime import datetime
from pathlib import Path

import pytest
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tests.conftest import HELD_OUT_SENTENCES
from tests.support.daemon import (
    LONG_UTTERANCES,
    DaemonProcess,
    conversation,
    file_source,
    open_utterance,
    random_model,
    sigterm_mid_utterance,
    write_config,
)
from tests.support.http_stream import HttpStream
from tests.support.mosquitto import Collector, Received, free_port, running_mosquitto
from tests.support.procs import alive, command, descendants

P = "spkidd/testhouse"
KITCHEN = f"{P}/kitchen"
RELAXED = "[decision]\nmin_score = 0.0\n"
RUN_ID = re.compile(r"^kitchen-\d{8}T\d{6}-\d{6}$")


def _events(messages: list[Received]) -> list[dict[str, object]]:
    return [json.loads(m.payload) for m in messages if m.topic == f"{KITCHEN}/event"]


def _statuses(messages: list[Received]) -> list[bytes]:
    return [m.payload for m in messages if m.topic == f"{KITCHEN}/status"]


async def _wait_open_utterance(sub: Collector, after: int = 0) -> str:
    await sub.wait_for(lambda ms: open_utterance(ms[after:], P, "kitchen") is not None, timeout=60)
    found = open_utterance(sub.messages[after:], P, "kitchen")
    assert found is not None
    return found


def _final_index(messages: list[Received], utterance: str) -> int:
    return next(
        i
        for i, m in enumerate(messages)
        if m.topic == f"{KITCHEN}/event"
        and json.loads(m.payload)["utterance_id"] == utterance
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
        config = write_config(tmp_path / "config.toml", model, file_source(household_wav), mqtt, RELAXED)
        async with Collector(broker.port, ["spkidd/#"]) as sub:
            daemon = DaemonProcess(config, tmp_path / "daemon.log")
            try:
                cut = await _wait_open_utterance(sub)
                write_config(config, model, file_source(household_wav), mqtt, "[decision]\nmin_score = 0.01\n")
                daemon.signal(signal.SIGHUP)
                await asyncio.to_thread(daemon.wait_log, lambda t: "reloaded: model" in t)
                await sub.wait_for(lambda ms: any(e["utterance_id"] == cut and e["final"] for e in _events(ms)))
                assert b"offline" not in _statuses(sub.messages)
                assert daemon.text().count("source kitchen: online") == 1

                seen = len(sub.messages)
                write_config(config, model, file_source(household_wav), mqtt, RELAXED + LONG_UTTERANCES)
                daemon.signal(signal.SIGHUP)
                await sub.wait_for(lambda ms: _statuses(ms[seen:]) == [b"offline", b"online"], timeout=30)

                last, after = await sigterm_mid_utterance(sub, daemon, P, "kitchen", len(sub.messages))
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


def _with_metadata(source: Path, path: Path, **changes: object) -> Path:
    """A copy of a valid model file whose JSON metadata has the given keys replaced (types the loader may not
    expect: a string or a list for `decision`, an int for `training`)."""
    tensors = load_file(str(source))
    with safe_open(str(source), framework="pt") as handle:
        header = dict(handle.metadata())
    meta = json.loads(header["spkidd"])
    meta.update(changes)
    header["spkidd"] = json.dumps(meta)
    save_file(tensors, str(path), metadata=header)
    return path


def _embedded(port: int) -> tuple[str, str]:
    return 'broker = "embedded"', f'[embedded_broker]\nport = {port}\nimplementation = "mosquitto"\n'


@pytest.mark.parametrize("changes", [{"decision": "strict"}, {"decision": [0.5]}, {"training": 3}])
def test_an_unusable_model_at_start_up_is_refused_in_one_line(tmp_path: Path, changes: dict[str, object]) -> None:
    model = random_model(tmp_path / "random.safetensors", ["alice", "bob"])
    bad = _with_metadata(model, tmp_path / "bad.safetensors", **changes)
    wav = conversation(tmp_path, [("alice", HELD_OUT_SENTENCES[0])], lead_s=0.5)
    mqtt, extra = _embedded(free_port())
    daemon = DaemonProcess(write_config(tmp_path / "c.toml", bad, file_source(wav), mqtt, extra), tmp_path / "d.log")
    try:
        assert daemon.wait(60) == 1
    finally:
        daemon.kill()
    text = daemon.text()
    assert "cannot start:" in text and "bad.safetensors" in text and "Traceback" not in text, text[-2000:]


async def test_an_unusable_model_at_reload_is_refused_and_shutdown_still_runs_to_the_end(tmp_path: Path) -> None:
    """Issue 11 item 2: the reload is refused with a log line (it died silently), and SIGTERM still stops the
    streams, publishes `offline` through the embedded broker and stops that broker: exit 0, no child left (the
    broker, and the ffmpeg of a stream source)."""
    model = random_model(tmp_path / "random.safetensors", ["alice", "bob"])
    wav = conversation(tmp_path, [("alice", HELD_OUT_SENTENCES[0])], lead_s=0.5)
    port = free_port()
    mqtt, extra = _embedded(port)
    stream = HttpStream(wav)
    stream.start()
    sources = file_source(wav) + f'[[sources]]\nname = "hall"\nkind = "url"\nurl = "{stream.url}"\n'
    config = write_config(tmp_path / "config.toml", model, sources, mqtt, extra)
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    try:
        await asyncio.to_thread(daemon.wait_log, lambda t: "source hall: online" in t)
        children = descendants(daemon.process.pid)
        commands = [command(pid) for pid in children]
        assert any("mosquitto" in c for c in commands) and any("ffmpeg" in c for c in commands), commands
        async with Collector(port, [f"{P}/status", f"{KITCHEN}/status"]) as sub:
            await sub.wait_for(
                lambda ms: bool(sub.on(f"{P}/status")) and sub.on(f"{P}/status")[-1].payload == b"online"
            )
            bad = _with_metadata(model, tmp_path / "bad.safetensors", decision="strict")
            write_config(config, bad, sources, mqtt, extra)
            daemon.signal(signal.SIGHUP)
            text = await asyncio.to_thread(daemon.wait_log, lambda t: "reload refused" in t, 30)
            assert "bad.safetensors" in text
            daemon.signal(signal.SIGTERM)
            assert await asyncio.to_thread(daemon.wait, 40) == 0
            await sub.wait_for(lambda ms: sub.on(f"{P}/status")[-1].payload == b"offline")
    finally:
        daemon.kill()
        stream.kill()
    assert not alive(children), [command(p) for p in alive(children)]
    assert "embedded broker: mosquitto stopped" in daemon.text()


async def _until_it_catches_sighup(daemon: DaemonProcess, timeout: float) -> None:
    """Until the process has a SIGHUP handler (SigCgt in /proc): the CLI installs one before the daemon's imports, so
    SIGHUPs from then on fall inside its start-up however fast the host is (a fixed 1-s wait missed it once)."""
    deadline = time.monotonic() + timeout
    status = Path(f"/proc/{daemon.process.pid}/status")
    while time.monotonic() < deadline:
        caught = next((line.split()[1] for line in status.read_text().splitlines() if line.startswith("SigCgt:")), "0")
        if int(caught, 16) & (1 << (signal.SIGHUP - 1)):
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"no SIGHUP handler after {timeout} s:\n{daemon.text()[-3000:]}")


async def test_sighup_during_start_up_neither_kills_the_daemon_nor_starts_a_second_pipeline(
    tmp_path: Path, household_wav: Path
) -> None:
    """Issue 11 item 4: SIGHUPs while the daemon imports and starts (it died with status 129, or ran two
    capture sessions of one source with the same utterance ids)."""
    model = random_model(tmp_path / "random.safetensors", ["alice", "bob"])
    with running_mosquitto(tmp_path) as broker:
        mqtt = f'broker = "external"\nport = {broker.port}\n'
        config = write_config(tmp_path / "config.toml", model, file_source(household_wav), mqtt, RELAXED)
        async with Collector(broker.port, [f"{KITCHEN}/#"]) as sub:
            daemon = DaemonProcess(config, tmp_path / "daemon.log")
            try:
                await _until_it_catches_sighup(daemon, timeout=30)  # the CLI's handler, before the imports
                deadline = time.monotonic() + 60
                while "ready:" not in daemon.text() and time.monotonic() < deadline:
                    daemon.signal(signal.SIGHUP)
                    await asyncio.sleep(0.1)
                    assert daemon.process.poll() is None, f"SIGHUP killed it: {daemon.process.returncode}"
                await sub.wait_for(lambda ms: sum(1 for e in _events(ms) if e["final"]) >= 2, timeout=60)
                daemon.signal(signal.SIGTERM)
                assert await asyncio.to_thread(daemon.wait, 30) == 0
            finally:
                daemon.kill()
    text = daemon.text()
    assert "SIGHUP during start-up" in text and text.count("source kitchen: online") == 1, text[-3000:]
    started = [e["utterance_id"] for e in _events(sub.messages) if e["event_type"] != "changed" and not e["final"]]
    finals = [e["utterance_id"] for e in _events(sub.messages) if e["final"]]
    assert len(finals) == len(set(finals)) and len(started) == len(set(started)), (started, finals)


async def test_sighup_during_shutdown_restarts_nothing(tmp_path: Path, household_wav: Path) -> None:
    """Issue 11 item 5: the SIGHUP handler stayed installed during shutdown and restarted the streams."""
    model = random_model(tmp_path / "random.safetensors", ["alice", "bob"])
    with running_mosquitto(tmp_path) as broker:
        mqtt = f'broker = "external"\nport = {broker.port}\n'
        config = write_config(tmp_path / "config.toml", model, file_source(household_wav), mqtt, RELAXED)
        async with Collector(broker.port, [f"{KITCHEN}/status"]) as sub:
            daemon = DaemonProcess(config, tmp_path / "daemon.log")
            try:
                await sub.wait_for(lambda ms: _statuses(ms)[-1:] == [b"online"], timeout=60)
                seen = len(sub.messages)
                daemon.signal(signal.SIGTERM)
                for _ in range(20):
                    await asyncio.sleep(0.02)
                    if daemon.process.poll() is None:
                        daemon.signal(signal.SIGHUP)
                assert await asyncio.to_thread(daemon.wait, 30) == 0
                await sub.wait_for(lambda ms: _statuses(ms[seen:]) == [b"offline"])
                await asyncio.sleep(0.5)
                assert _statuses(sub.messages[seen:]) == [b"offline"]
            finally:
                daemon.kill()
    stopping = daemon.text().split("SIGTERM: shutting down", 1)[1]
    assert "SIGHUP: reloading" not in stopping and "source kitchen: online" not in stopping, stopping


@pytest.mark.parametrize("speech", [False, True])
async def test_an_unreachable_broker_does_not_hold_up_a_stop(tmp_path: Path, household_wav: Path, speech: bool) -> None:
    """Issue 10 item 9: with nothing queued Ctrl-C stops at once (it waited 15 s); with events queued it waits
    a bounded time (the daemon's 10 s MQTT close timeout) and says how many were lost. Timed between the daemon's
    own log lines, from the signal to the publisher's verdict, so start-up and interpreter exit do not count."""
    model = random_model(tmp_path / "random.safetensors", ["alice", "bob"])
    wav = household_wav if speech else conversation(tmp_path, [], lead_s=3.0)
    mqtt = f'broker = "external"\nport = {free_port()}\n'
    config = write_config(tmp_path / "config.toml", model, file_source(wav), mqtt, RELAXED)
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    try:
        await asyncio.to_thread(daemon.wait_log, lambda t: "ready:" in t)
        if speech:
            await asyncio.to_thread(daemon.wait_log, lambda t: bool(re.search(r"\(([1-9]\d*) events queued\)", t)), 60)
        else:
            await asyncio.to_thread(daemon.wait_log, lambda t: "MQTT: connection to" in t)
        daemon.signal(signal.SIGINT)
        assert await asyncio.to_thread(daemon.wait, 30) == 0
    finally:
        daemon.kill()
    text = daemon.text()
    if speech:
        lost = re.search(r"(\d+) queued events lost", text)
        took = _logged_s(text, "queued events lost") - _logged_s(text, "SIGINT: shutting down")
        assert lost is not None and int(lost.group(1)) > 0 and 9.0 < took < 15.0, (took, text[-2000:])
    else:
        took = _logged_s(text, "no events lost") - _logged_s(text, "SIGINT: shutting down")
        assert took < 5.0, (took, text[-2000:])


def _logged_s(text: str, marker: str) -> float:
    """When the daemon logged the first line with `marker` (its asctime), in seconds since the epoch."""
    line = next(line for line in text.splitlines() if marker in line)
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
