import numpy as np
import pytest

from spkidd.decide import DecisionSettings, StepScores
from spkidd.evaluation import equal_error_rate, rates
from train.calibrate import (
    calibrate_min_speech,
    calibrate_threshold,
    rate_upper_bound,
    small_household_threshold,
    strangers_note,
    wrong_first_rate,
)
from train.fit import STRANGERS


def test_threshold_meets_the_target_false_accept_rate() -> None:
    rng = np.random.default_rng(0)
    genuine = rng.normal(0.7, 0.1, 2000)
    impostor = rng.normal(0.3, 0.1, 2000)
    threshold, far, frr = calibrate_threshold(genuine, impostor, 0.01)
    assert far <= 0.01 and (far, frr) == rates(genuine, impostor, threshold)
    assert 0.45 < threshold < 0.6


def test_threshold_sits_in_the_gap_of_separable_small_sets() -> None:
    threshold, far, frr = calibrate_threshold(np.array([0.8, 0.9, 0.95]), np.array([0.5, 0.6, 0.7]), 0.01)
    assert threshold == pytest.approx(0.75) and far == 0.0 and frr == 0.0


def test_too_few_impostor_scores_to_show_the_target_keep_the_threshold_at_the_default_or_above() -> None:
    """6 impostor scores cannot show 5% (none accepted of 6 is still 10% at 80% confidence); 40 can."""
    genuine = np.array([0.3, 0.45, 0.6, 0.7, 0.8, 0.9])
    few = np.array([0.0, 0.05, 0.1, 0.15, 0.2, 0.25])
    assert calibrate_threshold(genuine, few, 0.05)[0] == 0.5
    many = np.linspace(0.0, 0.25, 40)
    assert calibrate_threshold(genuine, many, 0.05)[0] == pytest.approx((many[-3] + 0.3) / 2), "2 of 40 may pass"


def test_no_impostors_gives_the_default_and_no_rates() -> None:
    """Rates that were not measured are None: a NaN would be written into the model file, which is not JSON."""
    assert calibrate_threshold(np.array([0.9]), np.zeros(0), 0.01) == (0.5, None, None)
    assert calibrate_threshold(np.zeros(0), np.array([0.2]), 0.01) == (0.5, None, None)


def test_the_threshold_is_always_a_cosine() -> None:
    """An impostor at a cosine of 1.0 (or rounded past it) leaves 1.0, which the decider accepts, not 1.000001."""
    for top in (1.0, 1.0000001):
        threshold, far, _ = calibrate_threshold(np.array([0.95, 0.8]), np.array([top, 0.3]), 0.01)
        assert threshold == 1.0 and far == 0.5, "the impostor at 1.0 is let through, and the rate says so"


def test_equal_error_rate_of_overlapping_scores() -> None:
    genuine = np.array([0.9, 0.8, 0.7, 0.4])
    impostor = np.array([0.1, 0.2, 0.3, 0.75])
    eer, threshold = equal_error_rate(genuine, impostor)
    assert eer == 0.25 and 0.4 < threshold <= 0.75


def _utterance(wrong_until_s: float, truth: int, wrong: int, n_speakers: int = 3, step_s: float = 0.05) -> StepScores:
    """Steps that confidently name `wrong` until `wrong_until_s` of speech, then `truth`."""
    speech_s = np.arange(1, 41) * step_s
    probs = np.full((len(speech_s), n_speakers), 0.05)
    named = np.where(speech_s <= wrong_until_s, wrong, truth)
    probs[np.arange(len(speech_s)), named] = 0.9
    return StepScores(scores=probs.copy(), probs=probs, speech_s=speech_s, context_s=speech_s)


def test_the_wait_before_a_first_name_is_the_least_that_keeps_wrong_first_names_rare() -> None:
    labels = ["alice", "bob", "carol"]
    settings = DecisionSettings(min_score=0.5, stable_steps=3)
    # 10 utterances whose first 0.5 s look like somebody else, 90 that are right from the start
    utterances = [_utterance(0.5, 0, 1) for _ in range(10)] + [_utterance(0.0, i % 3, 0) for i in range(90)]
    truth = [0] * 10 + [i % 3 for i in range(90)]
    assert wrong_first_rate(settings, labels, 30.0, utterances, truth) == pytest.approx(0.10)
    wait, rate = calibrate_min_speech(settings, labels, 30.0, utterances, truth, target=0.03)
    assert wait == 0.5 and rate == 0.0, "at 0.4 s the wrong voice still holds for three steps; from 0.5 s it does not"
    assert calibrate_min_speech(settings, labels, 30.0, utterances, truth, target=0.20) == (0.3, pytest.approx(0.10))
    at_target = calibrate_min_speech(settings, labels, 30.0, utterances, truth, target=0.10)
    assert at_target == (0.5, 0.0), "10 of 100 does not show that the rate is at most 10%"


def test_a_rate_measured_on_few_utterances_must_leave_room_for_chance() -> None:
    assert rate_upper_bound(0 / 100, 100) < 0.03 < rate_upper_bound(0 / 20, 20)
    assert rate_upper_bound(4 / 222, 222) < 0.03 < rate_upper_bound(6 / 222, 222)
    assert rate_upper_bound(50 / 100, 100) == pytest.approx(0.5 + 0.042, abs=0.002)


def test_when_no_wait_is_enough_the_closest_is_taken() -> None:
    labels = ["alice", "bob"]
    settings = DecisionSettings(min_score=0.5, stable_steps=1)
    utterances = [_utterance(5.0, 0, 1, n_speakers=2)]
    assert calibrate_min_speech(settings, labels, 30.0, utterances, [0]) == (0.3, 1.0)


def test_a_threshold_calibrated_below_the_default_warns_about_strangers() -> None:
    """Six voices far apart calibrated to 0.29 named a TV's strangers as one of them in 43% of its utterances; the
    warning says what stood in for strangers instead."""
    note = strangers_note(0.29, "held-out speech of the other speakers")
    assert note is not None
    assert "(0.290) is below the default (0.500)" in note
    assert "calibrated on held-out speech of the other speakers, not on strangers" in note
    assert "set [decision] min_score = 0.5" in note
    assert "calibrated on every voice at 0.85x or 1.18x speed," in (strangers_note(0.3, STRANGERS) or "")
    assert strangers_note(0.5, STRANGERS) is None and strangers_note(0.51, "held-out speech") is None


GENUINE = np.linspace(0.3, 0.9, 100)
OTHERS = np.linspace(-0.2, 0.1, 100)
"""A household whose voices are far apart: alone, the other voices put the threshold near 0.1."""


def test_a_small_household_takes_the_speed_changed_voices_when_they_ask_for_more() -> None:
    """Four FSDD voices calibrated to 0.14-0.33 on each other named 27% of two other voices' clips; the stricter of
    both, 14%."""
    changed = np.linspace(0.0, 0.3, 100)
    threshold, far, frr, by_changed = small_household_threshold(GENUINE, OTHERS, changed, 0.05)
    boundary = float(changed[-6])
    assert by_changed and threshold == pytest.approx((boundary + GENUINE[boundary < GENUINE].min()) / 2)
    assert (far, frr) == rates(GENUINE, changed, threshold), "the rates on the impostors that set it"
    assert threshold > calibrate_threshold(GENUINE, OTHERS, 0.05)[0]


def test_speed_changed_voices_raise_the_threshold_to_the_default_at_most() -> None:
    """Synthetic voices that differ in pitch become each other at another speed (a 0.84 threshold)."""
    alike = np.linspace(0.5, 0.85, 100)
    threshold, far, frr, by_changed = small_household_threshold(GENUINE, OTHERS, alike, 0.05)
    assert by_changed and threshold == 0.5 and (far, frr) == rates(GENUINE, alike, 0.5)


def test_the_other_voices_keep_the_threshold_when_they_ask_for_more() -> None:
    changed = np.linspace(-0.5, -0.2, 100)
    calibrated = calibrate_threshold(GENUINE, OTHERS, 0.05)
    assert small_household_threshold(GENUINE, OTHERS, changed, 0.05) == (*calibrated, False)
    assert small_household_threshold(GENUINE, OTHERS, np.zeros(0), 0.05) == (*calibrated, False)
    high = np.linspace(0.4, 0.7, 100)
    above = calibrate_threshold(GENUINE, high, 0.05)
    assert above[0] > 0.5 and small_household_threshold(GENUINE, high, np.full(100, 0.6), 0.05) == (*above, False)
