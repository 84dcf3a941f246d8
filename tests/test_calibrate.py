import numpy as np
import pytest

from train.calibrate import calibrate_threshold, equal_error_rate, rates


def test_threshold_meets_the_target_false_accept_rate() -> None:
    rng = np.random.default_rng(0)
    genuine = rng.normal(0.7, 0.1, 2000)
    impostor = rng.normal(0.3, 0.1, 2000)
    threshold, far, frr = calibrate_threshold(genuine, impostor, 0.01)
    assert far <= 0.01 and (far, frr) == rates(genuine, impostor, threshold)
    assert 0.45 < threshold < 0.6


def test_threshold_sits_in_the_gap_of_separable_small_sets() -> None:
    threshold, far, frr = calibrate_threshold(np.array([0.6, 0.7, 0.8]), np.array([0.1, 0.2, 0.3]), 0.01)
    assert threshold == pytest.approx(0.45) and far == 0.0 and frr == 0.0


def test_no_impostors_gives_the_default() -> None:
    threshold, _, _ = calibrate_threshold(np.array([0.9]), np.zeros(0), 0.01)
    assert threshold == 0.5


def test_equal_error_rate_of_overlapping_scores() -> None:
    genuine = np.array([0.9, 0.8, 0.7, 0.4])
    impostor = np.array([0.1, 0.2, 0.3, 0.75])
    eer, threshold = equal_error_rate(genuine, impostor)
    assert eer == 0.25 and 0.4 < threshold <= 0.75
