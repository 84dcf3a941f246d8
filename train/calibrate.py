"""What a model ships with, from validation data: the score threshold for `unknown` (from genuine and impostor
scores, with spkidd.evaluation's rates), and how much speech the decider waits for before it first names anybody."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from spkidd.decide import Decider, DecisionSettings, StepScores, fallback_step, final_answer
from spkidd.evaluation import rates

DEFAULT_THRESHOLD = 0.5


def calibrate_threshold(
    genuine: np.ndarray, impostor: np.ndarray, target_far: float
) -> tuple[float, float | None, float | None]:
    """A threshold whose false-accept rate is at most `target_far`: (threshold, far, frr).

    It sits midway between the highest impostor score it must reject and the next genuine score above it, so
    small validation sets do not put it right on top of a genuine score. With no impostor or genuine scores (no
    held-out audio) nothing is calibrated: the default threshold, and None for rates that were not measured.
    The scores are cosines, so the threshold is one too: just above an impostor at 1.0 (or a cosine rounded past
    it) is 1.0, which only a perfect match reaches, and the decider refuses anything outside [-1, 1].

    With too few impostor scores to show the target even when none is accepted (too_few_impostors), the threshold
    is not let below the default: on 6 LibriSpeech speakers of three 3-s clips each, 6 impostor scores put it at
    0.29, which named 22% of 91 windows of 34 strangers, where the default named 1%.
    """
    if impostor.size == 0 or genuine.size == 0:
        return DEFAULT_THRESHOLD, None, None
    descending = np.sort(impostor)[::-1]
    allowed = int(np.floor(target_far * descending.size))
    boundary = float(descending[min(allowed, descending.size - 1)])
    above = genuine[genuine > boundary]
    threshold = (boundary + float(above.min())) / 2.0 if above.size else boundary + 1e-6
    threshold = min(1.0, max(-1.0, threshold))
    if too_few_impostors(impostor.size, target_far):
        threshold = max(threshold, DEFAULT_THRESHOLD)
    far, frr = rates(genuine, impostor, threshold)
    return threshold, far, frr


SMALL_HOUSEHOLD = 20
"""Households of fewer voices than this calibrate on speed-changed copies of their voices as well as on each other:
a few voices far apart are not like strangers. On development households of 4 of FSDD's 6 speakers (6 of them,
benchmarks/small_households.py) the other voices alone gave 0.14-0.33, which named 27% of the other two speakers'
clips and 16% of 30 LibriSpeech voices' windows; the stricter of both gave 0.23-0.35, naming 14% and 3%, while the
household's own held-out clips answered `unknown` or wrong went from 8.5% to 11.6%. A household of 40 LibriSpeech
voices calibrated to the same threshold either way (the speed-changed voices gave less)."""


def small_household_threshold(
    genuine: np.ndarray, others: np.ndarray, speed_changed: np.ndarray, target_far: float
) -> tuple[float, float | None, float | None, bool]:
    """The stricter of the thresholds calibrated on the other voices and on the speed-changed voices: (threshold,
    far, frr, whether the speed-changed voices set it), the rates on the impostors that set it. The speed-changed
    voices raise it to the default at most: voices that differ mainly in pitch (synthetic ones) become each other
    at another speed, and would otherwise push it to where the household's own speech is refused."""
    threshold, far, frr = calibrate_threshold(genuine, others, target_far)
    if speed_changed.size == 0 or genuine.size == 0:
        return threshold, far, frr, False
    ceiling = max(threshold, DEFAULT_THRESHOLD)
    raised = min(calibrate_threshold(genuine, speed_changed, target_far)[0], ceiling)
    if raised <= threshold:
        return threshold, far, frr, False
    return raised, *rates(genuine, speed_changed, raised), True


def strangers_note(threshold: float, impostors: str | None) -> str | None:
    """What a threshold calibrated below the default means for strangers, or None. It was set by `impostors` (what
    the model file records stood in for strangers: the household's other voices, or speed-changed copies of them),
    and strangers can come closer to one of the household: a TV of 72 LibriSpeech voices against FSDD's six speakers,
    calibrated to 0.29 on each other's digits, was named as one of them in 43% of its utterances (helper-24's
    walk-through, docs/mqtt-and-home-assistant.md). With the speed-changed voices too (SMALL_HOUSEHOLD), development
    households of four FSDD voices still named 14% of the other two voices' clips (on average; 1-35%). Whether
    strangers or `unknown` answers for the household matter more is the household's choice."""
    if threshold >= DEFAULT_THRESHOLD:
        return None
    return (
        f"the unknown-speaker threshold ({threshold:.3f}) is below the default ({DEFAULT_THRESHOLD:.3f}): it was "
        f"calibrated on {impostors or 'nothing'}, not on strangers, and a stranger (a TV, a visitor) can come closer "
        "to one of these voices: development households of four FSDD voices named on average 14% of two other "
        "voices' recordings as one of them. Where that matters more than an `unknown` for the household, set "
        f"[decision] min_score = {DEFAULT_THRESHOLD} in config.toml (docs/mqtt-and-home-assistant.md: A TV or radio "
        "in the room)."
    )


def calibration_record(
    target_far: float, far: float | None, frr: float | None, impostors: str, impostor_scores: int
) -> dict[str, Any]:
    """What the model file says of its threshold's calibration: the rates measured (None where nothing was), what
    stood in for strangers (None when nothing did) and on how many of their scores it rests."""
    return {
        "target_far": target_far,
        "val_far": far,
        "val_frr": frr,
        "impostors": impostors if far is not None else None,
        "impostor_scores": impostor_scores,
    }


def too_few_impostors(count: int, target_far: float) -> bool:
    """Whether even no false accept among `count` impostor scores leaves `target_far` unshown, with the confidence
    the first-name wait is calibrated with: fewer than 14 at 5%."""
    return rate_upper_bound(0.0, count) > target_far


MIN_SPEECH_CANDIDATES_S = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
WRONG_FIRST_TARGET = 0.03
"""A name that is wrong before it is right misleads automations that act on the first name: at most 3% of
utterances (BENCHMARKS.md's S1 goal)."""
WRONG_FIRST_CONFIDENCE_Z = 0.8416
"""A wait is taken when the target holds with 80% confidence (one-sided Wilson bound), not merely on the
validation clips: the rate is a count of a few clips (3% of P2's 222 is 6), and for a P2 model tried on 2026-11-26
the wait the plain rate chose (0.3 s, 2.7% on validation) named 13.3% of S1's turns wrong first. A longer wait
costs little: on a development conversation two models gave their first correct name as early (median 0.86-0.87 s)
with waits of 0.3, 0.5 and 0.7 s, while for one of them 0.3 s named 6.7% of the turns wrong first against 1.7%."""


def rate_upper_bound(rate: float, total: int, z: float = WRONG_FIRST_CONFIDENCE_Z) -> float:
    """Wilson score upper bound of a `rate` observed over `total` trials: what it may be, given so few of them."""
    if total == 0:
        return 1.0
    centre = rate + z * z / (2 * total)
    spread = z * np.sqrt(rate * (1 - rate) / total + z * z / (4 * total * total))
    return float((centre + spread) / (1 + z * z / total))


def wrong_first_rate(
    settings: DecisionSettings, labels: list[str], scale: float, utterances: list[StepScores], truth: list[int]
) -> float:
    """The share of utterances whose first partial name is wrong, through the daemon's own Decider."""
    wrong = 0
    for steps, label in zip(utterances, truth, strict=True):
        decider = Decider(settings, labels, "validation", {}, scale)
        decider.begin("validation", 0.0)
        events = decider.update(steps, float(steps.speech_s[-1]) if len(steps.speech_s) else 0.0)
        wrong += bool(events) and events[0].speaker != labels[label]
    return wrong / max(1, len(utterances))


def final_answer_shares(
    settings: DecisionSettings, scale: float, utterances: list[StepScores], truth: list[int]
) -> dict[str, float]:
    """The shares of validation clips whose final answer (the daemon's, with its look back for the step with the most
    context) names them right, is `unknown`, and names them wrong: what a household gets from the thresholds. The
    threshold's FRR counts single windows' scores, and read as "56% of your speech answered unknown" where the
    finals of whole clips were 15% (a tester)."""
    counts = {"named_right": 0, "unknown": 0, "named_wrong": 0}
    for steps, label in zip(utterances, truth, strict=True):
        back = fallback_step(steps.speech_s, steps.context_s)
        last, fallback = (steps.scores[-1], steps.probs[-1]), (steps.scores[back], steps.probs[back])
        index, named, _, _ = final_answer(settings, scale, last, fallback)
        counts["unknown" if not named else "named_right" if index == label else "named_wrong"] += 1
    return {outcome: count / max(1, len(utterances)) for outcome, count in counts.items()}


def calibrate_min_speech(
    settings: DecisionSettings,
    labels: list[str],
    scale: float,
    utterances: list[StepScores],
    truth: list[int],
    target: float = WRONG_FIRST_TARGET,
) -> tuple[float, float]:
    """The least speech before a first name at which at most `target` of utterances are first given a wrong
    name, with WRONG_FIRST_CONFIDENCE_Z's confidence from the validation utterances: (min_speech_s, the rate on
    them). If no candidate gets there, the one with the fewest wrong first names (the earliest of equals)."""
    rates_by_wait = [
        (wrong_first_rate(replace(settings, min_speech_s=wait), labels, scale, utterances, truth), wait)
        for wait in MIN_SPEECH_CANDIDATES_S
    ]
    total = len(utterances)
    meeting = [(wait, rate) for rate, wait in rates_by_wait if rate_upper_bound(rate, total) <= target]
    if meeting:
        return meeting[0]
    rate, wait = min(rates_by_wait)
    return wait, rate
