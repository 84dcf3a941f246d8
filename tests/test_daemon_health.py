"""The health endpoint over real HTTP on 127.0.0.1: /healthz status codes and Prometheus /metrics."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

from spkidd.health import DaemonHealth, MqttHealth, StreamHealth
from spkidd.healthserver import HealthServer


def _get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


async def test_healthz_and_metrics() -> None:
    state = {"online": True, "connected": True}

    def snapshot() -> DaemonHealth:
        stream = StreamHealth(state["online"], 100.0, 5.0, 0.04, 7, 2, 1, 25.0)
        mqtt = MqttHealth(connected=state["connected"], published=42, events_dropped=3, reconnects=1, queued=0)
        return DaemonHealth(uptime_s=12.5, streams={"kitchen": stream}, mqtt=mqtt)

    server = HealthServer("127.0.0.1", 0, snapshot)
    await server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        status, ctype, body = await asyncio.to_thread(_get, f"{base}/healthz")
        assert (status, ctype) == (200, "application/json")
        health = json.loads(body)
        assert health["status"] == "ok" and health["mqtt"]["published"] == 42
        assert health["streams"]["kitchen"] == {
            "online": True,
            "lag_s": 0.04,
            "rtf": 0.05,
            "audio_s": 100.0,
            "speech_ratio": 0.25,
            "events": 7,
            "dropped_chunks": 2,
            "reconnects": 1,
        }
        status, ctype, metrics = await asyncio.to_thread(_get, f"{base}/metrics")
        assert status == 200 and ctype.startswith("text/plain")
        for line in [
            'spkidd_stream_lag_seconds{source="kitchen"} 0.04',
            'spkidd_stream_realtime_factor{source="kitchen"} 0.05',
            'spkidd_stream_speech_ratio{source="kitchen"} 0.25',
            'spkidd_identification_events_total{source="kitchen"} 7.0',
            'spkidd_stream_dropped_chunks_total{source="kitchen"} 2.0',
            'spkidd_stream_reconnects_total{source="kitchen"} 1.0',
            "spkidd_mqtt_reconnects_total 1.0",
            "spkidd_mqtt_events_dropped_total 3.0",
            "spkidd_mqtt_connected 1.0",
        ]:
            assert line in metrics.splitlines(), line
        assert "python_gc" not in metrics  # a registry of its own, not the process-global one
        state["connected"] = False
        status, _, body = await asyncio.to_thread(_get, f"{base}/healthz")
        assert status == 503 and json.loads(body)["status"] == "degraded"
        assert (await asyncio.to_thread(_get, f"{base}/nope"))[0] == 404
    finally:
        await server.stop()
