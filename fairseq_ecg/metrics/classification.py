"""Multi-label classification metrics: the PhysioNet/CinC Challenge 2021 metric and the usual ones.

Pure numpy / scikit-learn on whole arrays (no fairseq here), so that every number can be checked
against a reference on the same arrays. The conventions follow the Challenge's own
``evaluate_model.py`` where it has one:

* arrays are ``[records, classes]``; columns follow the label set (``SCORED_CLASSES`` by default);
* a class with a single label value in the subset (all positive or all negative) has no ROC or
  precision-recall curve: macro AUROC and AUPRC average over the other classes (NaN if none);
* macro F1 leaves out a class that is neither labelled nor predicted in any record (its F1 is 0/0),
  as the Challenge does; scikit-learn's ``zero_division=np.nan`` does exactly this;
* accuracy is exact match (every class of the record right), the Challenge's ``accuracy``.
"""
from typing import Dict, Optional, Tuple

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
)

from ..labels import SCORED_CLASSES, SINUS_RHYTHM, scored_labels

AGGREGATIONS = ("mean", "max")


def _boolean(name: str, array) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"{name} must be [records, classes], found shape {array.shape}")
    return array.astype(bool)


def _reward_matrix(labels: np.ndarray, outputs: np.ndarray) -> np.ndarray:
    """Challenge's modified confusion matrix A[true class, predicted class]: each record spreads one
    unit over its (true, predicted) pairs, divided by the size of the union of its true and
    predicted classes (at least 1)."""
    union = np.maximum((labels | outputs).sum(axis=1), 1).astype(np.float64)
    return (labels / union[:, None]).T @ outputs.astype(np.float64)


def challenge_metric(
    labels, predictions, weights: Optional[np.ndarray] = None, sinus_index: Optional[int] = None
) -> float:
    """Normalised Challenge 2021 score of boolean ``predictions`` against ``labels`` [records, classes].

    ``weights`` [classes, classes] is the reward table (default: the packaged ``weights.csv``, whose
    columns are ``SCORED_CLASSES``); ``sinus_index`` the column of sinus rhythm, the "inactive"
    prediction (default: its column in ``SCORED_CLASSES``). 1 = the true labels, 0 = always sinus
    rhythm alone; 0 as well when those two score the same (nothing to normalise by).
    """
    labels, predictions = _boolean("labels", labels), _boolean("predictions", predictions)
    if weights is None:
        weights = scored_labels().weights
    weights = np.asarray(weights, dtype=np.float64)
    if sinus_index is None:
        sinus_index = [i for i, name in enumerate(SCORED_CLASSES) if SINUS_RHYTHM in name.split("|")][0]
    if labels.shape != predictions.shape or weights.shape != (labels.shape[1],) * 2:
        raise ValueError(f"labels {labels.shape} and predictions {predictions.shape} must have the same shape, "
                         f"with one weights row and column per class (weights {weights.shape})")
    inactive = np.zeros_like(labels)
    inactive[:, sinus_index] = True
    observed, correct, baseline = (np.nansum(weights * _reward_matrix(labels, out))
                                   for out in (predictions, labels, inactive))
    if correct == baseline:
        return 0.0
    return float((observed - baseline) / (correct - baseline))


def _two_valued(labels: np.ndarray) -> np.ndarray:
    """Columns holding both label values (the only ones with ROC / PR curves)."""
    positives = labels.sum(axis=0)
    return (positives > 0) & (positives < labels.shape[0])


def macro_auroc(labels, scores) -> float:
    """Mean ROC AUC over the classes with both label values in ``labels`` (NaN if none)."""
    labels, scores = _boolean("labels", labels), np.asarray(scores, dtype=np.float64)
    keep = _two_valued(labels)
    if not keep.any():
        return float("nan")
    return float(roc_auc_score(labels[:, keep], scores[:, keep], average="macro"))


def macro_auprc(labels, scores) -> float:
    """Mean average precision (area under the precision-recall curve, as a step function) over the
    classes with both label values in ``labels`` (NaN if none)."""
    labels, scores = _boolean("labels", labels), np.asarray(scores, dtype=np.float64)
    keep = _two_valued(labels)
    if not keep.any():
        return float("nan")
    return float(average_precision_score(labels[:, keep], scores[:, keep], average="macro"))


def macro_f1(labels, predictions) -> float:
    """Mean F1 of the positive label over the classes that are labelled or predicted somewhere (NaN
    if none). Written out rather than scikit-learn's ``f1_score``: given one column (a class scored
    on the records where it is known) that averages the F1 of both label values, positive and
    negative, which overstated the masked macro F1."""
    labels, predictions = _boolean("labels", labels), _boolean("predictions", predictions)
    tp = (labels & predictions).sum(axis=0)
    wrong = (labels ^ predictions).sum(axis=0)
    scored = 2 * tp + wrong > 0
    if not scored.any():
        return float("nan")
    return float(np.mean(2 * tp[scored] / (2 * tp[scored] + wrong[scored])))


def accuracy(labels, predictions) -> float:
    """Exact-match accuracy: the fraction of records whose every class is right."""
    return float(accuracy_score(_boolean("labels", labels), _boolean("predictions", predictions)))


def tune_thresholds(labels, scores, default: float = 0.5) -> np.ndarray:
    """Per-class threshold maximising that class's F1 (predict ``score >= threshold``).

    A class without positives in ``labels`` has no F1 to maximise and keeps ``default``.
    """
    labels, scores = _boolean("labels", labels), np.asarray(scores, dtype=np.float64)
    thresholds = np.full(labels.shape[1], float(default))
    for k in np.flatnonzero(labels.any(axis=0)):
        precision, recall, cuts = precision_recall_curve(labels[:, k], scores[:, k])
        precision, recall = precision[:-1], recall[:-1]  # the last point (recall 0) has no threshold
        f1 = np.divide(2 * precision * recall, precision + recall,
                       out=np.zeros_like(precision), where=precision + recall > 0)
        thresholds[k] = cuts[int(np.argmax(f1))]
    return thresholds


def aggregate_by_record(probs, rows, how: str = "mean") -> Tuple[np.ndarray, np.ndarray]:
    """Combine segment outputs ``probs`` [segments, classes] of the records ``rows`` [segments]
    into one row per record: returns (sorted record ids, [records, classes])."""
    if how not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, found {how!r}")
    probs, rows = np.asarray(probs, dtype=np.float64), np.asarray(rows).ravel()
    if probs.ndim != 2 or len(rows) != len(probs):
        raise ValueError(f"expected probs [segments, classes] and rows [segments], found {probs.shape} and {rows.shape}")
    records, inverse = np.unique(rows, return_inverse=True)
    if how == "max":
        out = np.full((len(records), probs.shape[1]), -np.inf)
        np.maximum.at(out, inverse, probs)
        return records, out
    out = np.zeros((len(records), probs.shape[1]))
    np.add.at(out, inverse, probs)
    return records, out / np.bincount(inverse, minlength=len(records))[:, None]


def _masked_macro(labels: np.ndarray, values: np.ndarray, known: np.ndarray, score) -> float:
    """Mean over classes of ``score(labels, values)`` on the records where the class is known;
    classes where it returns NaN (one label value only, nothing labelled or predicted) are left out."""
    per_class = []
    for k in range(labels.shape[1]):
        rows = known[:, k]
        if rows.any():
            per_class.append(score(labels[rows, k:k + 1], values[rows, k:k + 1]))
    per_class = [v for v in per_class if not np.isnan(v)]
    return float(np.mean(per_class)) if per_class else float("nan")


def tune_thresholds_known(labels, scores, known, default: float = 0.5) -> np.ndarray:
    """:func:`tune_thresholds` per class on the records where that class is known."""
    labels, scores, known = _boolean("labels", labels), np.asarray(scores, dtype=np.float64), _boolean("known", known)
    thresholds = np.full(labels.shape[1], float(default))
    for k in range(labels.shape[1]):
        rows = known[:, k]
        if rows.any():
            thresholds[k] = tune_thresholds(labels[rows, k:k + 1], scores[rows, k:k + 1], default)[0]
    return thresholds


def classification_metrics(
    labels, scores, thresholds, weights: Optional[np.ndarray] = None, sinus_index: Optional[int] = None,
    challenge: bool = True, known=None,
) -> Dict[str, float]:
    """Every metric of one evaluated subset, per record: ``scores`` are probabilities,
    ``predictions = scores >= thresholds`` (one threshold per class, or one for all).

    ``known`` [records, classes] (default: all True) marks the labels the source records; unknown
    entries are left out of every metric: AUROC, AUPRC and F1 per class over the records where
    that class is known, accuracy counts a record right when all its known classes are, and the
    Challenge metric (which scores all classes of a record together) uses the records whose every
    class is known (NaN if none)."""
    labels, scores = _boolean("labels", labels), np.asarray(scores, dtype=np.float64)
    predictions = scores >= np.asarray(thresholds, dtype=np.float64)
    if known is not None and not np.all(known):
        known = _boolean("known", known)
        values = {
            "auroc": _masked_macro(labels, scores, known, macro_auroc),
            "auprc": _masked_macro(labels, scores, known, macro_auprc),
            "f1": _masked_macro(labels, predictions, known, macro_f1),
            "accuracy": float(np.mean(np.all((labels == predictions) | ~known, axis=1))),
        }
        if challenge:
            full = known.all(axis=1)
            values["challenge_metric"] = (challenge_metric(labels[full], predictions[full], weights, sinus_index)
                                          if full.any() else float("nan"))
        return values
    values = {
        "auroc": macro_auroc(labels, scores),
        "auprc": macro_auprc(labels, scores),
        "f1": macro_f1(labels, predictions),
        "accuracy": accuracy(labels, predictions),
    }
    if challenge:
        values["challenge_metric"] = challenge_metric(labels, predictions, weights, sinus_index)
    return values
