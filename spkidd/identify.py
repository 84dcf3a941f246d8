"""`spkidd identify`: who speaks in each file, and for a long recording a timeline of who spoke when."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from spkidd.audio import decode
from spkidd.audio.decode import load_audio
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
    """The best speaker, unless its cosine score is under the model's threshold: then `unknown`."""
    best = int(scored.probs.argmax())
    score = float(scored.scores[best])
    threshold = bundle.decision.get("min_score", -1.0)
    return (bundle.labels[best] if score >= threshold else UNKNOWN), float(scored.probs[best]), score


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
    return result
