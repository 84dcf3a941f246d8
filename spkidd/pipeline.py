"""One stream: source -> speech gate -> streaming features -> model steps -> decider -> events.

Two tasks per stream: a reader that drains the source into a bounded queue, and a processor that runs the gate on
the event loop (microseconds per chunk) and hands feature extraction and model steps to a StepRunner's worker
thread in batches of `step_ms` of speech, so torch's per-call overhead is paid a few times a second rather than
per 10-ms frame. Streams that share one StepRunner are also batched across each other. A live source that outruns
the processor loses its oldest queued audio (counted and logged), so memory stays bounded and the stream catches
up; a file replayed as fast as possible is throttled instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from spkidd import SAMPLE_RATE
from spkidd.audio.base import AudioChunk, AudioSource
from spkidd.decide import Decider, DecisionSettings, top_candidates
from spkidd.events import UNKNOWN, Identification, SourceStatus, SpeechActivity
from spkidd.modelfile import ModelBundle
from spkidd.steprunner import StepRunner, Utterance
from spkidd.unknown_clips import UnknownClipSettings, save_unknown_clip
from spkidd.utterance_ids import UtteranceIds
from spkidd.vad import GateSettings, SpeechAudio, SpeechGate, UtteranceEnd, UtteranceStart

log = logging.getLogger(__name__)

PipelineEvent = Identification | SpeechActivity | SourceStatus
Emit = Callable[[PipelineEvent], None]
Progress = Callable[[str, dict[str, float]], None]
OverflowPolicy = Literal["auto", "drop_oldest", "block"]
_DROP_LOG_INTERVAL_S = 10.0


@dataclass(frozen=True)
class PipelineSettings:
    """`decision` holds overrides on top of the model file's calibrated thresholds. `step_ms`: speech collected
    before one batch of model steps (latency vs. CPU). `queue_chunks`: 30-ms chunks buffered before the oldest
    is dropped. `overflow`: "auto" drops for live sources and blocks for sources with `realtime = False` (replays)
    or `live = False` (ffmpeg reading a file). `unknown_clips`: where the audio of `unknown` utterances is kept
    (off unless a folder is set)."""

    gate: GateSettings = field(default_factory=GateSettings)
    decision: dict[str, float] = field(default_factory=dict)
    step_ms: int = 150
    queue_chunks: int = 200
    overflow: OverflowPolicy = "auto"
    unknown_clips: UnknownClipSettings = field(default_factory=UnknownClipSettings)

    def __post_init__(self) -> None:
        if not 10 <= self.step_ms <= 2000:
            raise ValueError(f"pipeline.step_ms must be 10-2000, not {self.step_ms}")
        if self.queue_chunks < 2:
            raise ValueError(f"pipeline.queue_chunks must be at least 2, not {self.queue_chunks}")
        DecisionSettings.from_model({}, self.decision)

    def needs_restart(self, new: PipelineSettings) -> bool:
        """Whether a stream must be restarted to use `new`: decision thresholds and unknown clips switch at the
        next utterance instead (replace_model)."""
        return replace(self, decision=new.decision, unknown_clips=new.unknown_clips) != new


@dataclass
class PipelineStats:
    """Counters of one stream. `lag_s`: how long the last processed chunk waited between arriving from the source
    and being fully processed. `processed_s`: audio time up to which processing is complete. `queue_peak`: most
    chunks ever waiting (bounded by PipelineSettings.queue_chunks)."""

    audio_s: float = 0.0
    processing_s: float = 0.0
    """Wall seconds the stream waited for its feature and model work (queueing in a shared runner included)."""
    lag_s: float = 0.0
    events: int = 0
    dropped_chunks: int = 0
    """Chunks lost because processing lagged: dropped from this queue, plus those the source's own bounded queue
    dropped (a live source under "block" cannot be held back, so it loses its oldest audio there)."""
    reconnects: int = 0
    speech_s: float = 0.0
    processed_s: float = 0.0
    queue_peak: int = 0


class StreamPipeline:
    """Runs one source through the gate, the model and the decider, emitting events through a callback."""

    def __init__(
        self,
        source: AudioSource,
        bundle: ModelBundle,
        settings: PipelineSettings,
        *,
        runner: StepRunner | None = None,
        on_progress: Progress | None = None,
        utterance_ids: UtteranceIds | None = None,
    ) -> None:
        self.source = source
        self.settings = settings
        self.stats = PipelineStats()
        self._own_runner = runner is None
        self._runner = runner if runner is not None else StepRunner()
        self._on_progress = on_progress
        self._pending: tuple[ModelBundle, PipelineSettings] | None = None
        self._use_bundle(bundle)
        self._gate = SpeechGate(settings.gate)
        self._queue: deque[tuple[AudioChunk, float] | None] = deque()
        self._changed: asyncio.Event | None = None
        self._reader: asyncio.Task[None] | None = None
        self._done: asyncio.Event | None = None
        self._stopping = False
        self._failure: str | None = None
        self._utterance: Utterance | None = None
        self._batch: list[np.ndarray] = []
        self._batch_samples = 0
        self._batch_end = 0.0
        self._heard: list[np.ndarray] = []
        """The utterance's audio so far, kept only when `unknown` clips are saved (at most max_utterance_s)."""
        self._ids = utterance_ids if utterance_ids is not None else UtteranceIds(source.name)
        self._utterance_start_s = 0.0
        self._last_drop_log = 0.0
        self._dropped_here = 0
        self._step_samples = int(settings.step_ms * SAMPLE_RATE / 1000)
        if settings.overflow == "auto":
            self._drop = bool(getattr(source, "realtime", getattr(source, "live", True)))
        else:
            self._drop = settings.overflow == "drop_oldest"

    def replace_model(self, bundle: ModelBundle, settings: PipelineSettings | None = None) -> None:
        """Takes effect at the next utterance, so an utterance is never scored by two models or two sets of
        thresholds. `settings` may change only what needs no restart (see PipelineSettings.needs_restart)."""
        self._pending = (bundle, settings if settings is not None else self.settings)

    async def stop(self) -> None:
        """Stops reading the source; what was queued is processed, open utterances get their final events, and
        run() returns."""
        self._stopping = True
        if self._reader is not None:
            self._reader.cancel()
        if self._done is not None:
            await self._done.wait()

    @property
    def end_reason(self) -> str:
        """Why the source's audio stopped coming: "stopped" (stop() was called: a shutdown, a reload), its failure,
        or "audio ended" (it ended by itself: a file played once to its end, a stream that ended)."""
        if self._stopping:
            return "stopped"
        return self._failure or "audio ended"

    async def run(self, emit: Emit) -> None:
        self._changed = asyncio.Event()
        self._done = asyncio.Event()
        self._reader = asyncio.create_task(self._read(emit), name=f"read-{self.source.name}")
        self._runner.attach()
        try:
            if not self._stopping:
                await self._process(emit)
        finally:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._runner.detach()
            if self._own_runner:
                await asyncio.to_thread(self._runner.close)
            self._done.set()

    def _use_bundle(self, bundle: ModelBundle) -> None:
        self._bundle = bundle
        self._extractor = bundle.extractor()
        decision = DecisionSettings.from_model(bundle.decision, self.settings.decision)
        self._decider = Decider(
            decision,
            list(bundle.labels),
            self.source.name,
            {"name": bundle.name, "version": bundle.version},
            bundle.model.config.scale,
        )

    async def _read(self, emit: Emit) -> None:
        """Source -> queue. Ends with a None sentinel whatever happens, so the processor always finishes."""
        assert self._changed is not None
        limit = self.settings.queue_chunks
        chunks = self.source.chunks()
        try:
            async for chunk in chunks:
                self._count_source()
                if self._drop:
                    if len(self._queue) >= limit:
                        self._drop_oldest()
                else:
                    while len(self._queue) >= limit:
                        self._changed.clear()
                        await self._changed.wait()
                self._queue.append((chunk, time.monotonic()))
                self.stats.queue_peak = max(self.stats.queue_peak, len(self._queue))
                self._changed.set()
        except asyncio.CancelledError:
            pass
        except Exception as exc:
            log.error("%s: source failed: %s", self.source.name, exc)
            self._failure = f"source failed: {exc}"
            self._emit(emit, SourceStatus(self.source.name, False, self._failure, failed=True))
        finally:
            close = getattr(chunks, "aclose", None)
            if close is not None:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await close()
            self._count_source()
            self._queue.append(None)
            self._changed.set()

    def _count_source(self) -> None:
        self.stats.reconnects = self.source.reconnects
        self.stats.dropped_chunks = self._dropped_here + self.source.dropped_chunks

    def _drop_oldest(self) -> None:
        self._queue.popleft()
        self._dropped_here += 1
        self._count_source()
        head = self._queue[0] if self._queue else None
        if head is not None:
            self._queue[0] = (replace(head[0], discontinuity=True), head[1])
        now = time.monotonic()
        if now - self._last_drop_log >= _DROP_LOG_INTERVAL_S:
            self._last_drop_log = now
            log.warning(
                "%s: processing is behind the source; dropped the oldest audio (%d chunks so far)",
                self.source.name,
                self.stats.dropped_chunks,
            )

    async def _next(self) -> tuple[AudioChunk, float] | None:
        assert self._changed is not None
        while not self._queue:
            self._changed.clear()
            await self._changed.wait()
        item = self._queue.popleft()
        if not self._drop:
            self._changed.set()
        return item

    async def _process(self, emit: Emit) -> None:
        try:
            await self._process_queue(emit)
        except BaseException:  # a failure, or a stop that timed out and cancelled the stream
            self._abandon_utterance(emit)
            raise
        emit(SourceStatus(self.source.name, False, self.end_reason))

    async def _process_queue(self, emit: Emit) -> None:
        while (item := await self._next()) is not None:
            chunk, arrived = item
            self.stats.audio_s += len(chunk.samples) / SAMPLE_RATE
            if chunk.discontinuity:
                if self._gate.is_open:
                    log.info("%s: gap in the audio at %.2f s; closing the utterance", self.source.name, chunk.start_s)
                await self._gate_events(self._gate.close(), emit)
            events = self._gate.push(chunk.samples, chunk.start_s)
            if events:
                await self._gate_events(events, emit)
            self.stats.processed_s = chunk.start_s + len(chunk.samples) / SAMPLE_RATE
            self.stats.lag_s = time.monotonic() - arrived
        await self._gate_events(self._gate.close(), emit)

    def _abandon_utterance(self, emit: Emit) -> None:
        """The pipeline failed or was cancelled: the open utterance gets the final its steps so far support and its
        `speaking` OFF, so the retained state never stays ON for a stream that is restarted or gone."""
        utterance, self._utterance = self._utterance, None
        if utterance is None:
            return
        end_s = max(self._batch_end, self._utterance_start_s)
        try:
            for ident in self._decider.finish(end_s, end_s - self._utterance_start_s, long_enough=True):
                self._emit(emit, ident)
        except Exception:
            log.exception("%s: no final for %s", self.source.name, utterance.utterance_id)
        self._emit(emit, SpeechActivity(self.source.name, utterance.utterance_id, False, round(end_s, 3)))

    async def _gate_events(self, events: list[UtteranceStart | SpeechAudio | UtteranceEnd], emit: Emit) -> None:
        for event in events:
            if isinstance(event, UtteranceStart):
                self._begin(event, emit)
            elif isinstance(event, SpeechAudio):
                self._add(event.audio, event.start_s)
                if self._batch_samples >= self._step_samples:
                    await self._run_batch(emit)
            else:
                await self._end(event, emit)

    def _begin(self, event: UtteranceStart, emit: Emit) -> None:
        if self._pending is not None:
            bundle, self.settings = self._pending
            self._pending = None
            self._use_bundle(bundle)
            log.info("%s: now using model %s %s", self.source.name, self._bundle.name, self._bundle.version)
        utterance_id = self._ids.next()
        self._utterance_start_s = event.start_s
        self._utterance = Utterance(utterance_id, self._bundle.model, self._extractor)
        self._decider.begin(utterance_id, event.start_s)
        self._emit(emit, SpeechActivity(self.source.name, utterance_id, True, round(event.start_s, 3)))
        self._batch, self._batch_samples = [], 0
        self._heard = []
        self._add(event.audio, event.start_s)

    def _add(self, audio: np.ndarray, start_s: float) -> None:
        if len(audio) == 0:
            return
        self._batch.append(audio)
        if self.settings.unknown_clips.enabled:
            self._heard.append(audio)
        self._batch_samples += len(audio)
        self._batch_end = start_s + len(audio) / SAMPLE_RATE

    async def _run_batch(self, emit: Emit) -> None:
        utterance = self._utterance
        if utterance is None or not self._batch:
            return
        samples = self._batch[0] if len(self._batch) == 1 else np.concatenate(self._batch)
        self._batch, self._batch_samples = [], 0
        self.stats.speech_s += len(samples) / SAMPLE_RATE
        began = time.perf_counter()
        steps = await self._runner.compute(utterance, samples)
        self.stats.processing_s += time.perf_counter() - began
        if steps is None:
            return
        for event in self._decider.update(steps, self._batch_end):
            self._emit(emit, event)
        if self._on_progress is not None:
            top_k = self._decider.settings.top_k
            self._on_progress(utterance.utterance_id, top_candidates(self._bundle.labels, steps.probs[-1], top_k))

    async def _end(self, event: UtteranceEnd, emit: Emit) -> None:
        await self._run_batch(emit)
        utterance = self._utterance
        if utterance is None:
            return
        long_enough = event.speech_s >= self.settings.gate.min_utterance_s
        for ident in self._decider.finish(event.end_s, event.speech_s, long_enough=long_enough):
            self._emit(emit, ident)
            if ident.speaker == UNKNOWN and self._heard:
                await self._keep_unknown(ident)
        self._heard = []
        self._emit(emit, SpeechActivity(self.source.name, utterance.utterance_id, False, round(event.end_s, 3)))
        self._utterance = None

    async def _keep_unknown(self, ident: Identification) -> None:
        heard, self._heard = np.concatenate(self._heard), []
        try:
            path = await asyncio.to_thread(save_unknown_clip, self.settings.unknown_clips, heard, ident)
        except OSError as exc:
            log.warning("%s: could not keep the unknown utterance %s: %s", self.source.name, ident.utterance_id, exc)
            return
        if path is not None:
            log.debug("%s: kept the unknown utterance as %s", self.source.name, path)

    def _emit(self, emit: Emit, event: PipelineEvent) -> None:
        if isinstance(event, Identification):
            self.stats.events += 1
        try:
            emit(event)
        except Exception:
            log.exception("%s: the event consumer failed on %s", self.source.name, type(event).__name__)
