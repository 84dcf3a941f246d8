"""GET /healthz (JSON) and GET /metrics (Prometheus): on the household page ([web]) and, for a listener of their
own, [health] (both off by default, 127.0.0.1). Imported only when one of them is on.

Served by aiohttp in the daemon's event loop instead of prometheus-client's threaded server, so both answers are
computed on the loop (a stuck loop also means a failing /healthz). The metrics come from one snapshot function at
scrape time, through a registry per daemon, never the global one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from spkidd.health import Snapshot, StreamHealth
from spkidd.web.listener import HttpListener

log = logging.getLogger(__name__)


class _DaemonCollector(Collector):
    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        health = self._snapshot()
        per_stream: list[tuple[GaugeMetricFamily | CounterMetricFamily, Callable[[StreamHealth], float]]] = [
            (GaugeMetricFamily("spkidd_stream_online", "1 while the source delivers audio", labels=["source"]),
             lambda s: float(s.online)),
            (GaugeMetricFamily("spkidd_stream_lag_seconds", "Arrival-to-processed delay of the last chunk",
                               labels=["source"]), lambda s: s.lag_s),
            (GaugeMetricFamily("spkidd_stream_realtime_factor", "Processing seconds per audio second",
                               labels=["source"]), lambda s: s.realtime_factor),
            (GaugeMetricFamily("spkidd_stream_speech_ratio", "Share of the audio inside utterances",
                               labels=["source"]), lambda s: s.speech_ratio),
            (CounterMetricFamily("spkidd_stream_audio_seconds", "Audio received", labels=["source"]),
             lambda s: s.audio_s),
            (CounterMetricFamily("spkidd_identification_events", "Identification events", labels=["source"]),
             lambda s: float(s.events)),
            (CounterMetricFamily("spkidd_stream_dropped_chunks", "Audio chunks dropped because processing lagged",
                                 labels=["source"]), lambda s: float(s.dropped_chunks)),
            (CounterMetricFamily("spkidd_stream_reconnects", "Source reconnects", labels=["source"]),
             lambda s: float(s.reconnects)),
        ]  # fmt: skip
        for metric, value in per_stream:
            for name, stream in health.streams.items():
                metric.add_metric([name], value(stream))
            yield metric
        m = health.mqtt
        yield GaugeMetricFamily("spkidd_mqtt_connected", "1 while connected to the broker", value=float(m.connected))
        yield GaugeMetricFamily("spkidd_mqtt_queued_events", "Events waiting for the broker", value=float(m.queued))
        yield CounterMetricFamily("spkidd_mqtt_published", "MQTT messages published", value=float(m.published))
        yield CounterMetricFamily(
            "spkidd_mqtt_events_dropped", "Events dropped by the queue bound", value=float(m.events_dropped)
        )
        yield CounterMetricFamily("spkidd_mqtt_reconnects", "Broker reconnects", value=float(m.reconnects))
        yield GaugeMetricFamily("spkidd_uptime_seconds", "Seconds since the daemon started", value=health.uptime_s)


def make_registry(snapshot: Snapshot) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_DaemonCollector(snapshot))
    return registry


def add_health_routes(app: web.Application, snapshot: Snapshot) -> None:
    """GET /healthz (JSON; 503 while degraded) and GET /metrics (Prometheus text) on `app`."""
    registry = make_registry(snapshot)

    async def healthz(request: web.Request) -> web.Response:
        health = snapshot()
        return web.Response(
            body=json.dumps(health.to_dict()).encode(),
            status=200 if health.healthy else 503,
            content_type="application/json",
        )

    async def metrics(request: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(registry))
        response.headers["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
        return response

    app.router.add_get("/healthz", healthz, allow_head=False)
    app.router.add_get("/metrics", metrics, allow_head=False)


class HealthServer:
    """Serves only /healthz and /metrics on host:port ([health]; port 0 picks a free one, `port` tells which)."""

    def __init__(self, host: str, port: int, snapshot: Snapshot) -> None:
        app = web.Application()
        add_health_routes(app, snapshot)
        self._listener = HttpListener(app, host, port)

    @property
    def port(self) -> int:
        return self._listener.port

    async def start(self) -> None:
        await self._listener.start()
        log.info("health endpoint on http://%s:%d/healthz and /metrics", self._listener.host, self.port)

    async def stop(self) -> None:
        await self._listener.stop()
