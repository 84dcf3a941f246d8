"""identify's file-level answer when it comes from the timeline."""

from __future__ import annotations

import numpy as np

from spkidd.identify import FileResult, named_by_timeline, speech_per_speaker


def _turn(speaker: str, start: float, end: float, confidence: float) -> dict[str, object]:
    return {"speaker": speaker, "start": start, "end": end, "confidence": confidence}


def test_the_voice_that_spoke_most_names_the_file_with_its_own_confidence_and_score() -> None:
    timeline = [
        _turn("alice", 0.0, 4.0, 0.9),
        _turn("bob", 4.5, 6.0, 0.8),
        _turn("alice", 6.5, 7.5, 0.4),
        _turn("unknown", 8.0, 8.5, 0.3),
    ]
    averaged = FileResult("talk.wav", "unknown", 0.35, 0.21, {"bob": 0.5, "alice": 0.4}, 9.0, timeline)
    averaged.speakers = speech_per_speaker(timeline)

    named = named_by_timeline(averaged, ["alice", "bob"], np.array([0.42, 0.21]))

    assert named.speaker == "alice"
    assert named.confidence == round((4.0 * 0.9 + 1.0 * 0.4) / 5.0, 4)
    assert named.score == 0.42
    assert named.top_k == {"alice": round(5.0 / 7.0, 4), "bob": round(1.5 / 7.0, 4), "unknown": round(0.5 / 7.0, 4)}
    assert (named.timeline, named.duration_s) == (timeline, 9.0)


def test_a_confidence_short_of_certainty_never_reads_100_percent() -> None:
    from spkidd.events import as_percent

    assert [as_percent(c) for c in (0.999, 1.0, 0.5, 0.0)] == ["99%", "100%", "50%", "0%"]
