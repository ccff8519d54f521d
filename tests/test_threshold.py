"""Rolling-quantile threshold: the window, the warm start, and what enters the window."""

import random

import numpy as np
import pytest

from monitor.threshold import RollingQuantile, Threshold


def test_rolling_quantile_matches_numpy_over_the_last_window_values():
    rng = random.Random(7)
    values = [rng.random() for _ in range(3000)]
    rq = RollingQuantile(window=500, quantile=0.95)
    for i, v in enumerate(values):
        rq.add(v)
        if i % 97 == 0:
            assert rq.value() == pytest.approx(np.quantile(values[max(0, i - 499): i + 1], 0.95))


def test_rolling_quantile_forgets_values_older_than_the_window():
    rq = RollingQuantile(window=3, quantile=0.5, initial=[100.0, 100.0, 100.0])
    for v in (1.0, 2.0, 3.0):
        rq.add(v)
    assert len(rq) == 3
    assert rq.value() == 2.0


def test_rolling_quantile_rejects_non_finite_scores():
    with pytest.raises(ValueError):
        RollingQuantile(10, 0.9).add(float("nan"))


def test_threshold_warm_start_judges_the_first_score_against_calibration():
    calibration = np.linspace(0.0, 1.0, 1001)
    threshold = Threshold(quantile=0.99, window=2000, calibration=calibration)
    assert threshold.value == pytest.approx(0.99)
    assert threshold.judge(0.995) == (True, pytest.approx(0.99))
    assert threshold.judge(0.5)[0] is False


def test_threshold_window_is_filled_with_the_newest_calibration_scores():
    threshold = Threshold(quantile=0.5, window=3, calibration=[9.0, 9.0, 1.0, 2.0, 3.0])
    assert threshold.value == 2.0


def test_margin_multiplies_the_quantile():
    threshold = Threshold(quantile=0.5, window=10, margin=1.5, calibration=[1.0, 2.0, 3.0])
    assert threshold.value == pytest.approx(3.0)


def test_anomalous_scores_do_not_raise_the_bar_for_the_next_ones():
    threshold = Threshold(quantile=0.9, window=100, calibration=[0.1] * 100)
    before = threshold.value
    for _ in range(50):
        assert threshold.judge(10.0)[0] is True
    assert threshold.value == before


def test_learn_from_anomalies_lets_anomalous_scores_into_the_window():
    threshold = Threshold(quantile=0.5, window=10, calibration=[0.1] * 10, learn_from_anomalies=True)
    for _ in range(10):
        threshold.judge(10.0)
    assert threshold.value == 10.0


def test_normal_scores_move_the_threshold():
    threshold = Threshold(quantile=0.5, window=4, calibration=[1.0, 1.0, 1.0, 1.0])
    for _ in range(4):
        threshold.judge(0.5)
    assert threshold.value == 0.5


def test_fixed_threshold_never_moves():
    threshold = Threshold(fixed=0.2)
    for s in (0.1, 0.3, 0.05):
        threshold.judge(s)
    assert threshold.value == 0.2
    assert threshold.judge(0.2) == (False, 0.2)
    assert threshold.judge(0.21) == (True, 0.2)


def test_rolling_threshold_needs_calibration_scores():
    with pytest.raises(ValueError, match="calibration"):
        Threshold(quantile=0.9, window=10, calibration=[])
