"""Calibration of a classifier's record probabilities: Platt scaling per class, and how far the
probabilities are from the frequencies they claim (expected calibration error, Brier score).

BCE on a small labelled set leaves probabilities that rank records well and mean little as
numbers: the demo's 12-lead model says 0.2 where a class is present one time in two. Platt scaling
(Platt 1999) fits ``p' = sigmoid(a * logit(p) + b)`` per class on the validation patients, with
Platt's smoothed targets ``(N+ + 1) / (N+ + 2)`` and ``1 / (N- + 2)`` against over-fitting a small
set. It is applied to a record's probability after its segments are combined (what is reported and
thresholded), and it is increasing (``a > 0`` is required), so AUROC and every ranking stay as they
are; thresholds tuned on the calibrated scale select the same records as thresholds tuned before.
A class with fewer than ``MIN_EACH`` known positives or negatives on valid, or whose fit does not
rise with the label, stays as it is (``a = 1, b = 0``), said once by the caller.

Pure numpy/scipy on whole arrays, like the other metrics.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, logit

MIN_EACH = 5  # known positives and negatives a class needs on valid to be calibrated
BINS = 10  # equal-width probability bins of the expected calibration error and reliability curves
EDGE = 1e-6  # probabilities are clipped to [EDGE, 1 - EDGE] before their log-odds are taken
CALIBRATIONS = ("none", "valid")  # predict's and the task's choice: as trained, or fitted on valid


def _log_odds(probs) -> np.ndarray:
    return logit(np.clip(np.asarray(probs, dtype=np.float64), EDGE, 1 - EDGE))


@dataclass(frozen=True)
class PlattCalibration:
    """Per-class ``sigmoid(slope * logit(p) + offset)``; ``fitted`` marks the classes it changes."""

    slopes: tuple[float, ...]
    offsets: tuple[float, ...]

    @property
    def fitted(self) -> np.ndarray:
        return (np.asarray(self.slopes) != 1.0) | (np.asarray(self.offsets) != 0.0)

    def apply(self, probs) -> np.ndarray:
        """Calibrated probabilities of ``probs`` [records, classes] (classes not fitted unchanged)."""
        probs = np.asarray(probs, dtype=np.float64)
        out = expit(np.asarray(self.slopes) * _log_odds(probs) + np.asarray(self.offsets))
        return np.where(self.fitted, out, probs)

    def uncalibrated(self, thresholds) -> np.ndarray:
        """Thresholds on the calibrated scale mapped back to the scale before calibration: the
        records ``p >= uncalibrated(t)`` are those with ``apply(p) >= t``."""
        thresholds = np.asarray(thresholds, dtype=np.float64)
        back = expit((_log_odds(thresholds) - np.asarray(self.offsets)) / np.asarray(self.slopes))
        return np.where(self.fitted, back, thresholds)

    def to_state(self) -> dict:
        return {"method": "platt", "slopes": list(self.slopes), "offsets": list(self.offsets)}

    @classmethod
    def from_state(cls, state: Optional[dict]) -> Optional["PlattCalibration"]:
        if not state:
            return None
        if state.get("method") != "platt" or len(state["slopes"]) != len(state["offsets"]):
            raise ValueError(f"not a Platt calibration: {state}")
        return cls(tuple(float(a) for a in state["slopes"]), tuple(float(b) for b in state["offsets"]))


def _fit_one(labels: np.ndarray, probs: np.ndarray) -> tuple[float, float]:
    """Platt's (slope, offset) of one class, by Newton-free L-BFGS on the smoothed-target log loss."""
    x = _log_odds(probs)
    positives = labels.sum()
    target = np.where(labels, (positives + 1) / (positives + 2), 1 / (len(labels) - positives + 2))

    def loss(params: np.ndarray) -> tuple[float, np.ndarray]:
        z = params[0] * x + params[1]
        p = expit(z)
        value = np.sum(np.logaddexp(0, z) - target * z)  # -[t log p + (1 - t) log(1 - p)]
        return float(value), np.array([np.sum((p - target) * x), np.sum(p - target)])

    result = minimize(loss, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B")
    return float(result.x[0]), float(result.x[1])


def fit_platt(labels, probs, known=None) -> tuple[PlattCalibration, list[int], list[int]]:
    """Fit a calibration on one subset's records: ``labels``, ``probs`` (and ``known``, default all)
    [records, classes]. Returns (the calibration, the classes left as they were for too few
    positives or negatives, those left because the fit did not rise with the label)."""
    labels, probs = np.asarray(labels, dtype=bool), np.asarray(probs, dtype=np.float64)
    known = np.ones_like(labels) if known is None else np.asarray(known, dtype=bool)
    slopes, offsets, few, falling = [], [], [], []
    for k in range(labels.shape[1]):
        y, p = labels[known[:, k], k], probs[known[:, k], k]
        slope, offset = 1.0, 0.0
        if min(y.sum(), (~y).sum()) < MIN_EACH:
            few.append(k)
        else:
            slope, offset = _fit_one(y, p)
            if not slope > 0:
                falling.append(k)
                slope, offset = 1.0, 0.0
        slopes.append(slope)
        offsets.append(offset)
    return PlattCalibration(tuple(slopes), tuple(offsets)), few, falling


def _per_class(labels, probs, known, score) -> float:
    labels, probs = np.asarray(labels, dtype=bool), np.asarray(probs, dtype=np.float64)
    known = np.ones_like(labels) if known is None else np.asarray(known, dtype=bool)
    values = [score(labels[known[:, k], k], probs[known[:, k], k]) for k in range(labels.shape[1]) if known[:, k].any()]
    return float(np.mean(values)) if values else float("nan")


def _ece_one(y: np.ndarray, p: np.ndarray) -> float:
    bins = np.minimum((p * BINS).astype(int), BINS - 1)
    counts = np.bincount(bins, minlength=BINS)
    gap = np.abs(np.bincount(bins, y, BINS) - np.bincount(bins, p, BINS))
    return float(gap.sum() / counts.sum())


def expected_calibration_error(labels, probs, known=None) -> float:
    """Macro ECE: per class, over its known records, the record-weighted mean of |positive
    frequency - mean probability| in ``BINS`` equal-width bins of [0, 1]; averaged over classes."""
    return _per_class(labels, probs, known, _ece_one)


def brier_score(labels, probs, known=None) -> float:
    """Macro Brier score: per class, the mean of (probability - label)^2 over its known records."""
    return _per_class(labels, probs, known, lambda y, p: float(np.mean((p - y) ** 2)))


def reliability_curve(labels, probs, known=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Over every known (record, class) pair, per ``BINS`` equal-width bin: (mean probability,
    positive frequency, pairs); NaN for an empty bin."""
    labels, probs = np.asarray(labels, dtype=bool), np.asarray(probs, dtype=np.float64)
    keep = np.ones_like(labels) if known is None else np.asarray(known, dtype=bool)
    y, p = labels[keep].astype(np.float64), probs[keep]
    bins = np.minimum((p * BINS).astype(int), BINS - 1)
    counts = np.bincount(bins, minlength=BINS)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.bincount(bins, p, BINS) / counts, np.bincount(bins, y, BINS) / counts, counts
