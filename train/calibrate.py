"""Score thresholds from genuine and impostor scores: the operating point a model ships with, and the EER."""

from __future__ import annotations

import numpy as np

DEFAULT_THRESHOLD = 0.5


def rates(genuine: np.ndarray, impostor: np.ndarray, threshold: float) -> tuple[float, float]:
    """(false-accept rate, false-reject rate) when scores >= threshold are accepted."""
    far = float(np.mean(impostor >= threshold)) if impostor.size else 0.0
    frr = float(np.mean(genuine < threshold)) if genuine.size else 0.0
    return far, frr


def calibrate_threshold(genuine: np.ndarray, impostor: np.ndarray, target_far: float) -> tuple[float, float, float]:
    """A threshold whose false-accept rate is at most `target_far`: (threshold, far, frr).

    It sits midway between the highest impostor score it must reject and the next genuine score above it, so
    small validation sets do not put it right on top of a genuine score. With no impostor or genuine scores (a
    one-speaker model, no validation data) the default threshold is returned.
    """
    if impostor.size == 0 or genuine.size == 0:
        return DEFAULT_THRESHOLD, float("nan"), float("nan")
    descending = np.sort(impostor)[::-1]
    allowed = int(np.floor(target_far * descending.size))
    boundary = float(descending[min(allowed, descending.size - 1)])
    above = genuine[genuine > boundary]
    threshold = (boundary + float(above.min())) / 2.0 if above.size else boundary + 1e-6
    far, frr = rates(genuine, impostor, threshold)
    return threshold, far, frr


def equal_error_rate(genuine: np.ndarray, impostor: np.ndarray) -> tuple[float, float]:
    """(EER, threshold at which false accepts and false rejects are closest)."""
    candidates = np.unique(np.concatenate([genuine, impostor]))
    best = (1.0, 0.0, 0.5)
    for threshold in candidates:
        far, frr = rates(genuine, impostor, float(threshold))
        if abs(far - frr) < best[0]:
            best = (abs(far - frr), (far + frr) / 2.0, float(threshold))
    return best[1], best[2]
