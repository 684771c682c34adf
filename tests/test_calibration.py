"""Calibration (fairseq_ecg/metrics/calibration.py): ECE and Brier against their formulas written
out by hand, Platt scaling recovering known parameters, the classes it leaves as trained, and
thresholds mapped between the two scales."""
import numpy as np
import pytest
from scipy.special import expit, logit

from fairseq_ecg.metrics.calibration import (BINS, MIN_EACH, PlattCalibration, brier_score,
                                             expected_calibration_error, fit_platt, reliability_curve)


def test_ece_and_brier_are_their_formulas():
    probs = np.array([[0.05, 0.9], [0.15, 0.8], [0.12, 0.85], [0.95, 0.1], [0.91, 0.2], [1.0, 0.0]])
    labels = np.array([[0, 1], [1, 1], [0, 0], [1, 0], [0, 0], [1, 1]], bool)
    assert BINS == 10
    # class 0: bin 0 {0.05: 0}, bin 1 {0.15: 1, 0.12: 0}, bin 9 {0.95: 1, 0.91: 0, 1.0: 1}
    ece0 = (1 * abs(0 - 0.05) + 2 * abs(0.5 - 0.135) + 3 * abs(2 / 3 - (0.95 + 0.91 + 1.0) / 3)) / 6
    # class 1: bin 9 {0.9: 1}, bin 8 {0.8: 1, 0.85: 0}, bin 1 {0.1: 0}, bin 2 {0.2: 0}, bin 0 {0.0: 1}
    ece1 = (abs(1 - 0.9) + 2 * abs(0.5 - 0.825) + abs(0 - 0.1) + abs(0 - 0.2) + abs(1 - 0.0)) / 6
    assert expected_calibration_error(labels, probs) == pytest.approx((ece0 + ece1) / 2)
    brier = np.mean([np.mean((probs[:, k] - labels[:, k]) ** 2) for k in range(2)])
    assert brier_score(labels, probs) == pytest.approx(brier)
    # unknown labels are left out of their class
    known = np.ones_like(labels)
    known[1, 0] = False
    keep = [0, 2, 3, 4, 5]
    ece0_known = (abs(0 - 0.05) + abs(0 - 0.12) + 3 * abs(2 / 3 - (0.95 + 0.91 + 1.0) / 3)) / 5
    assert expected_calibration_error(labels, probs, known) == pytest.approx((ece0_known + ece1) / 2)
    assert brier_score(labels, probs, known) == pytest.approx(
        (np.mean((probs[keep, 0] - labels[keep, 0]) ** 2) + np.mean((probs[:, 1] - labels[:, 1]) ** 2)) / 2)
    confidence, frequency, counts = reliability_curve(labels, probs)
    assert counts.sum() == 12 and counts[9] == 4 and frequency[9] == pytest.approx(3 / 4)
    assert confidence[9] == pytest.approx((0.95 + 0.91 + 1.0 + 0.9) / 4) and np.isnan(confidence[5])


def test_platt_scaling_recovers_the_distortion_and_lowers_the_error():
    """Records whose true probability q is reported as sigmoid((logit(q) - 1) / 2.5): the fit finds
    slope 2.5 and offset 1 (up to sampling and Platt's smoothed targets)."""
    rng = np.random.default_rng(0)
    q = rng.uniform(0.02, 0.98, (40_000, 1))
    labels = rng.random(q.shape) < q
    reported = expit((logit(q) - 1.0) / 2.5)
    calibration, few, falling = fit_platt(labels, reported)
    assert few == [] and falling == []
    assert calibration.slopes[0] == pytest.approx(2.5, rel=0.05) and calibration.offsets[0] == pytest.approx(1.0, abs=0.05)
    assert np.allclose(calibration.apply(reported), q, atol=0.02)
    assert expected_calibration_error(labels, calibration.apply(reported)) < 0.02 < expected_calibration_error(labels, reported)


def test_classes_with_too_few_cases_or_a_falling_fit_stay_as_trained():
    rng = np.random.default_rng(1)
    probs = rng.random((60, 3))
    labels = np.zeros((60, 3), bool)
    labels[:MIN_EACH - 1, 0] = True  # too few positives
    labels[:, 1] = probs[:, 1] < 0.5  # the label falls as the probability rises
    labels[:, 2] = probs[:, 2] > 0.3
    calibration, few, falling = fit_platt(labels, probs)
    assert few == [0] and falling == [1] and calibration.fitted.tolist() == [False, False, True]
    assert np.array_equal(calibration.apply(probs)[:, :2], probs[:, :2])
    # known marks: with the positives unknown, class 2 has too few too
    known = np.ones_like(labels)
    known[labels[:, 2], 2] = False
    assert 2 in fit_platt(labels, probs, known)[1]


def test_thresholds_map_between_the_scales_and_the_state_round_trips():
    calibration = PlattCalibration((2.0, 1.0), (-0.5, 0.0))
    probs = np.linspace(0.001, 0.999, 999)[:, None].repeat(2, axis=1)
    thresholds = np.array([0.3, 0.4])
    back = calibration.uncalibrated(thresholds)
    assert back[1] == 0.4  # not fitted: unchanged
    assert np.array_equal(calibration.apply(probs) >= thresholds, probs >= back)
    assert PlattCalibration.from_state(calibration.to_state()) == calibration
    assert PlattCalibration.from_state(None) is None
    with pytest.raises(ValueError, match="not a Platt calibration"):
        PlattCalibration.from_state({"method": "isotonic", "slopes": [], "offsets": []})
