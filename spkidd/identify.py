"""`spkidd identify`: who speaks in each file, and for a long recording a timeline of who spoke when."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from spkidd.audio.decode import AudioStream, whole_or_blocks
from spkidd.audio.replay import ReplaySource
from spkidd.decide import DecisionSettings, final_answer
from spkidd.enrollment import MIN_PIECE_S, NO_SPEECH, speech_pieces
from spkidd.events import UNKNOWN, Identification, SpeechActivity
from spkidd.inference import Progress, Scored, is_chunked, score_chunks, score_long
from spkidd.modelfile import ModelBundle
from spkidd.pipeline import PipelineEvent, PipelineSettings, StreamPipeline
from spkidd.turns import who_spoke_when


@dataclass
class FileResult:
    path: str
    speaker: str
    confidence: float
    score: float
    top_k: dict[str, float]
    """The model's probabilities for the whole file; for a file named after its timeline's main voice (see
    named_by_timeline), each voice's share of the speech."""
    duration_s: float
    timeline: list[dict[str, Any]] = field(default_factory=list)
    speakers: dict[str, float] = field(default_factory=dict)
    """Seconds of speech the timeline gives each name, most first: who took part in a conversation."""
    error: str = ""
    by_timeline: bool = False
    """Named after the timeline's main voice (a conversation): `top_k` holds shares of speech, not probabilities."""
    warning: str = ""


def _name(bundle: ModelBundle, scored: Scored) -> tuple[str, float, float]:
    """What the daemon's final event would say: the best speaker if it passes the model's thresholds, else
    `unknown`; with the confidence of that answer and the best cosine score."""
    settings = DecisionSettings.from_model(bundle.decision)
    last = (scored.scores, scored.probs)
    index, named, confidence, (scores, _) = final_answer(settings, bundle.model.config.scale, last, scored.fallback)
    return (bundle.labels[index] if named else UNKNOWN), confidence, float(scores[index])


def speech_per_speaker(turns: list[dict[str, Any]]) -> dict[str, float]:
    """Seconds of the timeline each name holds, most first."""
    time: dict[str, float] = {}
    for turn in turns:
        time[turn["speaker"]] = time.get(turn["speaker"], 0.0) + turn["end"] - turn["start"]
    return {speaker: round(seconds, 2) for speaker, seconds in sorted(time.items(), key=lambda item: -item[1])}


Report = Progress
"""Told (audio seconds done, seconds in all if known) while a pass reads a long recording: the timeline's is most of
the time (21 of 27 s for 20 minutes of audio), the file's as a whole the rest (17 s of an hour's 82)."""
Phase = Callable[[str], None]
"""Told what a long recording's next pass does (TIMELINE_PASS, then WHOLE_PASS), so that a progress bar starts
afresh for each."""
TIMELINE_PASS = "who spoke when"
WHOLE_PASS = "the file as a whole"


@dataclass(frozen=True)
class Heard:
    """A recording as the daemon's own pipeline heard it: its turns, and the length of each utterance its speech gate
    passed on (so that the gate runs once for a long recording, for the timeline and for "no speech found" alike)."""

    turns: list[dict[str, Any]]
    utterances_s: list[float]

    @property
    def has_speech(self) -> bool:
        """What speech_pieces finds for a short file: an utterance of MIN_PIECE_S or more."""
        return any(seconds >= MIN_PIECE_S for seconds in self.utterances_s)


def hear(
    bundle: ModelBundle, blocks: Iterable[np.ndarray], total_s: float | None, report: Report | None = None
) -> Heard:
    """Who spoke when: the recording (float blocks of any length, as decoded) through the daemon's own pipeline
    (gate, rolling encoder windows, decider), its utterances cut into turns looking back (spkidd.turns), pauses left
    out."""
    events: list[Identification] = []
    boundaries: list[SpeechActivity] = []

    def collect(event: PipelineEvent) -> None:
        if isinstance(event, Identification):
            events.append(event)
        elif isinstance(event, SpeechActivity):
            boundaries.append(event)

    pipeline = StreamPipeline(ReplaySource.from_blocks("identify", blocks), bundle, PipelineSettings())
    asyncio.run(_run_reporting(pipeline, collect, total_s, report))
    turns = [
        turn.to_dict()
        | {"start": round(turn.start, 3), "end": round(turn.end, 3), "confidence": round(turn.confidence, 4)}
        for turn in who_spoke_when(events)
    ]
    return Heard(turns, _utterance_lengths(boundaries))


def _utterance_lengths(boundaries: list[SpeechActivity]) -> list[float]:
    """Seconds from each utterance's start to its end (the gate's SpeechActivity pairs)."""
    starts = {event.utterance_id: event.time_s for event in boundaries if event.speaking}
    return [event.time_s - starts[event.utterance_id] for event in boundaries if not event.speaking]


async def _run_reporting(
    pipeline: StreamPipeline, emit: Callable[[PipelineEvent], None], total_s: float | None, report: Report | None
) -> None:
    run = asyncio.ensure_future(pipeline.run(emit))
    while report is not None and not run.done():
        report(pipeline.stats.processed_s, total_s)
        await asyncio.wait({run}, timeout=0.2)
    await run


IN_MEMORY_S = 60.0
"""A recording up to this long is decoded whole (a minute is 3.8 MB); a longer one a block at a time for each of its
passes (decoded twice, never held whole: an hour of FLAC peaked at 630 MB held whole)."""


def identify_file(
    bundle: ModelBundle,
    path: Path,
    chunk_s: float,
    k: int = 5,
    report: Report | None = None,
    phase: Phase | None = None,
    scoring: Report | None = None,
) -> FileResult:
    """identify_audio of the file's audio, the same answer, with the memory of a minute of it however long it is. A
    damaged file is identified from the audio before the damage, with a warning that says so. `report` is told how
    far the timeline's pass is, `scoring` how far the file as a whole is scored."""
    rate = bundle.features.sample_rate
    with AudioStream(path) as stream:
        audio = whole_or_blocks(iter(stream), int(IN_MEMORY_S * rate))
        if isinstance(audio, np.ndarray):
            damage = stream.finish()
            return _warned(identify_audio(bundle, path, audio, chunk_s, k, report, phase, scoring), damage)
        _tell(phase, TIMELINE_PASS)
        heard = hear(bundle, audio, stream.expected_s, report)
        damage = stream.finish()
        duration = stream.samples / rate

    def score_again() -> tuple[Scored | None, int]:
        with AudioStream(path) as again:
            return score_chunks(bundle, again, chunk_s, report=scoring, total_s=duration)

    return _warned(_named(bundle, path, heard, duration, score_again, k, phase), damage)


def _warned(result: FileResult, damage: str) -> FileResult:
    return replace(result, warning=damage) if damage else result


def identify_audio(
    bundle: ModelBundle,
    path: Path,
    audio: np.ndarray,
    chunk_s: float,
    k: int = 5,
    report: Report | None = None,
    phase: Phase | None = None,
    scoring: Report | None = None,
) -> FileResult:
    rate = bundle.features.sample_rate
    duration = len(audio) / rate
    if not is_chunked(audio, chunk_s, rate):
        if not speech_pieces(audio):
            return _no_speech(path, duration)
        return _answer(bundle, path, duration, *score_long(bundle, audio, chunk_s), None, k)
    _tell(phase, TIMELINE_PASS)
    heard = hear(bundle, [audio], duration, report)
    return _named(bundle, path, heard, duration, lambda: score_long(bundle, audio, chunk_s, report=scoring), k, phase)


def _no_speech(path: Path, duration: float) -> FileResult:
    return FileResult(str(path), "", 0.0, 0.0, {}, round(duration, 3), error=NO_SPEECH)


def _named(
    bundle: ModelBundle,
    path: Path,
    heard: Heard,
    duration: float,
    score: Callable[[], tuple[Scored | None, int]],
    k: int,
    phase: Phase | None,
) -> FileResult:
    """A long recording's answer once its timeline is heard: none if the gate passed no speech, else the file as a
    whole `score`d (its pass said to `phase`)."""
    if not heard.has_speech:
        return _no_speech(path, duration)
    _tell(phase, WHOLE_PASS)
    return _answer(bundle, path, duration, *score(), heard, k)


def _answer(
    bundle: ModelBundle,
    path: Path,
    duration: float,
    scored: Scored | None,
    chunks: int,
    heard: Heard | None,
    k: int,
) -> FileResult:
    """The file named from its scores, or from its timeline if it is a conversation (see is_conversation)."""
    if scored is None:
        return FileResult(str(path), UNKNOWN, 0.0, 0.0, {}, duration, error="too short to identify")
    speaker, confidence, score = _name(bundle, scored)
    top = {label: round(p, 4) for label, p in scored.top_k(bundle.labels, k).items()}
    result = FileResult(str(path), speaker, round(confidence, 4), round(score, 4), top, round(duration, 3))
    if heard is not None and chunks > 1:
        result.timeline = heard.turns
        result.speakers = speech_per_speaker(result.timeline)
        if is_conversation(result):
            return named_by_timeline(result, bundle.labels, scored.scores)
    return result


def _tell(phase: Phase | None, what: str) -> None:
    if phase is not None:
        phase(what)


def is_conversation(result: FileResult) -> bool:
    """Whether the timeline, not the chunk-averaged answer, names the file: it heard two or more known voices (the
    average of two voices names neither, or the one most chunks favour), or the average names a voice the timeline
    never gave a turn. One known voice with some `unknown` turns keeps the average: over a long recording of one
    speaker it rests on more speech than any one utterance."""
    return _names_a_conversation(result.speaker, result.speakers)


def _names_a_conversation(speaker: str, speakers: dict[str, float]) -> bool:
    named = [voice for voice in speakers if voice != UNKNOWN]
    return len(named) > 1 or (bool(speakers) and speaker not in speakers)


def heard_answer(bundle: ModelBundle, scored: Scored, chunks: int, heard: Heard) -> str:
    """The name identify gives a recording it drew a timeline for (`unknown` where it found no speech): what
    `spkidd evaluate` counts for a long row, so that it says what a user of identify gets."""
    if not heard.has_speech:
        return UNKNOWN
    speaker = _name(bundle, scored)[0]
    speakers = speech_per_speaker(heard.turns)
    if chunks > 1 and _names_a_conversation(speaker, speakers):
        return next(iter(speakers))
    return speaker


def named_by_timeline(result: FileResult, labels: list[str], scores: np.ndarray) -> FileResult:
    """The file named after the voice that spoke most (see is_conversation): with the speech-weighted
    confidence of that voice's turns, its own cosine, and as candidates each voice's share of the speech, so that
    nothing beside the answer speaks for another voice."""
    name = next(iter(result.speakers))
    turns = [(turn["end"] - turn["start"], turn["confidence"]) for turn in result.timeline if turn["speaker"] == name]
    seconds = sum(length for length, _ in turns)
    confidence = sum(length * value for length, value in turns) / seconds if seconds > 0 else 0.0
    score = float(scores[labels.index(name)]) if name in labels else result.score
    spoken = sum(result.speakers.values())
    shares = {voice: round(seconds / spoken, 4) for voice, seconds in result.speakers.items()} if spoken > 0 else {}
    return replace(
        result, speaker=name, confidence=round(confidence, 4), score=round(score, 4), top_k=shares, by_timeline=True
    )
