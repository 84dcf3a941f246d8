"""The decider on hand-made per-step scores: thresholds, margin, stability and the event sequence."""

from __future__ import annotations

import numpy as np
import pytest

from spkidd.decide import Decider, DecisionSettings, StepScores
from spkidd.events import Identification

LABELS = ["alice", "bob", "carol"]
MODEL = {"name": "m", "version": "v1"}
HOP = 0.03


def steps(rows: list[tuple[list[float], list[float]]], first_step: int = 1) -> StepScores:
    """(scores, probs) per step; step n has seen n * HOP seconds of speech."""
    n = len(rows)
    return StepScores(
        scores=np.array([r[0] for r in rows], dtype=np.float32),
        probs=np.array([r[1] for r in rows], dtype=np.float32),
        speech_s=np.arange(first_step, first_step + n) * HOP,
        context_s=np.arange(first_step, first_step + n) * HOP,
    )


def speaker(index: int, score: float = 0.8, prob: float = 0.9) -> tuple[list[float], list[float]]:
    rest = (1.0 - prob) / 2
    probs = [rest] * 3
    probs[index] = prob
    scores = [0.1] * 3
    scores[index] = score
    return scores, probs


def run(settings: DecisionSettings, rows: list[tuple[list[float], list[float]]]) -> list[Identification]:
    decider = Decider(settings, LABELS, "kitchen", MODEL)
    decider.begin("kitchen-000007", 1.5)
    events = []
    for i, row in enumerate(rows):
        events += decider.update(steps([row], first_step=i + 1), end_s=1.5 + (i + 1) * HOP)
    return events + decider.finish(1.5 + len(rows) * HOP, len(rows) * HOP, long_enough=True)


LOOSE = DecisionSettings(min_score=0.5, min_confidence=0.6, min_margin=0.0, stable_steps=3, min_speech_s=0.0)


def test_identified_then_final_carry_the_utterance_fields() -> None:
    events = run(LOOSE, [speaker(0)] * 6)
    assert [(e.event_type, e.speaker, e.final) for e in events] == [
        ("identified", "alice", False),
        ("final", "alice", True),
    ]
    first = events[0]
    assert first.end == pytest.approx(1.5 + 3 * HOP)
    assert first.source == "kitchen" and first.utterance_id == "kitchen-000007"
    assert first.start == 1.5 and first.model == MODEL
    assert first.confidence == pytest.approx(0.9)
    assert list(first.top_k) == ["alice", "bob", "carol"]
    assert events[1].speech_s == pytest.approx(6 * HOP)


def test_the_absolute_threshold_always_holds() -> None:
    confident_but_far = [speaker(1, score=0.3, prob=0.99)] * 20
    events = run(LOOSE, confident_but_far)
    assert [(e.event_type, e.speaker, e.final) for e in events] == [("unknown", "unknown", True)]
    assert events[0].top_k["bob"] == pytest.approx(0.99)


def test_margin_can_only_make_decisions_stricter() -> None:
    rng = np.random.default_rng(1)
    for _ in range(30):
        rows = []
        for _ in range(15):
            probs = rng.dirichlet([0.5, 0.5, 0.5]).tolist()
            rows.append(([0.4 + 0.5 * p for p in probs], probs))
        plain = run(LOOSE, rows)
        strict = run(DecisionSettings(**{**LOOSE.__dict__, "min_margin": 0.3}), rows)
        first_plain = min((e.end for e in plain if not e.final), default=np.inf)
        first_strict = min((e.end for e in strict if not e.final), default=np.inf)
        assert first_strict >= first_plain
        if strict[-1].speaker != "unknown":
            assert strict[-1].speaker == plain[-1].speaker


def test_margin_turns_a_close_call_into_unknown() -> None:
    close_call = [([0.8, 0.75, 0.1], [0.55, 0.44, 0.01])] * 10
    loose = DecisionSettings(min_score=0.5, min_confidence=0.5, min_margin=0.0, stable_steps=2, min_speech_s=0)
    assert [e.event_type for e in run(loose, close_call)] == ["identified", "final"]
    strict = DecisionSettings(min_score=0.5, min_confidence=0.5, min_margin=0.2, stable_steps=2, min_speech_s=0)
    assert [e.event_type for e in run(strict, close_call)] == ["unknown"]


def test_one_lucky_step_names_nobody() -> None:
    rows = [speaker(0, prob=0.4), speaker(1), speaker(0, prob=0.4), speaker(1), speaker(1), speaker(2)]
    events = run(LOOSE, rows)
    assert [e.event_type for e in events] == ["final"]
    assert events[0].speaker == "carol"


def test_changed_mid_utterance_then_final() -> None:
    rows = [speaker(0)] * 4 + [speaker(2, prob=0.95)] + [speaker(1)] * 5
    events = run(LOOSE, rows)
    assert [(e.event_type, e.speaker) for e in events] == [
        ("identified", "alice"),
        ("changed", "bob"),
        ("final", "bob"),
    ]
    assert events[1].end == pytest.approx(1.5 + 8 * HOP)


def test_no_partial_before_min_speech() -> None:
    settings = DecisionSettings(min_score=0.5, min_confidence=0.6, min_margin=0.0, stable_steps=1, min_speech_s=0.2)
    events = run(settings, [speaker(0)] * 10)
    assert events[0].event_type == "identified"
    assert events[0].speech_s >= 0.2


def test_short_or_empty_utterances_say_nothing() -> None:
    decider = Decider(LOOSE, LABELS, "hall", MODEL)
    decider.begin("hall-000001", 0.0)
    decider.update(steps([speaker(0)] * 5), end_s=0.2)
    assert decider.finish(0.2, 0.2, long_enough=False) == []
    decider.begin("hall-000002", 1.0)
    assert decider.finish(1.1, 0.1, long_enough=True) == []


def test_settings_from_model_with_overrides() -> None:
    settings = DecisionSettings.from_model({"min_score": 0.42, "top_k": 5.0}, {"stable_steps": 4})
    assert settings.min_score == pytest.approx(0.42)
    assert settings.top_k == 5 and isinstance(settings.top_k, int)
    assert settings.stable_steps == 4
    assert DecisionSettings.from_model({"min_score": 0.42}, {"min_score": 0.6}).min_score == pytest.approx(0.6)
    with pytest.raises(ValueError, match="min_scor"):
        DecisionSettings.from_model({"min_scor": 0.4})
    with pytest.raises(ValueError, match="min_confidence"):
        DecisionSettings(min_confidence=1.5)


def test_a_final_obeys_min_confidence_like_a_partial() -> None:
    strict = DecisionSettings(min_score=0.5, min_confidence=0.9, min_margin=0.0, stable_steps=3, min_speech_s=0.0)
    events = run(strict, [speaker(0, prob=0.7)] * 6)
    assert [(e.event_type, e.speaker) for e in events] == [("unknown", "unknown")]


def test_a_tie_names_nobody_even_without_a_margin() -> None:
    tie = ([0.8, 0.8, 0.1], [0.45, 0.45, 0.1])
    events = run(LOOSE, [tie] * 6)
    assert [(e.event_type, e.speaker) for e in events] == [("unknown", "unknown")]


@pytest.mark.parametrize("key", ["min_score", "min_confidence", "min_margin", "min_speech_s"])
def test_not_a_number_is_refused(key: str) -> None:
    with pytest.raises(ValueError, match=key):
        DecisionSettings.from_model({key: float("nan")})


def test_unknown_never_carries_full_confidence() -> None:
    far_below = ([-0.9, -0.95, -0.99], [0.999999, 0.0000005, 0.0000005])
    (final,) = run(LOOSE, [far_below] * 4)
    assert final.event_type == "unknown" and 0.5 < final.confidence < 1.0


def context_steps(rows: list[tuple[list[float], list[float]]], context: list[float]) -> StepScores:
    """Steps as `steps` makes them, with the given context (seconds each step's embedding rests on)."""
    made = steps(rows)
    return StepScores(made.scores, made.probs, made.speech_s, np.asarray(context))


def final_of(rows: list[tuple[list[float], list[float]]], context: list[float]) -> Identification:
    decider = Decider(LOOSE, LABELS, "kitchen", MODEL)
    decider.begin("kitchen-000008", 0.0)
    decider.update(context_steps(rows, context), end_s=len(rows) * HOP)
    (final,) = decider.finish(len(rows) * HOP, len(rows) * HOP, long_enough=True)
    return final


@pytest.mark.parametrize("before", [1, 0])
def test_a_final_falls_back_to_the_step_of_its_last_second_with_the_most_context(before: int) -> None:
    """The encoder's window restarted two steps before the end: the last step rests on little audio and names
    nobody, the step before the restart passes (for the last step's top candidate or another)."""
    rows = [speaker(before, score=0.6, prob=0.8)] * 6 + [speaker(1, score=0.4, prob=0.7)] * 2
    final = final_of(rows, [0.03, 0.06, 0.09, 0.12, 0.15, 0.18, 0.03, 0.06])
    assert (final.event_type, final.speaker, final.confidence) == ("final", LABELS[before], pytest.approx(0.8))


def test_no_fallback_to_an_older_step_or_to_one_with_less_context() -> None:
    same = [speaker(1, score=0.6, prob=0.8)] * 6 + [speaker(1, score=0.4, prob=0.7)] * 2
    assert final_of(same, [HOP * (i + 1) for i in range(8)]).event_type == "unknown"
    long_ago = [speaker(1, score=0.6, prob=0.8)] * 6 + [speaker(1, score=0.4, prob=0.7)] * 40
    context = [HOP * (i + 1) for i in range(6)] + [HOP * (i % 5 + 1) for i in range(40)]
    assert final_of(long_ago, context).event_type == "unknown"
