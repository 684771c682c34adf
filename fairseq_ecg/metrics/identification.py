"""Patient identification metrics over a whole held-out subset: each probe record matched to the
gallery records by cosine (top-1 accuracy) and the equal error rate of same- against
different-patient pairs. The ``arcface`` criterion's meter and the bootstrap compute them here."""
from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np
from sklearn.metrics import roc_curve


def equal_error_rate(same: np.ndarray, scores: np.ndarray) -> float:
    """Rate where false accepts equal false rejects, linearly interpolated between ROC points;
    NaN unless both same- and different-patient pairs exist."""
    same = np.asarray(same, dtype=bool).ravel()
    if same.all() or not same.any():
        return float("nan")
    fpr, tpr, _ = roc_curve(same, np.asarray(scores, dtype=np.float64).ravel())
    fnr = 1.0 - tpr
    gap = fnr - fpr  # decreasing from 1 to -1 along the curve
    i = int(np.argmax(gap <= 0))
    if i == 0:
        return float(fpr[0])
    t = gap[i - 1] / (gap[i - 1] - gap[i])
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def record_embeddings(segments: Sequence) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per record: mean of its segment embeddings (normalised again), probe flag and patient, from
    the ``EmbeddedSegments`` that validation batches log (:mod:`fairseq_ecg.metrics.meters`)."""
    rows = np.concatenate([s.rows for s in segments])
    embeddings = np.concatenate([s.embeddings for s in segments]).astype(np.float64)
    records, first, inverse = np.unique(rows, return_index=True, return_inverse=True)
    sums = np.zeros((len(records), embeddings.shape[1]))
    np.add.at(sums, inverse, embeddings)
    sums /= np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    probe = np.concatenate([s.probe for s in segments])[first].astype(bool)
    patients = np.concatenate([s.patients for s in segments])[first]
    return sums, probe, patients


def identification_metrics(embeddings: np.ndarray, probe: np.ndarray, patients: np.ndarray) -> Tuple[float, float]:
    """(top-1 accuracy, EER) of matching each probe record to the gallery records by cosine.

    ``embeddings`` [records, dim] L2-normalised, ``probe`` [records] True for probes, ``patients``
    [records]. NaN where the subset lacks probes or gallery records.
    """
    gallery, probes = embeddings[~probe], embeddings[probe]
    if len(gallery) == 0 or len(probes) == 0:
        return float("nan"), float("nan")
    scores = probes @ gallery.T
    gallery_patients, probe_patients = patients[~probe], patients[probe]
    top1 = float(np.mean(gallery_patients[scores.argmax(axis=1)] == probe_patients))
    same = probe_patients[:, None] == gallery_patients[None, :]
    return top1, equal_error_rate(same, scores)
