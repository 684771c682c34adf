"""95% bootstrap intervals of the test figures, resampling patients, and paired comparisons.

Why patients: a patient's records are not independent of each other, so resampling records would
make the interval too narrow; where there are no patient ids (PhysioNet/CinC 2021) each record is
its own patient. A resample draws as many patients as the subset has, with replacement, seeded;
the interval is the 2.5th and 97.5th percentile of the metric over the resamples (1,000 by default).

Every resample is a row of counts over the records (``[resamples, records]``: how often each record
was drawn) and each metric is computed with those counts as weights, which equals computing it on
the resampled records written out one by one (``tests/test_bootstrap.py`` checks exactly that
against the plain metrics of :mod:`fairseq_ecg.metrics.classification`), but vectorised over the resamples, so a
thousand of them cost about as much as a few evaluations.

* Classification: macro AUROC, macro F1, exact-match accuracy and the Challenge metric. A class
  without both positives and negatives in a resample drops out of that resample's macro (counted);
  unknown labels stay masked as in :func:`fairseq_ecg.metrics.classification.classification_metrics`.
* Identification: the probe patients are resampled, the gallery stays fixed (it is the enrolled
  set); top-1 accuracy and the EER over probe x gallery pairs.
* Paired comparison: two variants scored on the same test records and the same resamples; the
  interval of their difference says whether it is real (it excludes 0). With several seeds each
  variant's value per resample is the mean over its seeds.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import numpy as np

DEFAULT_RESAMPLES = 1000
LEVEL = 0.95


def patient_counts(patients: Sequence, resamples: int, seed: int = 0) -> np.ndarray:
    """[resamples, records] how often each record is drawn when the patients are resampled.

    ``patients`` [records]: the patient of each record; an empty id makes the record its own patient.
    Patients are numbered in the order they first appear, so a per-record results file (names) and
    the meter (class indices) draw the same resamples.
    """
    keys = [str(p) if str(p) else f"\0record {i}" for i, p in enumerate(patients)]
    _, first, group = np.unique(np.asarray(keys, dtype=object), return_index=True, return_inverse=True)
    group = np.argsort(np.argsort(first))[group]  # numbered by first appearance, not by name: the same
    groups = len(first)  # draws for the same records in the same order, whatever the ids are called
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, groups, size=(resamples, groups)) + groups * np.arange(resamples)[:, None]
    per_patient = np.bincount(draws.ravel(), minlength=resamples * groups).reshape(resamples, groups)
    return per_patient[:, group].astype(np.float64)


def interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of the finite ``values`` (NaN, NaN when none is)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if not len(values):
        return float("nan"), float("nan")
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def format_interval(bounds: tuple[float, float]) -> str:
    """``[0.712,0.801]``: one token, so fairseq's ``key value | key value`` lines stay parseable."""
    return "[nan,nan]" if not np.all(np.isfinite(bounds)) else f"[{bounds[0]:.4g},{bounds[1]:.4g}]"


# --- classification ---------------------------------------------------------------------------

def _tie_groups(sorted_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each position of an ascending score array, the first and last position of its tie group."""
    change = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [len(sorted_scores)]]) - 1
    size = np.diff(np.concatenate([starts, [len(sorted_scores)]]))
    return np.repeat(starts, size), np.repeat(ends, size)


def weighted_auroc(labels: np.ndarray, scores: np.ndarray, counts: np.ndarray,
                   known: Optional[np.ndarray] = None) -> np.ndarray:
    """ROC AUC per resample and class [resamples, classes] (ties count one half, as scikit-learn);
    NaN where a resample holds no positive or no negative of the class.

    Args: ``labels`` [records, classes] bool, ``scores`` [records, classes], ``counts``
    [resamples, records], ``known`` [records, classes] (False: the label is unknown, left out).
    """
    labels = np.asarray(labels, dtype=bool)
    known = np.ones_like(labels) if known is None else np.asarray(known, dtype=bool)
    out = np.full((counts.shape[0], labels.shape[1]), np.nan)
    for k in range(labels.shape[1]):
        order = np.argsort(scores[:, k], kind="stable")
        start, end = _tie_groups(np.asarray(scores[order, k], dtype=np.float64))
        weight = counts[:, order] * known[order, k]
        positive = weight * labels[order, k]
        negative = weight - positive
        below = np.cumsum(negative, axis=1)
        before = below - negative  # negatives strictly before this position
        less = before[:, start]  # negatives with a lower score
        tied = below[:, end] - before[:, start]  # negatives with the same score
        pairs = positive.sum(axis=1) * negative.sum(axis=1)
        wins = (positive * (less + 0.5 * tied)).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[:, k] = np.where(pairs > 0, wins / pairs, np.nan)
    return out


def _challenge_rewards(labels: np.ndarray, outputs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per record, its part of the Challenge score's sum: the metric is linear in the records."""
    union = np.maximum((labels | outputs).sum(axis=1), 1).astype(np.float64)
    return ((labels / union[:, None]) @ weights * outputs).sum(axis=1)


def classification_resamples(labels, scores, thresholds, counts: np.ndarray, weights: Optional[np.ndarray] = None,
                             sinus_index: Optional[int] = None, known=None) -> tuple[Dict[str, np.ndarray], int]:
    """Each metric of :func:`fairseq_ecg.metrics.classification.classification_metrics` per resample, and how many
    (resample, class) pairs dropped out of the macro AUROC because the class lost its positives or
    negatives in that resample (a class absent from the whole subset is not counted). The Challenge
    metric is left out without ``weights``."""
    labels, scores = np.asarray(labels, dtype=bool), np.asarray(scores, dtype=np.float64)
    known = np.ones_like(labels) if known is None else np.asarray(known, dtype=bool)
    predictions = scores >= np.asarray(thresholds, dtype=np.float64)
    per_class = weighted_auroc(labels, scores, counts, known)
    full = weighted_auroc(labels, scores, np.ones((1, len(labels))), known)[0]
    dropped = int(np.isnan(per_class[:, np.isfinite(full)]).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        values = {"auroc": row_nanmean(per_class)}
        hits = lambda mask: counts @ (mask & known).astype(np.float64)  # noqa: E731
        tp, fp, fn = hits(predictions & labels), hits(predictions & ~labels), hits(~predictions & labels)
        denominator = 2 * tp + fp + fn
        values["f1"] = row_nanmean(np.where(denominator > 0, 2 * tp / denominator, np.nan))
        right = np.all((labels == predictions) | ~known, axis=1).astype(np.float64)
        values["accuracy"] = (counts @ right) / counts.sum(axis=1)
        if weights is not None:
            from ..labels import SCORED_CLASSES, SINUS_RHYTHM

            if sinus_index is None:
                sinus_index = [i for i, n in enumerate(SCORED_CLASSES) if SINUS_RHYTHM in n.split("|")][0]
            table = np.nan_to_num(np.asarray(weights, dtype=np.float64))
            inactive = np.zeros_like(labels)
            inactive[:, sinus_index] = True
            whole = counts * known.all(axis=1)  # the Challenge metric scores records with every label known
            observed, correct, baseline = (whole @ _challenge_rewards(labels, out, table)
                                           for out in (predictions, labels, inactive))
            score = np.where(correct == baseline, 0.0, (observed - baseline) / np.where(correct == baseline, 1, correct - baseline))
            values["challenge_metric"] = np.where(whole.sum(axis=1) > 0, score, np.nan)
    return values, dropped


def row_nanmean(per_class: np.ndarray) -> np.ndarray:
    """Mean over the finite entries of each row; NaN for a row with none."""
    finite = np.isfinite(per_class)
    total = np.where(finite, per_class, 0.0).sum(axis=1)
    count = finite.sum(axis=1)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


# --- identification ---------------------------------------------------------------------------

def weighted_equal_error_rate(same: np.ndarray, scores: np.ndarray, weight: np.ndarray) -> float:
    """:func:`fairseq_ecg.metrics.identification.equal_error_rate` with a weight per pair: the rate
    where false accepts equal false rejects, linearly interpolated between ROC points."""
    order = np.argsort(-scores, kind="stable")
    scores, same, weight = scores[order], same[order], weight[order]
    last = np.flatnonzero(np.diff(scores) != 0)
    last = np.concatenate([last, [len(scores) - 1]])  # one ROC point per distinct threshold
    tp = np.cumsum(weight * same)[last]
    fp = np.cumsum(weight * ~same)[last]
    if tp[-1] <= 0 or fp[-1] <= 0:
        return float("nan")
    tpr, fpr = np.concatenate([[0.0], tp / tp[-1]]), np.concatenate([[0.0], fp / fp[-1]])
    gap = (1.0 - tpr) - fpr
    i = int(np.argmax(gap <= 0))
    if i == 0:
        return float(fpr[0])
    t = gap[i - 1] / (gap[i - 1] - gap[i])
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def identification_resamples(embeddings: np.ndarray, probe: np.ndarray, patients: np.ndarray,
                             resamples: int, seed: int = 0) -> Dict[str, np.ndarray]:
    """Top-1 accuracy and EER per resample of the probe patients (the gallery fixed).

    Args: ``embeddings`` [records, dim] L2-normalised, ``probe`` [records] bool, ``patients`` [records].
    """
    probe = np.asarray(probe, dtype=bool)
    gallery, probes = embeddings[~probe], embeddings[probe]
    if not len(gallery) or not len(probes):
        return {"top1_accuracy": np.full(resamples, np.nan), "eer": np.full(resamples, np.nan)}
    scores = probes @ gallery.T
    same = patients[probe][:, None] == patients[~probe][None, :]
    correct = (patients[~probe][scores.argmax(axis=1)] == patients[probe]).astype(np.float64)
    counts = patient_counts(patients[probe], resamples, seed)
    flat_scores, flat_same = scores.ravel().astype(np.float64), same.ravel()
    eer = np.array([weighted_equal_error_rate(flat_same, flat_scores, np.repeat(c, scores.shape[1]))
                    for c in counts])
    return {"top1_accuracy": (counts @ correct) / counts.sum(axis=1), "eer": eer}


# --- what the reports show ---------------------------------------------------------------------

@dataclass
class Intervals:
    """Per metric its interval, and the macro drop-outs of a classification bootstrap."""

    bounds: Dict[str, tuple[float, float]]
    resamples: int
    dropped: int = 0


def interval_text(intervals: Optional[Intervals], name: str) -> Optional[str]:
    """The logged value of ``NAME_ci95``: ``[low,high]`` once a whole subset's intervals exist; None
    before (training's validation reduces batch by batch and reads the value each time)."""
    return None if intervals is None else format_interval(intervals.bounds[name])


def classification_intervals(labels, scores, thresholds, patients: Sequence, resamples: int = DEFAULT_RESAMPLES,
                             seed: int = 0, weights=None, sinus_index=None, known=None) -> Intervals:
    counts = patient_counts(patients, resamples, seed)
    values, dropped = classification_resamples(labels, scores, thresholds, counts, weights, sinus_index, known)
    return Intervals({name: interval(v) for name, v in values.items()}, resamples, dropped)


def identification_intervals(embeddings, probe, patients, resamples: int = DEFAULT_RESAMPLES,
                             seed: int = 0) -> Intervals:
    values = identification_resamples(embeddings, probe, patients, resamples, seed)
    return Intervals({name: interval(v) for name, v in values.items()}, resamples)


def paired_difference(a: np.ndarray, b: np.ndarray, level: float = LEVEL) -> tuple[float, float, float]:
    """(mean difference a - b over the resamples, low, high) where both are finite."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    keep = np.isfinite(a) & np.isfinite(b)
    difference = a[keep] - b[keep]
    if not len(difference):
        return float("nan"), float("nan"), float("nan")
    return (float(difference.mean()), *interval(difference, level))


def seed_mean(per_seed: Sequence[np.ndarray]) -> np.ndarray:
    """The mean over seeds of one variant's value per resample (the same resampled patients)."""
    return np.nanmean(np.stack(per_seed), axis=0)

