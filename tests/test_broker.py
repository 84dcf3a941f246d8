"""The embedded broker: both implementations against the same ordering and retained-message tests — the
evidence behind preferring a private Mosquitto (see spkidd/broker.py)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
from collections.abc import AsyncIterator

import pytest

from spkidd.broker import AmqttBroker, BrokerError, EmbeddedBroker, MosquittoBroker, make_broker
from spkidd.config import EmbeddedBrokerConfig
from spkidd.mqtt import MqttPublisher
from tests.support.mosquitto import Collector, free_port, publish_once
from tests.support.mqtt_events import activity, identification, mqtt_settings

IMPLEMENTATIONS = ["mosquitto", "amqtt"]


def _make(kind: str, port: int) -> EmbeddedBroker:
    return MosquittoBroker("127.0.0.1", port) if kind == "mosquitto" else AmqttBroker("127.0.0.1", port)


@pytest.fixture(params=IMPLEMENTATIONS)
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[EmbeddedBroker]:
    embedded = _make(request.param, free_port())
    await embedded.start()
    try:
        yield embedded
    finally:
        await embedded.stop()


async def test_events_arrive_in_order_and_state_is_retained(broker: EmbeddedBroker) -> None:
    publisher = MqttPublisher(mqtt_settings(broker.port, clear_after_s=600), "node", ["kitchen"], ["alice", "bob"])
    try:
        async with Collector(broker.port, ["spkidd/node/kitchen/#", "spkidd/node/status"]) as sub:
            publisher.start()
            await sub.wait_for(lambda ms: any(m.topic == "spkidd/node/status" for m in ms))
            for n in range(100):
                publisher.handle(activity("kitchen", n, True))
                publisher.handle(identification("kitchen", n, "final", "alice" if n % 3 else "bob"))
                publisher.handle(activity("kitchen", n, False))
            speaking = "spkidd/node/kitchen/speaking"

            def done(_: object) -> bool:
                payloads = [m.payload for m in sub.on(speaking)]
                return payloads.count(b"ON") == 100 and payloads[-1] == b"OFF"

            # Everything is sent in order, so the last OFF comes after the last state change.
            await sub.wait_for(done)
            events = [json.loads(m.payload)["utterance_id"] for m in sub.on("spkidd/node/kitchen/event")]
            assert events == [f"kitchen-{n:06d}" for n in range(100)]
        async with Collector(broker.port, ["spkidd/node/kitchen/speaker"]) as late:
            speaker = "spkidd/node/kitchen/speaker"
            await late.wait_for(lambda ms: len(late.on(speaker)) >= 1, timeout=5)
            await asyncio.sleep(0.3)
            assert all(m.retain for m in late.on(speaker))
            assert json.loads(late.on(speaker)[-1].payload)["speaker"] == "bob"
    finally:
        await publisher.close(timeout=5)


async def _retained_observations(port: int) -> tuple[int, int]:
    """(messages a client that subscribed to nothing receives, copies of one retained topic a subscriber gets)."""
    await publish_once(port, "room/1/state", b"retained-1", retain=True)
    async with Collector(port, ["room/1/state"]) as first:
        await first.wait_for(lambda ms: len(ms) >= 1)
    async with Collector(port, []) as nothing:
        await asyncio.sleep(0.5)
        unsolicited = len(nothing.messages)
    async with Collector(port, ["room/#"]) as second:
        await second.wait_for(lambda ms: len(ms) >= 1)
        await asyncio.sleep(0.5)
        copies = len(second.on("room/1/state"))
    return unsolicited, copies


async def test_mosquitto_delivers_retained_messages_exactly() -> None:
    embedded = MosquittoBroker("127.0.0.1", free_port())
    await embedded.start()
    try:
        assert await _retained_observations(embedded.port) == (0, 1)
    finally:
        await embedded.stop()


async def test_amqtt_retained_replay_bug() -> None:
    """amqtt 0.12.1 replays retained messages on CONNECT for filters other clients subscribed to. If this test
    fails, amqtt has been fixed and could be reconsidered as the default."""
    embedded = AmqttBroker("127.0.0.1", free_port())
    await embedded.start()
    try:
        unsolicited, copies = await _retained_observations(embedded.port)
        assert unsolicited > 0 or copies > 1
    finally:
        await embedded.stop()


@pytest.mark.parametrize("kind", IMPLEMENTATIONS)
async def test_stop_then_start_again_on_the_same_port(kind: str) -> None:
    port = free_port()
    for _ in range(2):
        embedded = _make(kind, port)
        await embedded.start()
        await publish_once(port, "t", b"x")
        await embedded.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), 0.5).close()


async def test_busy_port_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        embedded = MosquittoBroker("127.0.0.1", port)
        with pytest.raises(BrokerError, match=f"mosquitto on 127.0.0.1:{port}"):
            await embedded.start()


async def test_killed_mosquitto_is_restarted_and_the_publisher_reconnects() -> None:
    embedded = MosquittoBroker("127.0.0.1", free_port())
    await embedded.start()
    publisher = MqttPublisher(mqtt_settings(embedded.port), "node", ["kitchen"], [])
    try:
        publisher.start()
        for _ in range(200):
            if publisher.stats.connected:
                break
            await asyncio.sleep(0.05)
        process = embedded._process
        assert process is not None and publisher.stats.connected
        os.kill(process.pid, signal.SIGKILL)
        for _ in range(400):
            if embedded.restarts == 1 and publisher.stats.connected and publisher.stats.reconnects == 1:
                break
            await asyncio.sleep(0.05)
        assert embedded.restarts == 1 and publisher.stats.reconnects == 1 and publisher.stats.connected
    finally:
        await publisher.close(timeout=5)
        await embedded.stop()


def test_auto_prefers_mosquitto() -> None:
    assert isinstance(make_broker(EmbeddedBrokerConfig(port=1)), MosquittoBroker)
    assert isinstance(make_broker(EmbeddedBrokerConfig(port=1, implementation="amqtt")), AmqttBroker)
