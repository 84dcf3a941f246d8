"""The daemon's own stats over MQTT (`<prefix>/<node>/stats`, docs/mqtt-and-home-assistant.md): every
`stats_interval_s`, not retained, QoS 0, with the documented keys, per source: audio heard, speech ratio, the
real-time factor, identification events (no fewer than were published before it, no more than were published in
all), no drops and no reconnects for a file; and the MQTT side's own counters. The same numbers /healthz shows."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from tests.conftest import HELD_OUT_SENTENCES
from tests.support.daemon import DaemonProcess, conversation, file_source, random_model, write_config
from tests.support.mosquitto import Collector, Received, free_port, running_mosquitto
from tests.support.page_http import http

P = "spkidd/testhouse"
STATS = f"{P}/stats"
SOURCE_KEYS = ["online", "lag_s", "rtf", "audio_s", "speech_ratio", "events", "dropped_chunks", "reconnects"]
MQTT_KEYS = ["connected", "published", "events_dropped", "reconnects", "queued"]
EVERYTHING = "[decision]\nmin_score = -1.0\nmin_confidence = 0.0\nmin_margin = 0.0\n"
"""An untrained model: every utterance gets a named final, so there are events to count."""


def stats(messages: list[Received]) -> list[tuple[int, dict[str, Any]]]:
    """(position in the stream, payload) of every stats message."""
    return [(i, json.loads(m.payload)) for i, m in enumerate(messages) if m.topic == STATS]


def events_before(messages: list[Received], position: int) -> int:
    return sum(m.topic == f"{P}/kitchen/event" for m in messages[:position])


async def test_stats_payload_counts_each_source(tmp_path: Path) -> None:
    talk = conversation(tmp_path, [("alice", HELD_OUT_SENTENCES[0]), ("bob", HELD_OUT_SENTENCES[1])], lead_s=0.5)
    quiet = tmp_path / "quiet.wav"
    sf.write(quiet, np.zeros(16000 * 3, dtype=np.float32), 16000, subtype="PCM_16")
    model = random_model(tmp_path / "voices.safetensors", ["alice", "bob"])
    sources = "".join(file_source(path, name) for name, path in (("kitchen", talk), ("hall", quiet)))
    health_port = free_port()
    with running_mosquitto(tmp_path) as broker:
        mqtt = f'broker = "external"\nhost = "127.0.0.1"\nport = {broker.port}\nstats_interval_s = 1.0\n'
        extra = f"{EVERYTHING}[health]\nenabled = true\nport = {health_port}\n"
        config = write_config(tmp_path / "config.toml", model, sources, mqtt, extra)
        async with Collector(broker.port, [STATS, f"{P}/kitchen/event", f"{P}/status"]) as sub:
            daemon = DaemonProcess(config, tmp_path / "daemon.log")
            try:
                await sub.wait_for(lambda ms: sum(m.topic == f"{P}/kitchen/event" for m in ms) >= 4, timeout=90)
                seen = len(stats(sub.messages))
                await sub.wait_for(lambda ms: len(stats(ms)) >= seen + 2, timeout=30)
                _, health = await asyncio.to_thread(http, f"http://127.0.0.1:{health_port}/healthz")
                running = len(sub.messages)  # stats published while stopping may show sources going away
                daemon.signal(signal.SIGTERM)
                assert await asyncio.to_thread(daemon.wait, 60) == 0
                await sub.wait_for(lambda ms: ms[-1].topic == f"{P}/status" and ms[-1].payload == b"offline")
            finally:
                daemon.kill()

    published = [(i, payload) for i, payload in stats(sub.messages) if i < running]
    total_events = events_before(sub.messages, len(sub.messages))
    assert len(published) >= 3
    for position, payload in published:
        message = sub.messages[position]
        assert not message.retain and message.qos == 0
        assert list(payload) == ["v", "node", "time", "uptime_s", "sources", "mqtt"] and payload["v"] == 1
        assert payload["node"] == "testhouse" and sorted(payload["sources"]) == ["hall", "kitchen"]
        assert list(payload["mqtt"]) == MQTT_KEYS and payload["mqtt"]["connected"] is True
        assert payload["mqtt"]["events_dropped"] == 0
        for name, source in payload["sources"].items():
            assert list(source) == SOURCE_KEYS, name
            assert source["online"] is True and source["dropped_chunks"] == 0 and source["reconnects"] == 0
            assert source["lag_s"] >= 0
        kitchen, hall = payload["sources"]["kitchen"], payload["sources"]["hall"]
        assert events_before(sub.messages, position) <= kitchen["events"] <= total_events
        assert hall["events"] == 0 and hall["speech_ratio"] == 0
    last = published[-1][1]
    kitchen = last["sources"]["kitchen"]
    assert kitchen["events"] >= 4 and 0 < kitchen["speech_ratio"] < 1 and kitchen["rtf"] > 0
    assert kitchen["audio_s"] > published[0][1]["sources"]["kitchen"]["audio_s"], "audio keeps being counted"
    assert [p["uptime_s"] for _, p in published] == sorted(p["uptime_s"] for _, p in published)
    assert [p["mqtt"]["published"] for _, p in published] == sorted(p["mqtt"]["published"] for _, p in published)
    assert sorted(health["streams"]) == ["hall", "kitchen"]
    assert list(health["streams"]["kitchen"]) == SOURCE_KEYS, "the stats and /healthz report the same fields"
