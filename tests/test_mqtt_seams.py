"""The publisher at its seams, against a real Mosquitto: a broker that keeps dropping us (a client-id takeover)
is not hammered (issue 11 item 8), and a removed source's retained topics are deleted and never resent (issue 11
item 12, issue 10 item 6)."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

import pytest

from spkidd.mqtt import MqttPublisher
from tests.support.mosquitto import Collector, Mosquitto, running_mosquitto
from tests.support.mqtt_events import activity, mqtt_settings
from tests.support.polling import until

NODE = "raspberrypi"
BASE = f"spkidd/{NODE}"


async def test_a_client_id_takeover_backs_off_and_says_why(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Two hosts called raspberrypi share the default client id: each connect kicks the other out. The backoff
    used to restart at every successful connect (about 15 connects per 20 s each, all with a full republish), so
    no wait ever grew past backoff_initial_s (0.1 s). Now the waits between these short-lived connections grow:
    one reaches 0.8 s (the fifth step), however fast or slow the machine is."""
    caplog.set_level(logging.INFO)
    with running_mosquitto(tmp_path) as broker:
        settings = mqtt_settings(broker.port, backoff_initial_s=0.1, backoff_max_s=2.0)
        hosts = [MqttPublisher(settings, NODE, ["kitchen"], ["alice"]) for _ in range(2)]
        for host in hosts:
            host.start()
        try:
            await until(lambda: max(_backoffs(caplog.text), default=0.0) >= 0.8, "a backoff of 0.8 s or more")
        finally:
            for host in hosts:
                await host.close(timeout=2)
    assert sum(host.stats.connects for host in hosts) >= 4
    assert "client id 'spkidd-raspberrypi'" in caplog.text


def _backoffs(log: str) -> list[float]:
    """The waits the publishers announced before reconnecting."""
    return [float(s) for s in re.findall(r"MQTT: reconnecting in (\d+\.\d) s", log)]


async def test_a_removed_source_is_deleted_from_the_broker_and_never_republished(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path)
    broker.start()
    publisher = MqttPublisher(mqtt_settings(broker.port), NODE, ["kitchen", "hall"], ["alice"])
    hall = [f"{BASE}/hall/status", f"{BASE}/hall/speaking", f"{BASE}/hall/speaker"]
    try:
        async with Collector(broker.port, [f"{BASE}/#"]) as sub:
            publisher.start()
            publisher.handle(activity("hall", 1, True))
            await sub.wait_for(lambda ms: all(sub.on(topic) for topic in hall))
            publisher.set_sources(["kitchen"])
            await sub.wait_for(lambda ms: all(sub.on(topic)[-1].payload == b"" for topic in hall))
        await asyncio.to_thread(broker.stop)
        await asyncio.to_thread(broker.start)
        async with Collector(broker.port, [f"{BASE}/#"]) as late:
            await late.wait_for(lambda ms: any(m.topic == f"{BASE}/status" for m in ms), timeout=20)
            await asyncio.sleep(0.5)
            assert {m.topic for m in late.messages} >= {f"{BASE}/kitchen/speaker", f"{BASE}/kitchen/status"}
            assert not [m.topic for m in late.messages if "/hall/" in m.topic]
    finally:
        await publisher.close(timeout=2)
        broker.stop()
