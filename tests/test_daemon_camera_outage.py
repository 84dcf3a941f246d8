"""A camera outage as `spkidd run` lives through it: a real RTSP server (gst-rtsp-server) is killed mid-run and
started again on the same port. Home Assistant is told (`<prefix>/<node>/<source>/status` goes `offline`, then
`online` again, retained), /healthz says `degraded` (503) meanwhile and `ok` afterwards, and its `reconnects` counts
exactly the reconnection attempts the daemon logged."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from spkidd.synthetic import synth_audio
from tests.support.daemon import DaemonProcess, random_model, write_config
from tests.support.mosquitto import Collector, Received, free_port, running_mosquitto
from tests.support.page_http import http
from tests.support.polling import until
from tests.support.rtsp_server import RtspServer
from tests.support.streaming import silence, trim, write_wav

pytestmark = pytest.mark.timeout(120)

P = "spkidd/testhouse"
STATUS = f"{P}/kitchen/status"
RETRY = "reconnecting in"
"""The camera source's warning for every failed session, each followed by one more attempt (FfmpegSource._run)."""


def statuses(messages: list[Received]) -> list[str]:
    return [m.payload.decode() for m in messages if m.topic == STATUS]


def stream(health_port: int) -> tuple[int, dict[str, Any]]:
    status, body = http(f"http://127.0.0.1:{health_port}/healthz", timeout=10)
    return status, body["streams"]["kitchen"]


async def until_health(health_port: int, check: Callable[[int, dict], bool], what: str) -> tuple[int, dict]:
    """Polls /healthz (off the loop, so the MQTT collector keeps receiving) until `check(status, stream)` holds;
    returns the answer that satisfied it."""
    seen: list[tuple[int, dict]] = []

    async def probe() -> bool:
        seen.append(await asyncio.to_thread(stream, health_port))
        return check(*seen[-1])

    try:
        await until(probe, what, timeout_s=30.0, every_s=0.2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; /healthz said {seen[-1]}") from None
    return seen[-1]


async def test_a_camera_outage_goes_offline_then_online_and_is_counted(tmp_path: Path) -> None:
    speech = trim(synth_audio("alice", "Somebody is talking in front of the hall camera right now."))
    wav = write_wav(tmp_path / "camera.wav", np.concatenate([speech, silence(1.0)]))
    model = random_model(tmp_path / "voices.safetensors", ["alice", "bob"])
    health_port = free_port()
    with running_mosquitto(tmp_path) as broker, RtspServer(wav, loop=True) as camera:
        sources = f'[[sources]]\nname = "kitchen"\nkind = "url"\nurl = "{camera.url}"\n'
        mqtt = f'broker = "external"\nhost = "127.0.0.1"\nport = {broker.port}\n'
        extra = f"[health]\nenabled = true\nport = {health_port}\n"
        config = write_config(tmp_path / "config.toml", model, sources, mqtt, extra)
        async with Collector(broker.port, [STATUS]) as sub:
            daemon = DaemonProcess(config, tmp_path / "daemon.log")
            try:
                await sub.wait_for(lambda ms: statuses(ms)[-1:] == ["online"], timeout=60)
                await until_health(health_port, lambda s, k: s == 200 and k["audio_s"] > 0, "audio to flow")
                _, before = await asyncio.to_thread(stream, health_port)
                assert before["reconnects"] == 0 and daemon.text().count(RETRY) == 0

                camera.kill()
                await sub.wait_for(lambda ms: statuses(ms)[-1:] == ["offline"], timeout=30)
                status, kitchen = await asyncio.to_thread(stream, health_port)
                assert status == 503 and kitchen["online"] is False
                # Let at least one reconnection attempt fail against the dead camera.
                await asyncio.to_thread(daemon.wait_log, lambda t: t.count(RETRY) >= 2, 60)

                camera.start()
                await sub.wait_for(lambda ms: statuses(ms)[-1:] == ["online"], timeout=60)
                retries = daemon.text().count(RETRY)
                status, after = await until_health(
                    health_port,
                    lambda s, k: s == 200 and k["reconnects"] == retries and k["audio_s"] > before["audio_s"] + 1,
                    "the reconnects to be counted and audio to flow again",
                )
                assert after["online"] is True
                assert daemon.text().count(RETRY) == retries, "no further outage happened while checking"
            finally:
                daemon.kill()
    seen = statuses(sub.messages)
    # Before its first audio the source is announced `offline` (or not at all, if audio came before the broker).
    assert seen[seen.index("online") :] == ["online", "offline", "online"], seen
    assert retries >= 2
    log = daemon.text()
    assert "source kitchen: offline" in log and "Traceback" not in log, log[-3000:]
