"""The daemon: N stream pipelines, one MQTT publisher, the embedded broker when configured, the health endpoint,
signals and systemd notify/watchdog.

- SIGTERM/SIGINT: STOPPING=1, stop every source (open utterances get their final events, then the source's one
  `offline`), flush the MQTT queue, publish `offline`, stop the broker, exit 0. Every shutdown step runs whatever
  failed before it, within the unit's TimeoutStopSec.
- SIGHUP: re-read the config file and the model in a thread. Anything invalid is refused with an error log and
  the running configuration stays. Otherwise streams whose source and gate did not change keep running and take
  the new model and thresholds at their next utterance, changed/added/removed sources are
  restarted/started/stopped, and Home Assistant discovery follows the speakers and sources. [mqtt],
  [embedded_broker], [health] and the instance name need a restart (logged). A SIGHUP during start-up is applied
  once the daemon is ready; one during shutdown is ignored.
- The model file replaced from outside (`spkidd enroll`, `forget`, a new training onto it) is taken up by every
  stream from its next utterance, as a SIGHUP would, but without re-reading the config (spkidd/model_watch.py).
- The watchdog pings come from the event loop itself, so a blocked loop is noticed by systemd.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spkidd.audio.base import AudioSource
from spkidd.broker import BrokerError, EmbeddedBroker, make_broker
from spkidd.config import ConfigError, DaemonConfig, MqttConfig, SourceConfig, load_config
from spkidd.decide import DecisionSettings
from spkidd.events import SourceStatus
from spkidd.freed_memory import TrimAfterModelChanges
from spkidd.health import DaemonHealth, MqttHealth, StreamHealth
from spkidd.model_watch import ModelFileWatch
from spkidd.modelfile import ModelBundle, ModelFileError, load_model
from spkidd.mqtt import MqttPublisher
from spkidd.pipeline import PipelineEvent, PipelineSettings, StreamPipeline
from spkidd.sdnotify import notify, watchdog_interval
from spkidd.steprunner import StepRunner
from spkidd.utterance_ids import UtteranceIds, run_stamp
from spkidd.web.live import LiveHub

if TYPE_CHECKING:  # aiohttp and prometheus-client are imported only when [health] or [web] is on
    from spkidd.healthserver import HealthServer
    from spkidd.web.server import WebServer

log = logging.getLogger(__name__)

_STREAM_STOP_S = 10.0
_MQTT_CLOSE_S = 10.0
"""With the broker's 5 s, a stop stays within the unit's TimeoutStopSec=30 whatever hangs."""
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


def check_source(config: SourceConfig) -> None:
    """Refuses (StartupError) a [[sources]] table whose source cannot start: a file that is missing, or that the
    decoder cannot open (a file that is not audio), with the decoder's reason. A file damaged further on still plays
    up to the damage. Blocking (a file is opened): run it in a thread."""
    from spkidd.audio.decode import AudioDecodeError
    from spkidd.audio.replay import ReplaySource

    source = make_source(config, None)
    if isinstance(source, ReplaySource):
        try:
            source.check()
        except AudioDecodeError as exc:
            raise StartupError(f"source {config.name!r}: {exc}") from exc


@dataclass
class _Stream:
    config: SourceConfig
    settings: PipelineSettings
    pipeline: StreamPipeline
    task: asyncio.Task[None]
    online: bool = False
    stopping: bool = False


def _publisher_settings(config: DaemonConfig) -> MqttConfig:
    """With the embedded broker the publisher connects to it over loopback, wherever it listens."""
    if config.mqtt.broker != "embedded":
        return config.mqtt
    host = config.embedded_broker.host
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    return dataclasses.replace(config.mqtt, host=host, port=config.embedded_broker.port)


def _load_bundle(config: DaemonConfig) -> ModelBundle:
    """The model, checked against the config's decision overrides before anything uses it. Whatever else the
    loader raises on a file it cannot use is refused the same way, never a traceback or a dead reload."""
    try:
        bundle = load_model(config.model)
    except ModelFileError:
        raise
    except Exception as exc:
        raise ModelFileError(f"{config.model}: unusable model file: {type(exc).__name__}: {exc}") from exc
    try:
        DecisionSettings.from_model(bundle.decision, config.pipeline.decision)
    except ValueError as exc:
        raise ModelFileError(f"{config.model}: calibrated thresholds unusable: {exc}") from exc
    return bundle


def root_level(configured: str, command_line: int | None) -> int:
    """The root logger's level: the config's, but never less verbose than the command line asked for (`spkidd -v
    run`), so that a reload does not silence a daemon that was started to be debugged."""
    level = logging.getLevelNamesMapping()[configured]
    return level if command_line is None else min(level, command_line)


def speakers_change(before: list[str], after: list[str], most: int = 10) -> str:
    """ "N speakers", with who was added and removed: a model of 250 voices listed in full on every reload was
    2 kB of log each time."""

    def names(which: list[str]) -> str:
        more = f" and {len(which) - most} more" if len(which) > most else ""
        return ", ".join(which[:most]) + more

    added = [s for s in after if s not in before]
    removed = [s for s in before if s not in after]
    said = f"{len(after)} speakers"
    if added:
        said += f" (added {names(added)})"
    if removed:
        said += f" (removed {names(removed)})"
    return said


def _trim_delay(config: DaemonConfig) -> float:
    """How long after a model change the old model may still score an utterance: the longest one, and a second."""
    return config.pipeline.gate.max_utterance_s + 1.0


def _restart_delay(failures: int) -> float:
    return min(_RESTART_MAX_S, 2.0 ** (min(failures, 10) - 1)) * random.uniform(0.5, 1.0)


class Daemon:
    """`early_hangup`: set by a SIGHUP handler installed before the daemon existed (the CLI's), so a reload asked
    for while the daemon was still importing is applied once it is ready. `command_line_level`: the log level the
    command line asked for (`-v`), kept across reloads (root_level)."""

    def __init__(
        self,
        config: DaemonConfig,
        early_hangup: threading.Event | None = None,
        command_line_level: int | None = None,
    ) -> None:
        self.config = config
        self._early_hangup = early_hangup
        self._command_line_level = command_line_level
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
        self._model_watch: ModelFileWatch | None = None
        self._watching: asyncio.Task[None] | None = None
        self._ready = False
        self._stopping = False
        self._reload_pending = False
        self._ids: dict[str, UtteranceIds] = {}
        self._run_stamp = run_stamp()
        self._started = time.monotonic()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.reloads = 0
        self.freed_memory = TrimAfterModelChanges(_trim_delay(config))

    # ----- lifecycle ------------------------------------------------------------------------------------------

    async def run(self) -> int:
        """Runs until SIGTERM/SIGINT; returns the process exit code."""
        loop = self._loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._request_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self._request_reload)
        if self._early_hangup is not None and self._early_hangup.is_set():
            self._request_reload()
        watchdog: asyncio.Task[None] | None = None
        try:
            await self._start()
            notify(f"READY=1\nSTATUS=identifying speakers on {len(self._streams)} source(s)")
            log.info(
                "spkidd %s ready: %d source(s), model %s", self.config.instance, len(self._streams), self._model_name()
            )
            self._became_ready()
            if self._model_watch is not None:
                self._watching = asyncio.create_task(self._model_watch.run(), name="model-watch")
            interval = watchdog_interval()
            if interval is not None:
                watchdog = asyncio.create_task(self._watchdog(interval / 2), name="watchdog")
            await self._stop.wait()
            return 0
        except StartupError as exc:
            log.error("cannot start: %s", exc)
            return 1
        except Exception:
            log.exception("cannot start: unexpected error")
            return 1
        finally:
            self._stopping = True
            notify("STOPPING=1")
            if watchdog is not None:
                watchdog.cancel()
            await self._shutdown()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            # Its default action would kill the process between here and its exit code.
            signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def _became_ready(self) -> None:
        self._ready = True
        if self._reload_pending and not self._stop.is_set():
            self._reload_pending = False
            self._request_reload()

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
        for source in config.sources:
            await asyncio.to_thread(check_source, source)
        self._model_watch = ModelFileWatch(config.model, self._model_file_changed)
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
            page_url=config.web.page_url,
        )
        self.publisher.start()
        if config.health.enabled:
            from spkidd.healthserver import HealthServer

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
        """Each step runs whatever the ones before it raised: streams, MQTT (`offline`), health, runner, broker."""
        steps: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("model watch", self._stop_watching),
            ("reload", self._cancel_reload),
            ("memory trim", self.freed_memory.close),
            ("streams", self._stop_streams),
            ("MQTT", self._close_publisher),
            ("health endpoint", self._stop_health),
            ("web page", self._stop_web),
            ("step runner", self._close_runner),
            ("embedded broker", self._stop_broker),
        ]
        for what, step in steps:
            try:
                await step()
            except Exception:
                log.exception("shutdown: stopping the %s failed", what)
        log.info("stopped")

    async def _stop_watching(self) -> None:
        if self._watching is not None:
            self._watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watching

    async def _cancel_reload(self) -> None:
        if self._reloading is not None:
            self._reloading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reloading

    async def _stop_streams(self) -> None:
        await asyncio.gather(*(self._stop_stream(name) for name in list(self._streams)))

    async def _close_publisher(self) -> None:
        if self.publisher is not None:
            await self.publisher.close(timeout=_MQTT_CLOSE_S)

    async def _stop_health(self) -> None:
        if self._health is not None:
            await self._health.stop()

    async def _stop_web(self) -> None:
        if self._web is not None:
            await self._web.stop()

    async def _close_runner(self) -> None:
        if self._runner is not None:
            await asyncio.to_thread(self._runner.close)

    async def _stop_broker(self) -> None:
        if self._broker is not None:
            await self._broker.stop()

    # ----- streams --------------------------------------------------------------------------------------------

    def _emit(self, event: PipelineEvent) -> None:
        if isinstance(event, SourceStatus) and not self._source_status_changed(event):
            return
        if self.publisher is not None:
            self.publisher.handle(event)
        self._live.handle(event)

    async def _start_web(self) -> None:
        from spkidd.web.server import WebServer

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
        self.freed_memory.model_changed()
        if self._model_watch is not None:
            self._model_watch.remember()
        if self.publisher is not None:
            self.publisher.set_speakers(bundle.labels)

    async def _model_file_changed(self) -> None:
        """The model file replaced from outside: used as the page's changes are; a file it cannot use is refused
        and the running model stays. A reload under way reads the file itself."""
        if self._reloading is not None and not self._reloading.done():
            return
        try:
            bundle = await asyncio.to_thread(_load_bundle, self.config)
        except ModelFileError as exc:
            log.error("the model file changed but cannot be used; still running the previous model: %s", exc)
            return
        before = self.bundle.labels if self.bundle is not None else []
        self.use_bundle(bundle)
        log.info("the model file changed: model %s, %s", self._model_name(), speakers_change(before, bundle.labels))

    def _source_status_changed(self, event: SourceStatus) -> bool:
        """Only changes of a source's status are published. While a stream stops its source's word is held back:
        _stop_stream publishes one `offline` after the last utterance's final event."""
        stream = self._streams.get(event.source)
        if stream is None or stream.stopping or stream.online == event.online:
            return False  # a late word from a removed source, a stopping stream, or no change
        stream.online = event.online
        if event.detail:
            log.info("source %s: %s (%s)", event.source, "online" if event.online else "offline", event.detail)
        return True

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
        pipeline = self._pipeline(source, bundle, settings)
        task = asyncio.create_task(self._supervise(config.name, pipeline), name=f"stream-{config.name}")
        self._streams[config.name] = _Stream(config, settings, pipeline, task)

    def _pipeline(self, source: AudioSource, bundle: ModelBundle, settings: PipelineSettings) -> StreamPipeline:
        """A source's pipeline; its utterance ids go on across restarts and reloads."""
        ids = self._ids.setdefault(source.name, UtteranceIds(source.name, self._run_stamp))
        return StreamPipeline(source, bundle, settings, runner=self._runner, utterance_ids=ids)

    async def _supervise(self, name: str, pipeline: StreamPipeline | None) -> None:
        """A pipeline that crashes (a bug, not a source outage: sources reconnect themselves) is rebuilt with
        backoff on the same source, which resumes where it was; one that ends (its audio ended, its source failed,
        or it was stopped) stays ended, and the log says which. Nothing escapes this task: a failure is logged where
        it happens, not at shutdown."""
        failures = 0
        while pipeline is not None:
            began = time.monotonic()
            try:
                await pipeline.run(self._emit)
                log.info("source %s: %s", name, pipeline.end_reason)
                return
            except Exception:
                failures = 1 if time.monotonic() - began > _RESTART_MAX_S else failures + 1
                log.exception("source %s: pipeline failed (%d in a row); restarting it", name, failures)
            self._emit(SourceStatus(name, False, "pipeline failed"))
            pipeline = await self._rebuild(name, failures)

    async def _rebuild(self, name: str, failures: int) -> StreamPipeline | None:
        """After a backoff, a new pipeline on the stream's source; None if the stream was stopped meanwhile."""
        while True:
            await asyncio.sleep(_restart_delay(failures))
            stream = self._streams.get(name)
            if stream is None or stream.stopping or self.bundle is None:
                return None
            try:
                stream.pipeline = self._pipeline(stream.pipeline.source, self.bundle, stream.settings)
                return stream.pipeline
            except Exception:
                failures += 1
                log.exception("source %s: cannot rebuild the pipeline; retrying", name)

    async def _stop_stream(self, name: str) -> None:
        stream = self._streams.get(name)
        if stream is None:
            return
        stream.stopping = True
        try:
            async with asyncio.timeout(_STREAM_STOP_S):
                await stream.pipeline.stop()
        except TimeoutError:
            log.error("source %s: did not stop within %.0f s", name, _STREAM_STOP_S)
        stream.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stream.task
        del self._streams[name]
        if stream.online and self.publisher is not None:
            self.publisher.handle(SourceStatus(name, False, "stopped"))

    # ----- reload ---------------------------------------------------------------------------------------------

    def _request_reload(self) -> None:
        if self._stopping or self._stop.is_set():
            log.info("SIGHUP during shutdown: ignored")
            return
        if not self._ready:
            log.info("SIGHUP during start-up: reloading once started")
            self._reload_pending = True
            return
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
        except Exception:
            log.exception("reload failed while applying the new configuration; it may be partly applied")
            return False
        finally:
            notify("READY=1")

    async def _reload(self) -> bool:
        prepared = await self._prepare_reload()
        if prepared is None:
            return False
        await self._apply_reload(*prepared)
        return True

    async def _prepare_reload(self) -> tuple[DaemonConfig, ModelBundle] | None:
        """The new configuration and model, every new or changed source checked; None (logged) when anything is
        wrong, so that the daemon goes on with what it runs."""
        path = self.config.path
        log.info("SIGHUP: reloading %s", path)
        try:
            config = await asyncio.to_thread(load_config, path)
            bundle = await asyncio.to_thread(_load_bundle, config)
            for source in config.sources:
                old = self._streams.get(source.name)
                if old is None or old.config != source:
                    await asyncio.to_thread(check_source, source)
        except (ConfigError, ModelFileError, StartupError) as exc:
            log.error("reload refused, still running the previous configuration: %s", exc)
            return None
        except Exception as exc:
            log.exception("reload refused, still running the previous configuration: unexpected %r", exc)
            return None
        return config, bundle

    async def _apply_reload(self, config: DaemonConfig, bundle: ModelBundle) -> None:
        """Streams whose source or pipeline settings changed restart, the others take the new model where they
        are; what only a restart can change (broker, MQTT, health, web) is kept and warned about."""
        for key in ("instance", "mqtt", "embedded_broker", "health", "web"):
            if getattr(config, key) != getattr(self.config, key):
                log.warning("reload: changes to %r take effect only after a restart", key)
        logging.getLogger().setLevel(root_level(config.logging.level, self._command_line_level))
        wanted = {s.name: s for s in config.sources}
        changed = [
            n
            for n, s in self._streams.items()
            if wanted.get(n) != s.config or s.settings.needs_restart(config.pipeline)
        ]
        for name in changed:
            await self._stop_stream(name)
        for stream in self._streams.values():
            stream.settings = config.pipeline
            stream.pipeline.replace_model(bundle, config.pipeline)
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
        before = self.bundle.labels if self.bundle is not None else []
        self.bundle = bundle
        self.freed_memory.delay_s = _trim_delay(config)
        self.freed_memory.model_changed()
        if self._model_watch is not None:
            self._model_watch.path = config.model
            self._model_watch.remember()
        if self.publisher is not None:
            self.publisher.set_sources([s.name for s in config.sources])
            self.publisher.set_speakers(bundle.labels)
        self._live.set_sources(s.name for s in config.sources)
        self.reloads += 1
        speakers = speakers_change(before, bundle.labels)
        log.info("reloaded: model %s, %s, %d source(s)", self._model_name(), speakers, len(wanted))

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


async def run_daemon(
    config: DaemonConfig, early_hangup: threading.Event | None = None, command_line_level: int | None = None
) -> int:
    return await Daemon(config, early_hangup, command_line_level).run()
