"""`spkidd identify`: who speaks in each file, and for a long recording a timeline of who spoke when."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from spkidd.audio import decode
from spkidd.audio.decode import load_audio
from spkidd.decide import DecisionSettings, final_answer
from spkidd.events import UNKNOWN
from spkidd.inference import Scored, Segment, score_long
from spkidd.modelfile import ModelBundle


@dataclass
class FileResult:
    path: str
    speaker: str
    confidence: float
    score: float
    top_k: dict[str, float]
    duration_s: float
    timeline: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""
    warning: str = ""


def _name(bundle: ModelBundle, scored: Scored) -> tuple[str, float, float]:
    """What the daemon's final event would say: the best speaker if it passes the model's thresholds, else
    `unknown`; with the confidence of that answer and the best cosine score."""
    settings = DecisionSettings.from_model(bundle.decision)
    last = (scored.scores, scored.probs)
    index, named, confidence, (scores, _) = final_answer(settings, bundle.model.config.scale, last, scored.fallback)
    return (bundle.labels[index] if named else UNKNOWN), confidence, float(scores[index])


def _majority(turns: list[dict[str, Any]]) -> str:
    """The speaker of most of the timeline's time."""
    time: dict[str, float] = {}
    for turn in turns:
        time[turn["speaker"]] = time.get(turn["speaker"], 0.0) + turn["end"] - turn["start"]
    return max(time, key=lambda speaker: time[speaker])


def timeline(bundle: ModelBundle, segments: list[Segment]) -> list[dict[str, Any]]:
    """Chunks merged into turns: consecutive chunks naming the same speaker become one entry."""
    turns: list[dict[str, Any]] = []
    for segment in segments:
        speaker, confidence, _ = _name(bundle, segment.scored)
        if turns and turns[-1]["speaker"] == speaker and abs(turns[-1]["end"] - segment.start) < 1e-6:
            turns[-1]["end"] = segment.end
            turns[-1]["confidence"] = max(turns[-1]["confidence"], round(confidence, 4))
        else:
            turns.append(
                {"start": segment.start, "end": segment.end, "speaker": speaker, "confidence": round(confidence, 4)}
            )
    return turns


def identify_file(bundle: ModelBundle, path: Path, chunk_s: float, k: int = 5) -> FileResult:
    """A damaged file is identified from the audio before the damage, with a warning that says so."""
    try:
        return identify_audio(bundle, path, load_audio(path), chunk_s, k)
    except decode.DamagedAudioError as exc:
        return replace(identify_audio(bundle, path, exc.audio, chunk_s, k), warning=str(exc))


def identify_audio(bundle: ModelBundle, path: Path, audio: np.ndarray, chunk_s: float, k: int = 5) -> FileResult:
    duration = len(audio) / bundle.features.sample_rate
    scored, segments = score_long(bundle, audio, chunk_s)
    if scored is None:
        return FileResult(str(path), UNKNOWN, 0.0, 0.0, {}, duration, error="too short to identify")
    speaker, confidence, score = _name(bundle, scored)
    top = {label: round(p, 4) for label, p in scored.top_k(bundle.labels, k)}
    result = FileResult(str(path), speaker, round(confidence, 4), round(score, 4), top, round(duration, 3))
    if len(segments) > 1:
        result.timeline = timeline(bundle, segments)
        if speaker not in {turn["speaker"] for turn in result.timeline}:
            result.speaker = _majority(result.timeline)
    return result
