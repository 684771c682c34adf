"""The vectorised bootstrap against a hand-written one: each resample's records written out one by
one (a record drawn twice appears twice) and scored with the plain metrics."""
import numpy as np
import pytest

from fairseq_ecg.metrics.bootstrap import (classification_intervals, classification_resamples, format_interval,
                                   identification_resamples, interval, paired_difference, patient_counts,
                                   weighted_equal_error_rate)
from fairseq_ecg.metrics.identification import equal_error_rate, identification_metrics
from fairseq_ecg.labels import scored_labels
from fairseq_ecg.metrics.classification import classification_metrics


def _hand_resamples(patients, resamples, seed):
    """Record indices of each resample, drawn the textbook way: patients with replacement."""
    keys = [p if p else f"\0record {i}" for i, p in enumerate(patients)]
    unique = list(dict.fromkeys(keys))  # in order of first appearance
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(unique), size=(resamples, len(unique)))
    members = {u: [i for i, k in enumerate(keys) if k == u] for u in unique}
    return [np.array([i for d in row for i in members[unique[d]]], dtype=int) for row in draws]


def test_patient_counts_are_the_textbook_draws():
    patients = ["a", "b", "a", "", "c", "", "b", "b"]
    counts = patient_counts(patients, 50, seed=3)
    hand = _hand_resamples(patients, 50, seed=3)
    assert counts.shape == (50, 8)
    for row, indices in zip(counts, hand):
        np.testing.assert_array_equal(row, np.bincount(indices, minlength=8))
    # a patient's records always come together; a record without an id is its own patient
    assert np.all(counts[:, 0] == counts[:, 2]) and np.all(counts[:, 1] == counts[:, 6])
    assert counts.sum(axis=1).min() >= 5 and not np.all(counts[:, 3] == counts[:, 5])
    renamed = {"a": "z9", "b": "m", "c": "a0", "": ""}  # other names, the same patients: the same draws
    np.testing.assert_array_equal(patient_counts([renamed[p] for p in patients], 50, seed=3), counts)


@pytest.mark.parametrize("with_unknown", [False, True])
def test_classification_resamples_equal_the_metrics_of_each_resample(with_unknown):
    rng = np.random.default_rng(0)
    records, table = 60, scored_labels()
    classes = len(table.names)
    labels = rng.random((records, classes)) < 0.15
    labels[:, 3] = False  # a class never labelled: not a drop-out
    labels[:2, 7], labels[2:, 7] = True, False  # a rare class: drops out of many resamples
    scores = np.round(rng.random((records, classes)) * 0.5 + labels * 0.3, 1)  # rounded: ties
    thresholds = np.full(classes, 0.45)
    known = rng.random((records, classes)) > 0.1 if with_unknown else None
    patients = [f"p{i // 2}" if i % 5 else "" for i in range(records)]
    counts = patient_counts(patients, 40, seed=1)
    values, dropped = classification_resamples(labels, scores, thresholds, counts, table.weights,
                                               known=known)
    hand_dropped = 0
    for b, indices in enumerate(_hand_resamples(patients, 40, seed=1)):
        kept = None if known is None else known[indices]
        expected = classification_metrics(labels[indices], scores[indices], thresholds, table.weights, known=kept)
        for name in ("auroc", "f1", "accuracy", "challenge_metric"):
            np.testing.assert_allclose(values[name][b], expected[name], rtol=1e-9, atol=1e-12, err_msg=name)
        k = known if known is not None else np.ones_like(labels)
        whole = [c for c in range(classes) if 0 < labels[k[:, c], c].sum() < k[:, c].sum()]
        hand_dropped += sum(not (0 < labels[indices][k[indices, c], c].sum() < k[indices, c].sum()) for c in whole)
    assert dropped == hand_dropped > 0


def test_interval_and_its_one_token_form():
    values = np.concatenate([np.arange(1000) / 1000.0, [np.nan]])
    low, high = interval(values)
    assert low == pytest.approx(0.025, abs=1e-3) and high == pytest.approx(0.974, abs=1e-3)
    assert format_interval((low, high)) == "[0.02498,0.974]"
    assert format_interval(interval(np.array([np.nan]))) == "[nan,nan]"
    intervals = classification_intervals(np.eye(4, dtype=bool)[[0, 1, 2, 3] * 5], np.eye(4)[[0, 1, 2, 3] * 5],
                                         0.5, [str(i) for i in range(20)], resamples=200)
    assert intervals.bounds["auroc"] == (1.0, 1.0) and intervals.resamples == 200  # a perfect model stays perfect
    assert "challenge_metric" not in intervals.bounds


def test_identification_resamples_equal_the_metrics_of_each_resample():
    rng = np.random.default_rng(2)
    patients = np.repeat(np.arange(12), 3)
    embeddings = rng.normal(size=(36, 8)) + np.eye(12, 8)[patients % 8] * 2 * (patients[:, None] < 8)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    probe = np.tile([False, False, True], 12)
    values = identification_resamples(embeddings, probe, patients, 30, seed=4)
    hand = _hand_resamples(list(patients[probe].astype(str)), 30, seed=4)
    gallery_rows = np.flatnonzero(~probe)
    for b, indices in enumerate(hand):
        rows = np.concatenate([gallery_rows, np.flatnonzero(probe)[indices]])
        top1, eer = identification_metrics(embeddings[rows], probe[rows], patients[rows])
        assert values["top1_accuracy"][b] == pytest.approx(top1)
        assert values["eer"][b] == pytest.approx(eer, abs=1e-12)


def test_weighted_eer_with_unit_weights_is_the_plain_one():
    rng = np.random.default_rng(5)
    same = rng.random(400) < 0.2
    scores = np.round(rng.normal(size=400) + same, 1)
    assert weighted_equal_error_rate(same, scores, np.ones(400)) == pytest.approx(equal_error_rate(same, scores))


def test_paired_difference_separates_a_real_gap_from_none():
    rng = np.random.default_rng(6)
    records = 300
    labels = rng.random((records, 3)) < 0.3
    noise = rng.normal(size=(records, 3))
    better, worse = labels + noise * 0.8, labels + noise * 0.8 + rng.normal(size=(records, 3)) * 0.8
    counts = patient_counts([str(i) for i in range(records)], 300, seed=0)
    a = classification_resamples(labels, better, 0.5, counts)[0]["auroc"]
    b = classification_resamples(labels, worse, 0.5, counts)[0]["auroc"]
    mean, low, high = paired_difference(a, b)
    assert low > 0 and mean > 0.05
    mean, low, high = paired_difference(a, a)
    assert (mean, low, high) == (0.0, 0.0, 0.0)
