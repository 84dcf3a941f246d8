"""The publisher against a real Mosquitto: outages, last will, Home Assistant restarts, the queue bound, secrets."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spkidd.config import TlsConfig
from spkidd.mqtt import MqttPublisher
from tests.support.mosquitto import (
    Collector,
    Mosquitto,
    free_port,
    kill_group,
    make_certificates,
    publish_once,
    running_mosquitto,
)
from tests.support.mqtt_events import activity, identification, mqtt_settings
from tests.support.polling import until
from tests.support.tls import self_signed

REPO = Path(__file__).resolve().parents[1]
NODE = "testnode"
STATUS = f"spkidd/{NODE}/status"


def _utterances(collector: Collector) -> list[str]:
    return [json.loads(m.payload)["utterance_id"] for m in collector.messages if m.topic.endswith("/event")]


def _without_redeliveries(collector: Collector) -> tuple[list[str], int]:
    """Mosquitto may redeliver its last in-flight QoS 1 message to the test's own persistent subscriber after a
    restart (same packet id, same payload): that is the broker-to-subscriber leg, so it is set aside here. A
    second publish by spkidd would reach the subscriber under a new packet id and is still counted."""
    seen: set[tuple[int, bytes]] = set()
    ids, redelivered = [], 0
    for m in collector.messages:
        if not m.topic.endswith("/event"):
            continue
        if (m.mid, m.payload) in seen:
            redelivered += 1
            continue
        seen.add((m.mid, m.payload))
        ids.append(json.loads(m.payload)["utterance_id"])
    return ids, redelivered


async def test_broker_outage_delivers_every_event_once_in_order(tmp_path: Path) -> None:
    """Mosquitto stops mid-stream and comes back on the same port: the events produced meanwhile arrive after the
    reconnect, each exactly once and in order, and the retained state is restored. The outage is measured in the
    producer's events, not in seconds: events go out live before it, over 100 are queued during it (the broker
    is down all that time), and more follow the restart, however fast or slow the machine is."""
    broker = Mosquitto(tmp_path, persistence=True)
    broker.start()
    publisher = MqttPublisher(mqtt_settings(broker.port), NODE, ["kitchen"], ["alice"])
    try:
        async with Collector(broker.port, [f"spkidd/{NODE}/+/event", STATUS], client_id="watcher") as sub:
            publisher.start()
            await sub.wait_for(lambda ms: any(m.topic == STATUS and m.payload == b"online" for m in ms))
            produced = 0
            enough = asyncio.Event()

            async def produce() -> None:
                nonlocal produced
                while not enough.is_set():
                    publisher.handle(identification("kitchen", produced, "final", "alice" if produced % 2 else "bob"))
                    produced += 1
                    await asyncio.sleep(0.03)

            producer = asyncio.create_task(produce())
            await sub.wait_for(lambda ms: len(_utterances(sub)) >= 20, timeout=30)
            await asyncio.to_thread(broker.stop)
            await until(lambda: publisher.queued > 100, "over 100 events queued during the outage")
            await asyncio.to_thread(broker.start)
            restarted = produced
            await until(lambda: produced >= restarted + 20, "20 more events after the restart")
            enough.set()
            await producer
            total = produced
            await sub.wait_for(lambda ms: len(_without_redeliveries(sub)[0]) >= total, timeout=30)
            await asyncio.sleep(0.5)  # no event may come twice: give a duplicate the time to show up
            delivered, redelivered = _without_redeliveries(sub)
            assert delivered == [f"kitchen-{n:06d}" for n in range(total)]
            assert redelivered <= 1
            assert publisher.stats.reconnects >= 1 and publisher.stats.events_dropped == 0
            online = [m.payload for m in sub.messages if m.topic == STATUS]
            assert online[-1] == b"online" and online.count(b"online") >= 2
        # The restarted broker lost nothing retained: the publisher restored the state on reconnect.
        async with Collector(broker.port, [f"spkidd/{NODE}/#"]) as late:
            await late.wait_for(lambda ms: {m.topic for m in ms} >= {STATUS, f"spkidd/{NODE}/kitchen/speaker"})
            speaker = json.loads(late.on(f"spkidd/{NODE}/kitchen/speaker")[-1].payload)
            assert speaker["speaker"] == ("alice" if (total - 1) % 2 else "bob")
        await publisher.close()
    finally:
        await publisher.close(timeout=2)
        broker.stop()


async def test_last_will_marks_a_killed_publisher_offline(tmp_path: Path) -> None:
    with running_mosquitto(tmp_path) as broker:
        async with Collector(broker.port, [STATUS]) as sub:
            child = subprocess.Popen(
                [sys.executable, "-m", "tests.support.publisher_child", str(broker.port), NODE],
                cwd=REPO,
                stdout=subprocess.PIPE,
                start_new_session=True,
            )
            try:
                assert child.stdout is not None
                line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), 60)
                assert line.strip() == b"ONLINE"
                await sub.wait_for(lambda ms: [m.payload for m in ms] == [b"online"])
                kill_group(child, signal.SIGKILL)
                await sub.wait_for(lambda ms: [m.payload for m in ms] == [b"online", b"offline"], timeout=10)
            finally:
                kill_group(child, signal.SIGKILL)
        async with Collector(broker.port, [STATUS]) as late:
            await late.wait_for(lambda ms: len(ms) == 1)
            assert (late.messages[0].payload, late.messages[0].retain) == (b"offline", True)


async def test_home_assistant_online_and_new_speakers_trigger_rediscovery(tmp_path: Path) -> None:
    with running_mosquitto(tmp_path) as broker:
        settings = mqtt_settings(broker.port, rediscovery_max_delay_s=0.5)
        publisher = MqttPublisher(settings, NODE, ["kitchen"], ["alice", "bob"])
        try:
            async with Collector(broker.port, ["homeassistant/+/+/config", STATUS]) as sub:
                publisher.start()
                await sub.wait_for(lambda ms: any(m.topic == STATUS for m in ms))
                assert len([m for m in sub.messages if m.topic.endswith("/config")]) == 5
                sub.messages.clear()
                await publish_once(broker.port, "homeassistant/status", b"offline")
                await publish_once(broker.port, "homeassistant/status", b"online")
                await sub.wait_for(lambda ms: len(ms) >= 5, timeout=10)
                assert sorted(m.topic.split("/")[1] for m in sub.messages) == [
                    "binary_sensor",
                    "binary_sensor",
                    "event",
                    "sensor",
                    "sensor",
                ]
                sub.messages.clear()
                publisher.set_speakers(["alice", "bob", "carol"])
                topic = f"homeassistant/sensor/spkidd_{NODE}_kitchen_speaker/config"
                await sub.wait_for(lambda ms: any(m.topic == topic for m in ms), timeout=10)
                assert json.loads(sub.on(topic)[-1].payload)["options"] == [
                    "alice",
                    "bob",
                    "carol",
                    "unrecognized",
                    "none",
                ]
                sub.messages.clear()
                publisher.set_sources(["hall"])
                gone = f"homeassistant/event/spkidd_{NODE}_kitchen_event/config"
                await sub.wait_for(lambda ms: any(m.topic == gone and m.payload == b"" for m in ms), timeout=10)
        finally:
            await publisher.close(timeout=5)


async def test_new_speakers_republish_every_sources_state_after_the_options(tmp_path: Path) -> None:
    """The speaker list travels in the retained state (Home Assistant 2024.1 keeps a sensor's first attributes
    template): a change of speakers republishes the options, then each source's state, decision and `since`
    unchanged, with the new list."""
    kitchen, hall = (f"spkidd/{NODE}/{source}/speaker" for source in ("kitchen", "hall"))
    with running_mosquitto(tmp_path) as broker:
        publisher = MqttPublisher(mqtt_settings(broker.port), NODE, ["kitchen", "hall"], ["alice", "bob"])
        try:
            async with Collector(broker.port, ["homeassistant/sensor/+/config", kitchen, hall, STATUS]) as sub:
                publisher.start()
                await sub.wait_for(lambda ms: any(m.topic == STATUS for m in ms))
                publisher.handle(identification("kitchen", 1, "identified", "alice", 0.9))
                await sub.wait_for(lambda ms: json.loads(sub.on(kitchen)[-1].payload)["speaker"] == "alice")
                before = {topic: json.loads(sub.on(topic)[-1].payload) for topic in (kitchen, hall)}
                assert before[kitchen]["speakers"] == before[hall]["speakers"] == ["alice", "bob"]
                sub.messages.clear()
                publisher.set_speakers(["alice", "Zoë"])
                await sub.wait_for(lambda ms: bool(sub.on(kitchen) and sub.on(hall)))
                topics = [m.topic for m in sub.messages]
                assert all(t.endswith("/config") for t in topics[:4]) and sorted(topics[4:]) == [hall, kitchen]
                for topic in (kitchen, hall):
                    assert json.loads(sub.on(topic)[-1].payload) == {**before[topic], "speakers": ["alice", "Zoë"]}
        finally:
            await publisher.close(timeout=5)


async def test_a_removed_sources_topics_are_emptied_only_after_its_entities_are_removed(tmp_path: Path) -> None:
    """Home Assistant removes an entity in a task of its own: the source's state topics are emptied a while after
    the removal of its entities, never before, so no empty payload reaches the entities' templates."""
    state_topics = [f"spkidd/{NODE}/hall/{name}" for name in ("status", "speaking", "speaker")]
    with running_mosquitto(tmp_path) as broker:
        publisher = MqttPublisher(mqtt_settings(broker.port), NODE, ["kitchen", "hall"], ["alice"])
        try:
            async with Collector(broker.port, ["homeassistant/+/+/config", *state_topics, STATUS]) as sub:
                publisher.start()
                await sub.wait_for(lambda ms: any(m.topic == STATUS for m in ms))
                sub.messages.clear()
                publisher.set_sources(["kitchen"])
                await sub.wait_for(lambda ms: sum(m.topic.endswith("/config") and not m.payload for m in ms) == 4)
                removed = time.monotonic()
                await sub.wait_for(lambda ms: all(sub.on(topic) for topic in state_topics), timeout=10)
                held_s = time.monotonic() - removed
                emptied = [m for m in sub.messages if m.topic in state_topics]
                assert [m.payload for m in emptied] == [b""] * 3 and held_s > 1.0, (emptied, held_s)
                first = sub.messages.index(emptied[0])
                assert [m.topic for m in sub.messages[:first] if m.payload == b""] == [
                    f"homeassistant/{c}/spkidd_{NODE}_hall_{e}/config"
                    for c, e in (("binary_sensor", "speaking"), ("event", "event"), ("sensor", "confidence"))
                ] + [f"homeassistant/sensor/spkidd_{NODE}_hall_speaker/config"]
        finally:
            await publisher.close(timeout=5)


async def test_queue_bound_drops_oldest_events_and_counts_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Events produced before the broker is reachable are held up to queue_size; the oldest beyond that are
    dropped, counted and logged, and the rest delivered in order."""
    caplog.set_level(logging.WARNING, logger="spkidd.mqtt")
    port = free_port()
    publisher = MqttPublisher(mqtt_settings(port, queue_size=5), NODE, ["kitchen"], ["alice"])
    publisher.start()
    try:
        await asyncio.sleep(0.5)
        for n in range(12):
            publisher.handle(identification("kitchen", n, "final"))
        assert publisher.queued == 5 and publisher.stats.events_dropped == 7
        assert "MQTT queue full (5 events): dropping the oldest; 1 dropped so far" in caplog.text
        broker = Mosquitto(tmp_path, port=port, persistence=True)
        broker.start()
        try:
            async with Collector(port, [f"spkidd/{NODE}/+/event"], client_id="watcher2") as sub:
                await sub.wait_for(lambda ms: len(ms) >= 5, timeout=20)
                await asyncio.sleep(0.3)
                assert _utterances(sub) == [f"kitchen-{n:06d}" for n in range(7, 12)]
        finally:
            await publisher.close(timeout=5)
            broker.stop()
    finally:
        await publisher.close(timeout=2)


async def test_clear_after_sets_state_none(tmp_path: Path) -> None:
    with running_mosquitto(tmp_path) as broker:
        publisher = MqttPublisher(mqtt_settings(broker.port, clear_after_s=0.3), NODE, ["kitchen"], ["alice"])
        speaker = f"spkidd/{NODE}/kitchen/speaker"
        try:
            async with Collector(broker.port, [speaker, STATUS]) as sub:
                publisher.start()
                await sub.wait_for(lambda ms: any(m.topic == STATUS for m in ms))
                publisher.handle(activity("kitchen", 1, True))
                publisher.handle(identification("kitchen", 1, "identified"))
                publisher.handle(activity("kitchen", 1, False))
                publisher.handle(activity("kitchen", 2, True))
                await sub.wait_for(lambda ms: len(sub.on(speaker)) >= 2, timeout=5)
                # No `none` while utterance 2 goes on: the 0.3-s clear of utterance 1 must stay cancelled.
                await asyncio.sleep(1.0)
                states = [json.loads(m.payload)["state"] for m in sub.on(speaker)]
                assert states == ["none", "identified"]
                publisher.handle(activity("kitchen", 2, False))
                await sub.wait_for(lambda ms: len(sub.on(speaker)) == 3, timeout=5)
                last = json.loads(sub.on(speaker)[-1].payload)
                assert (last["state"], last["speaker"], last["utterance_id"]) == ("none", "none", "kitchen-000001")
        finally:
            await publisher.close(timeout=5)


async def test_password_authenticates_and_never_reaches_the_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "s3cr3t-Pa55word"
    with running_mosquitto(tmp_path, users={"spkidd": secret}) as broker:
        wrong = MqttPublisher(
            mqtt_settings(broker.port, username="spkidd", password="not-" + secret), "wrong", ["k"], []
        )
        wrong.start()
        right = MqttPublisher(mqtt_settings(broker.port, username="spkidd", password=secret), NODE, ["k"], [])
        right.start()
        try:
            for _ in range(200):
                if right.stats.connected and wrong.stats.connects == 0 and "refused" in caplog.text:
                    break
                await asyncio.sleep(0.05)
            assert right.stats.connected and not wrong.stats.connected
            assert (
                f"MQTT: the broker at 127.0.0.1:{broker.port} refused user 'spkidd': wrong user name or password, or "
                "the user may not connect; check [mqtt] username and password against the broker's users"
            ) in caplog.text
            assert secret not in caplog.text and secret not in repr(right.settings)
        finally:
            await wrong.close(timeout=1)
            await right.close(timeout=5)


async def test_stats_topic_is_published_periodically(tmp_path: Path) -> None:
    sources = {"kitchen": {"lag_s": 0.02, "rtf": 0.05, "events": 3, "dropped_chunks": 0, "reconnects": 1}}
    with running_mosquitto(tmp_path) as broker:
        publisher = MqttPublisher(
            mqtt_settings(broker.port, stats_interval_s=0.2), NODE, ["kitchen"], [], stats_provider=lambda: sources
        )
        try:
            async with Collector(broker.port, [f"spkidd/{NODE}/stats"]) as sub:
                publisher.start()
                await sub.wait_for(lambda ms: len(ms) >= 2, timeout=10)
                stats = json.loads(sub.messages[-1].payload)
                assert list(stats) == ["v", "node", "time", "uptime_s", "sources", "mqtt"]
                assert stats["v"] == 1 and stats["node"] == NODE and stats["sources"] == sources
                assert stats["mqtt"]["connected"] is True and stats["mqtt"]["reconnects"] == 0
                assert not sub.messages[-1].retain and sub.messages[-1].qos == 0
        finally:
            await publisher.close(timeout=5)


async def test_tls_with_a_private_ca(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A client that trusts the private CA connects over TLS; a plain one tries the TLS-only listener and is
    refused (it runs alone at first, so the refusal logged is its own), and stays out once TLS clients are in."""
    caplog.set_level(logging.INFO)
    ca, cert, key = make_certificates(tmp_path)
    with running_mosquitto(tmp_path, tls=(ca, cert, key)) as broker:
        good = MqttPublisher(
            mqtt_settings(broker.port, tls=TlsConfig(enabled=True, ca=ca)), NODE, ["kitchen"], ["alice"]
        )
        plain = MqttPublisher(mqtt_settings(broker.port), "plain", ["kitchen"], ["alice"])
        refused = f"MQTT: connection to 127.0.0.1:{broker.port} lost or refused"
        plain.start()
        try:
            await until(lambda: caplog.text.count(refused) >= 2, "the plain client tried twice and was refused")
            assert plain.stats.connects == 0 and not plain.stats.connected
            good.start()
            await until(lambda: good.stats.connected, "the TLS client to connect", 10)
            tries = caplog.text.count(refused)
            await until(lambda: caplog.text.count(refused) > tries, "the plain client to be refused again")
            assert plain.stats.connects == 0 and not plain.stats.connected
            assert good.stats.connects == 1 and good.stats.connected
        finally:
            await plain.close(timeout=1)
            await good.close(timeout=5)


async def test_a_certificate_from_another_ca_is_said_in_words(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The broker's certificate is signed by a CA that [mqtt.tls] ca is not: the log names that setting and the
    file, not only OpenSSL's "[SSL: CERTIFICATE_VERIFY_FAILED] ... (_ssl.c:1006)"."""
    caplog.set_level(logging.INFO)
    ca, cert, key = make_certificates(tmp_path)
    (tmp_path / "other").mkdir()
    other_ca, _, _ = make_certificates(tmp_path / "other")
    with running_mosquitto(tmp_path, tls=(ca, cert, key)) as broker:
        publisher = MqttPublisher(
            mqtt_settings(broker.port, tls=TlsConfig(enabled=True, ca=other_ca)), NODE, ["kitchen"], ["alice"]
        )
        publisher.start()
        expected = (
            f"MQTT: the certificate of the broker at 127.0.0.1:{broker.port} cannot be trusted (self-signed "
            f"certificate in certificate chain): it is not signed by [mqtt.tls] ca {other_ca}; set [mqtt.tls] ca to "
            "the CA certificate that signed the broker's"
        )
        try:
            await until(lambda: expected in caplog.text, "the refusal said in words", 10)
            assert publisher.stats.connects == 0
        finally:
            await publisher.close(timeout=1)


async def test_a_certificate_for_another_name_says_which_name(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A trusted certificate that does not list [mqtt] host is not blamed on the CA: the log says the name."""
    caplog.set_level(logging.INFO)
    cert, key = self_signed(tmp_path, names=("broker.house.test",), ips=())
    with running_mosquitto(tmp_path, tls=(cert, cert, key)) as broker:
        publisher = MqttPublisher(
            mqtt_settings(broker.port, tls=TlsConfig(enabled=True, ca=cert)), NODE, ["kitchen"], ["alice"]
        )
        publisher.start()
        expected = (
            f"MQTT: the certificate of the broker at 127.0.0.1:{broker.port} is not valid for the name '127.0.0.1': "
            "set [mqtt] host to a name or address the certificate lists"
        )
        try:
            await until(lambda: expected in caplog.text, "the name mismatch said in words", 10)
            assert publisher.stats.connects == 0 and "cannot be trusted" not in caplog.text
        finally:
            await publisher.close(timeout=1)
