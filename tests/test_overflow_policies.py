"""`[pipeline] overflow` when the model cannot keep up: "drop_oldest" loses the oldest queued audio even from a file
(which "auto" would hold back), "block" holds a paced source back and loses nothing (where "auto" would drop), and
"block" on a camera, which cannot be held back, still reports the audio the camera's own queue lost.

The model's slowness is a real runner whose batches wait until the test lets them go: the queue fills for as long
as the test needs, with no timing bound that a loaded machine could break."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from spkidd import SAMPLE_RATE
from spkidd.audio.base import CHUNK_SAMPLES, AudioChunk, AudioSource
from spkidd.audio.ffmpeg import FfmpegSource
from spkidd.audio.replay import ReplaySource, to_chunkable_pcm
from spkidd.events import Identification, SpeechActivity
from spkidd.modelfile import ModelBundle
from spkidd.pipeline import PipelineEvent, PipelineSettings, StreamPipeline
from spkidd.steprunner import Outcome, StepRunner
from spkidd.synthetic import synth_audio
from tests.support.polling import until
from tests.support.rtsp_server import RtspServer
from tests.support.streaming import random_bundle, silence, trim, write_wav

pytestmark = pytest.mark.timeout(120)

LABELS = ["alice", "bob", "carol"]
EVERYTHING = {"min_score": -1.0, "min_confidence": 0.0, "min_margin": 0.0}
CHUNK_S = CHUNK_SAMPLES / SAMPLE_RATE


class HeldRunner(StepRunner):
    """The real step runner, except that its batches wait (in the worker thread) until `release` is set: a model
    that has fallen behind by exactly as much as the test wants."""

    def __init__(self) -> None:
        super().__init__()
        self.held = threading.Event()
        self.release = threading.Event()

    def run_batch(self, jobs: list[Any]) -> list[Outcome]:
        if not self.release.is_set():
            self.held.set()
            self.release.wait(timeout=110)
        return super().run_batch(jobs)


class CountedSource:
    """Passes a real source through, counting the chunks the pipeline pulled: how far the source got."""

    def __init__(self, inner: AudioSource) -> None:
        self.inner = inner
        self.name = inner.name
        self.reconnects = 0
        """A replay never reconnects."""
        self.dropped_chunks = 0
        self.pulled = 0
        self.ended = False

    async def chunks(self) -> AsyncIterator[AudioChunk]:
        async with contextlib.aclosing(self.inner.chunks()) as chunks:  # type: ignore[type-var]
            async for chunk in chunks:
                self.pulled += 1
                yield chunk
        self.ended = True


@pytest.fixture(scope="module")
def bundle() -> ModelBundle:
    return random_bundle(LABELS, seed=5)


@pytest.fixture(scope="module")
def sentence() -> np.ndarray:
    return trim(synth_audio("bob", "Please turn on the kitchen lights and start the coffee machine."))


@pytest.fixture
def held() -> Iterator[HeldRunner]:
    runner = HeldRunner()
    try:
        yield runner
    finally:
        runner.release.set()
        runner.close()


def starts(events: list[PipelineEvent]) -> list[SpeechActivity]:
    return [e for e in events if isinstance(e, SpeechActivity) and e.speaking]


def finals(events: list[PipelineEvent]) -> list[Identification]:
    return [e for e in events if isinstance(e, Identification) and e.final]


async def test_drop_oldest_loses_the_oldest_audio_even_from_a_file(
    tmp_path: Path, bundle: ModelBundle, sentence: np.ndarray, held: HeldRunner, caplog: pytest.LogCaptureFixture
) -> None:
    """A file replayed as fast as possible ("auto" would wait for the model) under "drop_oldest": while the model is
    stuck the reader keeps reading, the queue keeps only the newest `queue_chunks`, every lost chunk is counted, the
    utterance cut by the gap gets its final, and the speech at the very end (the newest audio) is still heard."""
    caplog.set_level(logging.INFO, logger="spkidd.pipeline")
    short = trim(synth_audio("alice", "Good morning."))
    audio = np.concatenate([silence(0.3), sentence, silence(4.0), short, silence(0.6)])
    total = len(to_chunkable_pcm(audio)) // CHUNK_SAMPLES
    keep = 100  # 3 s: more than the short last utterance with its silence
    assert (len(short) + 0.6 * SAMPLE_RATE) / SAMPLE_RATE < keep * CHUNK_S - 0.5
    source = CountedSource(ReplaySource("file", write_wav(tmp_path / "f.wav", audio), realtime=False))
    # The model is stuck after 0.6 s of speech: enough for the utterance the gap cuts to earn its final.
    settings = PipelineSettings(decision=EVERYTHING, step_ms=600, queue_chunks=keep, overflow="drop_oldest")
    pipeline = StreamPipeline(source, bundle, settings, runner=held)
    events: list[PipelineEvent] = []
    task = asyncio.create_task(pipeline.run(events.append))
    try:
        await until(held.held.is_set, "the first model step")
        await until(lambda: source.ended, "the reader to read the whole file while the model is stuck")
        assert source.pulled == total, "the source was never held back"
        assert pipeline.stats.queue_peak == keep
        dropped_while_stuck = pipeline.stats.dropped_chunks
        assert dropped_while_stuck > 0
    finally:
        held.release.set()
    await asyncio.wait_for(task, 90)

    stats = pipeline.stats
    assert stats.dropped_chunks == dropped_while_stuck, "nothing more is dropped once the model catches up"
    processed = round(stats.audio_s / CHUNK_S)
    assert processed + stats.dropped_chunks == total, "every chunk was either processed or counted as dropped"
    assert stats.processed_s == pytest.approx(total * CHUNK_S), "the newest audio was kept"
    first, last = starts(events)
    assert last.time_s >= (total - keep) * CHUNK_S, "the second utterance was heard from the kept, newest audio"
    assert [f.utterance_id for f in finals(events)] == [first.utterance_id, last.utterance_id]
    assert "gap in the audio" in caplog.text and "dropped the oldest audio" in caplog.text


async def test_block_holds_a_paced_source_back_and_loses_nothing(
    tmp_path: Path, bundle: ModelBundle, sentence: np.ndarray, held: HeldRunner
) -> None:
    """A replay paced in real time ("auto" would drop its oldest audio) under "block": while the model is stuck the
    source is not read beyond the queue, however much time passes; afterwards every chunk is processed, nothing is
    counted as dropped, and the one utterance is not cut by a gap."""
    audio = np.concatenate([silence(0.3), sentence, silence(0.6)])
    total = len(to_chunkable_pcm(audio)) // CHUNK_SAMPLES
    bound = 10
    replay = ReplaySource("paced", write_wav(tmp_path / "p.wav", audio), realtime=True)
    source = CountedSource(replay)
    settings = PipelineSettings(decision=EVERYTHING, queue_chunks=bound, overflow="block")
    pipeline = StreamPipeline(source, bundle, settings, runner=held)
    events: list[PipelineEvent] = []
    task = asyncio.create_task(pipeline.run(events.append))
    try:
        await until(held.held.is_set, "the first model step")
        await until(lambda: pipeline.stats.queue_peak == bound, "the queue to fill")
        processed = round(pipeline.stats.audio_s / CHUNK_S)
        started = replay.started_at
        assert started is not None
        # Long enough for the paced source to have delivered 40 more chunks, had it not been held back.
        await until(lambda: time.monotonic() - started > (processed + bound + 40) * CHUNK_S, "real time to pass")
        # At most the queue and the one chunk the reader holds while it waits for room.
        assert source.pulled <= processed + bound + 1, "the source was held back while the queue was full"
        assert round(pipeline.stats.audio_s / CHUNK_S) == processed
        assert pipeline.stats.dropped_chunks == 0
    finally:
        held.release.set()
    await asyncio.wait_for(task, 90)

    stats = pipeline.stats
    assert stats.dropped_chunks == 0 and stats.queue_peak <= bound
    assert stats.audio_s == pytest.approx(total * CHUNK_S), "every chunk of the recording was processed"
    assert source.pulled == total
    assert len(starts(events)) == 1 and len(finals(events)) == 1, "no gap cut the utterance"


@pytest.fixture(scope="module")
def camera(tmp_path_factory: pytest.TempPathFactory, sentence: np.ndarray) -> Iterator[RtspServer]:
    wav = write_wav(tmp_path_factory.mktemp("camera") / "speech.wav", np.concatenate([sentence, silence(0.5)]))
    with RtspServer(wav, loop=True) as server:
        yield server


async def test_block_on_a_camera_reports_the_audio_the_camera_lost(
    camera: RtspServer, bundle: ModelBundle, held: HeldRunner
) -> None:
    """An RTSP camera under "block": a camera cannot be held back, so its own bounded queue drops the oldest audio
    while the model is stuck. Memory stays bounded, the gap is flagged, and the stream's `dropped_chunks` (what
    /healthz, /metrics and the MQTT stats report) counts that lost audio rather than claiming nothing was lost."""
    ffmpeg = FfmpegSource("cam", camera.url)
    bound = 10
    settings = PipelineSettings(decision=EVERYTHING, queue_chunks=bound, overflow="block")
    pipeline = StreamPipeline(ffmpeg, bundle, settings, runner=held)
    events: list[PipelineEvent] = []
    task = asyncio.create_task(pipeline.run(events.append))
    try:
        await until(held.held.is_set, "the first model step")
        await until(lambda: ffmpeg.dropped_chunks > 0, "the camera's queue to overflow")
        assert ffmpeg.queued_chunks <= ffmpeg.queue_chunks
        assert pipeline.stats.queue_peak <= bound
        held.release.set()
        lost = ffmpeg.dropped_chunks
        await until(lambda: pipeline.stats.dropped_chunks >= lost, "the lost audio to be reported", 30)
        await until(lambda: len(finals(events)) >= 2, "the stream to go on after the gap", 60)
    finally:
        held.release.set()
        await pipeline.stop()
        await asyncio.wait_for(task, 30)
    assert pipeline.stats.dropped_chunks == ffmpeg.dropped_chunks > 0
