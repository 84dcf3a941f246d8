"""`spkidd run` end to end, as a child process: a replayed conversation of known speakers through a trained
model to a real Mosquitto; SIGHUP with a bad and a good model; SIGTERM; the embedded broker, sd_notify, the
watchdog and the health endpoint."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import HELD_OUT_SENTENCES
from tests.support import page_http
from tests.support.browser import wait_until
from tests.support.daemon import (
    LONG_UTTERANCES,
    DaemonProcess,
    conversation,
    file_source,
    random_model,
    relabelled_model,
    sigterm_mid_utterance,
    write_config,
)
from tests.support.mosquitto import Collector, Received, free_port, running_mosquitto
from tests.support.sequences import is_subsequence

P = "spkidd/testhouse"
RELAXED = "[decision]\nmin_score = 0.0\n"
"""The suite's model is small and its cosine threshold strict; these tests are about the daemon, not accuracy."""
FINAL_TYPES = ("final", "unknown")


def _finals(messages: list[Received]) -> list[dict[str, object]]:
    out = []
    for m in messages:
        if m.topic == f"{P}/kitchen/event":
            event = json.loads(m.payload)
            if event["event_type"] in FINAL_TYPES:
                out.append(event)
    return out


@pytest.mark.slow
async def test_replayed_conversation_reload_and_shutdown(tmp_path: Path, trained_model: Path) -> None:
    turns = [("alice", HELD_OUT_SENTENCES[0]), ("bob", HELD_OUT_SENTENCES[1]), ("carol", HELD_OUT_SENTENCES[2])]
    wav = conversation(tmp_path, turns)
    model = tmp_path / "model.safetensors"
    shutil.copy(trained_model, model)
    with running_mosquitto(tmp_path) as broker:
        mqtt = f'broker = "external"\nhost = "127.0.0.1"\nport = {broker.port}\n'
        config = write_config(tmp_path / "config.toml", model, file_source(wav), mqtt, RELAXED)

        def reconfigure(new_model: Path, extra: str = "") -> None:
            write_config(config, new_model, file_source(wav), mqtt, RELAXED + extra)

        async with Collector(broker.port, ["spkidd/#", "homeassistant/#"]) as sub:
            daemon = DaemonProcess(config, tmp_path / "daemon.log")
            try:
                await _each_turn_named_in_order(sub)
                await _a_broken_model_is_refused(sub, daemon, tmp_path, reconfigure)
                renamed = relabelled_model(trained_model, tmp_path / "renamed.safetensors", {"carol": "caroline"})
                await _a_renamed_speaker_is_followed(sub, daemon, renamed, reconfigure)
                await _sigterm_mid_utterance_says_the_last_word(sub, daemon, renamed, reconfigure)
            finally:
                daemon.kill()
    text = daemon.text()
    assert "Traceback" not in text, text[-3000:]


async def _each_turn_named_in_order(sub: Collector) -> None:
    """The first pass through the conversation: each turn is named correctly, in order."""
    await sub.wait_for(lambda ms: len(_finals(ms)) >= 3, timeout=120)
    first = _finals(sub.messages)[:3]
    assert [e["speaker"] for e in first] == ["alice", "bob", "carol"], first
    ids = [str(e["utterance_id"]) for e in first]
    assert [i[-7:] for i in ids] == ["-000001", "-000002", "-000003"] and ids[0].startswith("kitchen-")
    states = [json.loads(m.payload) for m in sub.on(f"{P}/kitchen/speaker")]
    names = [s["speaker"] for s in states]
    assert names[0] == "none" and is_subsequence(["alice", "bob", "carol"], names), names
    assert sub.on(f"{P}/status")[-1].payload == b"online"


async def _a_broken_model_is_refused(
    sub: Collector, daemon: DaemonProcess, tmp_path: Path, reconfigure: Callable[[Path], None]
) -> None:
    """SIGHUP with a broken model: refused, the old one keeps running."""
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\0not a model" * 100)
    reconfigure(broken)
    seen = len(_finals(sub.messages))
    daemon.signal(signal.SIGHUP)
    await asyncio.to_thread(daemon.wait_log, lambda t: "reload refused" in t)
    assert "broken.safetensors" in daemon.text()
    await sub.wait_for(lambda ms: len(_finals(ms)) >= seen + 1, timeout=60)
    assert daemon.process.poll() is None


async def _a_renamed_speaker_is_followed(
    sub: Collector, daemon: DaemonProcess, renamed: Path, reconfigure: Callable[[Path], None]
) -> None:
    """SIGHUP with a good model whose speaker is renamed: discovery and the next utterances follow it."""
    reconfigure(renamed)
    daemon.signal(signal.SIGHUP)
    await asyncio.to_thread(daemon.wait_log, lambda t: "reloaded: model" in t)
    sensor = "homeassistant/sensor/spkidd_testhouse_kitchen_speaker/config"
    await sub.wait_for(lambda ms: "caroline" in json.loads(sub.on(sensor)[-1].payload)["options"])
    await sub.wait_for(lambda ms: any(e["speaker"] == "caroline" for e in _finals(ms)), timeout=90)


async def _sigterm_mid_utterance_says_the_last_word(
    sub: Collector, daemon: DaemonProcess, model: Path, reconfigure: Callable[[Path, str], None]
) -> None:
    """SIGTERM in the middle of an utterance: its final event, made after the signal, the queue flushed, `offline`,
    exit 0. The gate is first reloaded to keep utterances open, so the signal surely lands inside one."""
    reconfigure(model, LONG_UTTERANCES)
    seen = len(sub.messages)
    daemon.signal(signal.SIGHUP)
    statuses = f"{P}/kitchen/status"
    await sub.wait_for(lambda ms: [m.payload for m in ms[seen:] if m.topic == statuses] == [b"offline", b"online"])
    _, after = await sigterm_mid_utterance(sub, daemon, P, "kitchen", len(sub.messages))
    assert [m.payload for m in after if m.topic == statuses] == [b"offline"]


def _notifications(sock: socket.socket, until: str, timeout: float = 90.0) -> list[str]:
    sock.settimeout(timeout)
    got: list[str] = []
    while until not in got:
        got.extend(sock.recv(4096).decode().split("\n"))
    return got


def _healthy(url: str) -> tuple[int, Any]:
    """/healthz's answer; raises until it is 200, for wait_until."""
    status, body = page_http.http(url)
    assert status == 200, body
    return status, body


async def test_embedded_broker_notify_watchdog_and_health(tmp_path: Path) -> None:
    model = random_model(tmp_path / "random.safetensors", ["alice", "bob"])
    wav = conversation(tmp_path, [("alice", HELD_OUT_SENTENCES[3])], lead_s=0.5)
    mqtt_port, health_port = free_port(), free_port()
    extra = (
        f'[embedded_broker]\nport = {mqtt_port}\nimplementation = "mosquitto"\n'
        f"[health]\nenabled = true\nport = {health_port}\n"
    )
    config = write_config(tmp_path / "config.toml", model, file_source(wav), 'broker = "embedded"', extra)
    notify_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify_socket:
        notify_socket.bind(str(notify_path))
        env = {"NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "1000000"}
        daemon = DaemonProcess(config, tmp_path / "daemon.log", env)
        try:
            ready = await asyncio.to_thread(_notifications, notify_socket, "READY=1")
            assert "STATUS=identifying speakers on 1 source(s)" in ready, ready
            await asyncio.to_thread(_notifications, notify_socket, "WATCHDOG=1", 10)
            async with Collector(mqtt_port, [f"{P}/status", "homeassistant/+/+/config"]) as sub:
                await sub.wait_for(lambda ms: len(ms) >= 6)
                # READY=1 does not wait for MQTT, so these may come retained or live.
                assert sub.on(f"{P}/status")[0].payload == b"online"
                assert len([m for m in sub.messages if m.topic.endswith("/config")]) == 5
                # Broker connected and the source online: healthy. The source may not be online yet at the first
                # look, so poll (a daemon that never gets healthy fails here).
                healthz = f"http://127.0.0.1:{health_port}/healthz"
                status, health = await asyncio.to_thread(
                    wait_until, lambda: _healthy(healthz), 30, "a healthy /healthz"
                )
                assert status == 200 and health["status"] == "ok", health
                assert health["mqtt"]["connected"] is True and health["mqtt"]["published"] >= 6, health
                kitchen = health["streams"]["kitchen"]
                assert list(health["streams"]) == ["kitchen"] and kitchen["online"] is True, health
                assert kitchen["dropped_chunks"] == 0, health
                _, metrics = await asyncio.to_thread(page_http.http, f"http://127.0.0.1:{health_port}/metrics")
                assert 'spkidd_stream_realtime_factor{source="kitchen"}' in metrics
                daemon.signal(signal.SIGTERM)
                await asyncio.to_thread(_notifications, notify_socket, "STOPPING=1", 30)
                assert await asyncio.to_thread(daemon.wait, 60) == 0
                await sub.wait_for(lambda ms: sub.on(f"{P}/status")[-1].payload == b"offline")
        finally:
            daemon.kill()
    assert "embedded broker: mosquitto stopped" in daemon.text()


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        ('model = "m.safetensors"\n[[sources]]\nname = "k"\nkind = "mic"\n[mqtt]\nprot = 1\n', 2, "unknown key 'prot'"),
        ('model = "absent.safetensors"\n[[sources]]\nname = "k"\nkind = "mic"\n', 1, "no such model file"),
    ],
)
def test_bad_config_or_model_stop_at_start_with_a_clear_message(
    tmp_path: Path, body: str, code: int, message: str
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(body)
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    try:
        assert daemon.wait(60) == code
    finally:
        daemon.kill()
    assert message in daemon.text() and str(tmp_path) in daemon.text()
