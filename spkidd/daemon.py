"""The daemon: N stream pipelines, one MQTT publisher, the embedded broker when configured, the health endpoint,
signals and systemd notify/watchdog.

- SIGTERM/SIGINT: STOPPING=1, stop every source (open utterances get their final events), flush the MQTT queue,
  publish `offline`, stop the broker, exit 0.
- SIGHUP: re-read the config file and the model in a thread. Anything invalid is refused with an error log and
  the running configuration stays. Otherwise unchanged streams take the new model at their next utterance,
  changed/added/removed sources are restarted/started/stopped, and Home Assistant discovery follows the
  speakers and sources. [mqtt], [embedded_broker], [health] and the instance name need a restart (logged).
- The watchdog pings come from the event loop itself, so a blocked loop is noticed by systemd.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spkidd.audio.base import AudioSource
from spkidd.broker import BrokerError, EmbeddedBroker, make_broker
from spkidd.config import ConfigError, DaemonConfig, MqttConfig, SourceConfig, load_config
from spkidd.decide import DecisionSettings
from spkidd.events import SourceStatus
from spkidd.health import DaemonHealth, HealthServer, MqttHealth, StreamHealth
from spkidd.modelfile import ModelBundle, ModelFileError, load_model
from spkidd.mqtt import MqttPublisher
from spkidd.pipeline import PipelineEvent, PipelineSettings, StreamPipeline
from spkidd.sdnotify import notify, watchdog_interval
from spkidd.steprunner import StepRunner
from spkidd.web.live import LiveHub
from spkidd.web.server import WebServer

log = logging.getLogger(__name__)

_STOP_TIMEOUT_S = 15.0
_RESTART_MAX_S = 60.0


class StartupError(Exception):
    """The daemon cannot start (model, broker, source); the message says what and where."""


def make_source(config: SourceConfig, on_status: Any) -> AudioSource:
    """The AudioSource for one [[sources]] table."""
    from spkidd.audio.sources import SourceSpecError
    from spkidd.audio.sources import make_source as from_spec

    try:
        if config.kind == "file":
            from spkidd.audio.replay import ReplaySource

            assert config.path is not None
            if not config.path.is_file():
                raise StartupError(f"source {config.name!r}: no such file {config.path}")
            return ReplaySource(
                config.name, config.path, realtime=config.realtime, loop=config.loop, on_status=on_status
            )
        if config.kind == "url":
            assert config.url is not None
            return from_spec(config.url, config.name, on_status=on_status)
        spec = "mic" if config.device is None else f"mic:{config.device}"
        return from_spec(spec, config.name, on_status=on_status)
    except SourceSpecError as exc:
        raise StartupError(str(exc)) from exc


@dataclass
class _Stream:
    config: SourceConfig
    settings: PipelineSettings
    pipeline: StreamPipeline
    task: asyncio.Task[None]
    online: bool = False


def _publisher_settings(config: DaemonConfig) -> MqttConfig:
    """With the embedded broker the publisher connects to it over loopback, wherever it listens."""
    if config.mqtt.broker != "embedded":
        return config.mqtt
    host = config.embedded_broker.host
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    return dataclasses.replace(config.mqtt, host=host, port=config.embedded_broker.port)


def _load_bundle(config: DaemonConfig) -> ModelBundle:
    """The model, checked against the config's decision overrides before anything uses it."""
    bundle = load_model(config.model)
    try:
        DecisionSettings.from_model(bundle.decision, config.pipeline.decision)
    except ValueError as exc:
        raise ModelFileError(f"{config.model}: calibrated thresholds unusable: {exc}") from exc
    return bundle


class Daemon:
    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self.bundle: ModelBundle | None = None
        self.publisher: MqttPublisher | None = None
        self._broker: EmbeddedBroker | None = None
        self._health: HealthServer | None = None
        self._web: WebServer | None = None
        self._live = LiveHub(s.name for s in config.sources)
        self._runner: StepRunner | None = None
        self._streams: dict[str, _Stream] = {}
        self._stop = asyncio.Event()
        self._reloading: asyncio.Task[bool] | None = None
        self._started = time.monotonic()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.reloads = 0

    # ----- lifecycle ------------------------------------------------------------------------------------------

    async def run(self) -> int:
        """Runs until SIGTERM/SIGINT; returns the process exit code."""
        loop = self._loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._request_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self._request_reload)
        watchdog: asyncio.Task[None] | None = None
        try:
            await self._start()
            notify(f"READY=1\nSTATUS=identifying speakers on {len(self._streams)} source(s)")
            log.info(
                "spkidd %s ready: %d source(s), model %s", self.config.instance, len(self._streams), self._model_name()
            )
            interval = watchdog_interval()
            if interval is not None:
                watchdog = asyncio.create_task(self._watchdog(interval / 2), name="watchdog")
            await self._stop.wait()
            return 0
        except StartupError as exc:
            log.error("cannot start: %s", exc)
            return 1
        finally:
            notify("STOPPING=1")
            if watchdog is not None:
                watchdog.cancel()
            await self._shutdown()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    def _request_stop(self, sig: signal.Signals) -> None:
        log.info("%s: shutting down", sig.name)
        self.stop()

    def stop(self) -> None:
        """Makes run() shut down cleanly and return 0, as SIGTERM does."""
        self._stop.set()

    @property
    def streams(self) -> dict[str, StreamPipeline]:
        return {name: stream.pipeline for name, stream in self._streams.items()}

    async def _start(self) -> None:
        config = self.config
        try:
            self.bundle = await asyncio.to_thread(_load_bundle, config)
        except ModelFileError as exc:
            raise StartupError(str(exc)) from exc
        if config.mqtt.broker == "embedded":
            self._broker = make_broker(config.embedded_broker)
            try:
                await self._broker.start()
            except BrokerError as exc:
                self._broker = None
                raise StartupError(
                    f'embedded broker: {exc} (another broker on that port? set [mqtt] broker = "external" '
                    "to use it, or change [embedded_broker] port)"
                ) from exc
        self.publisher = MqttPublisher(
            _publisher_settings(config),
            config.instance,
            [s.name for s in config.sources],
            self.bundle.labels,
            stats_provider=self._stream_stats,
        )
        self.publisher.start()
        if config.health.enabled:
            self._health = HealthServer(config.health.host, config.health.port, self.health)
            try:
                await self._health.start()
            except OSError as exc:
                self._health = None
                raise StartupError(f"health endpoint on {config.health.host}:{config.health.port}: {exc}") from exc
        if config.web.enabled:
            await self._start_web()
        self._runner = StepRunner()
        for source in config.sources:
            self._start_stream(source, config.pipeline, self.bundle)

    async def _shutdown(self) -> None:
        if self._reloading is not None:
            self._reloading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reloading
        await asyncio.gather(*(self._stop_stream(name) for name in list(self._streams)))
        if self.publisher is not None:
            await self.publisher.close(timeout=_STOP_TIMEOUT_S)
        if self._health is not None:
            await self._health.stop()
        if self._web is not None:
            await self._web.stop()
        if self._runner is not None:
            await asyncio.to_thread(self._runner.close)
        if self._broker is not None:
            await self._broker.stop()
        log.info("stopped")

    # ----- streams --------------------------------------------------------------------------------------------

    def _emit(self, event: PipelineEvent) -> None:
        if isinstance(event, SourceStatus):
            stream = self._streams.get(event.source)
            if stream is None:
                return  # a late word from a source that was removed by a reload
            stream.online = event.online
            if event.detail:
                log.info("source %s: %s (%s)", event.source, "online" if event.online else "offline", event.detail)
        if self.publisher is not None:
            self.publisher.handle(event)
        self._live.handle(event)

    async def _start_web(self) -> None:
        web = self.config.web
        self._web = WebServer(web, self, self._live)
        try:
            await self._web.start()
        except OSError as exc:
            self._web = None
            raise StartupError(f"web page on {web.host}:{web.port}: {exc.strerror} (set [web] port)") from exc

    @property
    def model_path(self) -> Path:
        return self.config.model

    @property
    def clips_folder(self) -> Path | None:
        return self.config.pipeline.unknown_clips.folder

    def use_bundle(self, bundle: ModelBundle) -> None:
        """A model the web page just saved to the model file: every stream uses it from its next utterance."""
        for stream in self._streams.values():
            stream.pipeline.replace_model(bundle)
        self.bundle = bundle
        if self.publisher is not None:
            self.publisher.set_speakers(bundle.labels)

    def _on_status(self, event: SourceStatus) -> None:
        """Sources may report from their own threads: those hop into the loop; on the loop it is delivered at
        once, so it stays in order with the pipeline's own events."""
        assert self._loop is not None
        try:
            on_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            self._emit(event)
        else:
            self._loop.call_soon_threadsafe(self._emit, event)

    def _start_stream(self, config: SourceConfig, settings: PipelineSettings, bundle: ModelBundle) -> None:
        source = make_source(config, self._on_status)
        pipeline = StreamPipeline(source, bundle, settings, runner=self._runner)
        task = asyncio.create_task(self._supervise(config.name, pipeline), name=f"stream-{config.name}")
        self._streams[config.name] = _Stream(config, settings, pipeline, task)

    async def _supervise(self, name: str, pipeline: StreamPipeline) -> None:
        """A pipeline that crashes (a bug, not a source outage: sources reconnect themselves) is rebuilt with
        backoff; one that ends because its audio ended stays ended."""
        attempt = 0
        while True:
            try:
                await pipeline.run(self._emit)
                log.info("source %s: audio ended", name)
                return
            except Exception:
                log.exception("source %s: pipeline failed", name)
            self._emit(SourceStatus(name, False, "pipeline failed"))
            delay = min(_RESTART_MAX_S, 1.0 * 2**attempt) * random.uniform(0.5, 1.0)
            attempt = min(attempt + 1, 10)
            await asyncio.sleep(delay)
            stream = self._streams.get(name)
            if stream is None or self.bundle is None:
                return
            pipeline = StreamPipeline(
                make_source(stream.config, self._on_status), self.bundle, stream.settings, runner=self._runner
            )
            stream.pipeline = pipeline

    async def _stop_stream(self, name: str) -> None:
        stream = self._streams.get(name)
        if stream is None:
            return
        try:
            async with asyncio.timeout(_STOP_TIMEOUT_S):
                await stream.pipeline.stop()
        except TimeoutError:
            log.error("source %s: did not stop within %.0f s", name, _STOP_TIMEOUT_S)
        stream.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stream.task
        del self._streams[name]

    # ----- reload ---------------------------------------------------------------------------------------------

    def _request_reload(self) -> None:
        if self._reloading is not None and not self._reloading.done():
            log.warning("SIGHUP: a reload is already running")
            return
        self._reloading = asyncio.create_task(self.reload(), name="reload")

    async def reload(self) -> bool:
        """Applies the config file and model as they are now; False (and the old ones keep running) if either
        is invalid."""
        notify("RELOADING=1")
        try:
            return await self._reload()
        finally:
            notify("READY=1")

    async def _reload(self) -> bool:
        path = self.config.path
        log.info("SIGHUP: reloading %s", path)
        try:
            config = await asyncio.to_thread(load_config, path)
            bundle = await asyncio.to_thread(_load_bundle, config)
            for source in config.sources:
                old = self._streams.get(source.name)
                if old is None or old.config != source:
                    await asyncio.to_thread(make_source, source, self._on_status)
        except (ConfigError, ModelFileError, StartupError) as exc:
            log.error("reload refused, still running the previous configuration: %s", exc)
            return False
        for key in ("instance", "mqtt", "embedded_broker", "health", "web"):
            if getattr(config, key) != getattr(self.config, key):
                log.warning("reload: changes to %r take effect only after a restart", key)
        logging.getLogger().setLevel(config.logging.level)
        wanted = {s.name: s for s in config.sources}
        changed = [n for n, s in self._streams.items() if wanted.get(n) != s.config or s.settings != config.pipeline]
        for name in changed:
            await self._stop_stream(name)
        for stream in self._streams.values():
            stream.pipeline.replace_model(bundle)
        for source in config.sources:
            if source.name not in self._streams:
                self._start_stream(source, config.pipeline, bundle)
        self.config = dataclasses.replace(
            config,
            instance=self.config.instance,
            mqtt=self.config.mqtt,
            embedded_broker=self.config.embedded_broker,
            health=self.config.health,
            web=self.config.web,
        )
        self.bundle = bundle
        if self.publisher is not None:
            self.publisher.set_sources([s.name for s in config.sources])
            self.publisher.set_speakers(bundle.labels)
        self._live.set_sources(s.name for s in config.sources)
        self.reloads += 1
        log.info("reloaded: model %s, speakers %s, %d source(s)", self._model_name(), bundle.labels, len(wanted))
        return True

    # ----- status ---------------------------------------------------------------------------------------------

    def _model_name(self) -> str:
        return "" if self.bundle is None else f"{self.bundle.name} {self.bundle.version}".strip()

    def _stream_health(self) -> dict[str, StreamHealth]:
        out = {}
        for name, stream in self._streams.items():
            s = stream.pipeline.stats
            out[name] = StreamHealth(
                stream.online, s.audio_s, s.processing_s, s.lag_s, s.events, s.dropped_chunks, s.reconnects, s.speech_s
            )
        return out

    def _stream_stats(self) -> dict[str, dict[str, Any]]:
        return {name: h.to_dict() for name, h in self._stream_health().items()}

    def health(self) -> DaemonHealth:
        mqtt = MqttHealth()
        if self.publisher is not None:
            st = self.publisher.stats
            mqtt = MqttHealth(st.connected, st.published, st.events_dropped, st.reconnects, self.publisher.queued)
        return DaemonHealth(time.monotonic() - self._started, self._stream_health(), mqtt)

    async def _watchdog(self, every_s: float) -> None:
        while True:
            notify("WATCHDOG=1")
            await asyncio.sleep(every_s)


async def run_daemon(config: DaemonConfig) -> int:
    return await Daemon(config).run()
