"""The publisher through a broker restarted again and again, a minute or less apart (an update of the Home Assistant
add-on, a flaky host), stopped cleanly or killed: each time it reconnects and republishes discovery, the retained
states and `online`, and its log says the broker went away, not that another client took its client id."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

import pytest

from spkidd.mqtt import MqttPublisher
from tests.support.mosquitto import Collector, Mosquitto
from tests.support.mqtt_events import mqtt_settings
from tests.support.polling import until

NODE = "raspberrypi"
STATUS = f"spkidd/{NODE}/status"
RETAINED = {STATUS, *(f"spkidd/{NODE}/kitchen/{topic}" for topic in ("status", "speaker", "speaking"))}


async def test_quick_broker_restarts_are_reconnected_and_not_taken_for_a_client_id_takeover(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "spkidd.mqtt")
    broker = Mosquitto(tmp_path)
    broker.start()
    publisher = MqttPublisher(mqtt_settings(broker.port), NODE, ["kitchen"], ["alice"])
    try:
        publisher.start()
        await until(lambda: publisher.stats.connected, "the first connection")
        for sig in (signal.SIGTERM, signal.SIGKILL, signal.SIGTERM):
            await _restart(broker, sig, publisher, caplog)
        assert publisher.stats.connects == 4
        assert "takes it over" not in caplog.text
    finally:
        await publisher.close(timeout=2)
        broker.stop()


async def _restart(
    broker: Mosquitto, sig: signal.Signals, publisher: MqttPublisher, caplog: pytest.LogCaptureFixture
) -> None:
    """Stops the broker with `sig` until the publisher has been refused, starts it again, and checks that the
    publisher's reconnect restored the retained topics and discovery on a broker that kept nothing."""
    mark, connects = len(caplog.text), publisher.stats.connects
    await asyncio.to_thread(broker.stop, sig)
    await until(lambda: "Connection refused" in caplog.text[mark:], "a refused reconnect")
    await asyncio.to_thread(broker.start)
    await until(lambda: publisher.stats.connects == connects + 1 and publisher.stats.connected, "the reconnect")
    async with Collector(broker.port, [f"spkidd/{NODE}/#", "homeassistant/#"]) as late:
        await late.wait_for(lambda ms: {m.topic for m in ms if m.retain} >= RETAINED)
        await late.wait_for(lambda ms: any(m.topic.startswith("homeassistant/") for m in ms))
        assert late.on(STATUS)[-1].payload == b"online"
