"""The classification metrics: the Challenge 2021 metric on hand-made cases, the macro metrics against
scikit-learn on the same arrays, threshold tuning and per-record aggregation."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import f1_score, roc_auc_score

from fairseq_ecg.labels import SCORED_CLASSES, scored_labels
from fairseq_ecg.metrics.classification import (
    accuracy, aggregate_by_record, challenge_metric, classification_metrics, macro_auprc, macro_auroc, macro_f1,
    tune_thresholds,
)

LABELS = scored_labels()
AF, SR, RBBB = (LABELS.index_of(code) for code in ("164889003", "426783006", "713427006"))


def _records(*code_lists) -> np.ndarray:
    return np.stack([LABELS.encode(codes) for codes in code_lists]).astype(bool)


def _reference(labels: np.ndarray, outputs: np.ndarray, weights: np.ndarray, sinus: int) -> float:
    """The Challenge's definition written out record by record and pair by pair."""
    def score(out):
        total = 0.0
        for truth, pred in zip(labels, out):
            union = max(int(np.sum(truth | pred)), 1)
            total += sum(weights[i, j] / union for i in np.flatnonzero(truth) for j in np.flatnonzero(pred))
        return total
    inactive = np.zeros_like(labels)
    inactive[:, sinus] = True
    correct, baseline = score(labels), score(inactive)
    return 0.0 if correct == baseline else (score(outputs) - baseline) / (correct - baseline)


# --- the Challenge metric ---------------------------------------------------------------------

def test_perfect_predictions_score_one_and_always_sinus_scores_zero():
    labels = _records(["164889003"], ["426783006", "713427006"], ["270492004", "426177001"], ["10370003"])
    assert challenge_metric(labels, labels) == pytest.approx(1.0)
    always_sinus = np.zeros_like(labels)
    always_sinus[:, SR] = True
    assert challenge_metric(labels, always_sinus) == pytest.approx(0.0)
    # Predicting nothing at all is worse than the inactive baseline here.
    assert challenge_metric(labels, np.zeros_like(labels)) < 0


def test_equivalent_codes_are_one_class():
    assert SCORED_CLASSES[RBBB] == "713427006|59118001"
    labels = _records(["59118001"], ["426783006"])  # RBBB written with its equivalent code
    predictions = _records(["713427006"], ["426783006"])
    assert (labels == predictions).all()
    assert challenge_metric(labels, predictions) == pytest.approx(1.0)


def test_a_record_with_no_positive_output_by_hand():
    # record 1: AF, nothing predicted; record 2: sinus rhythm, predicted.
    labels, outputs = _records(["164889003"], ["426783006"]), _records([], ["426783006"])
    # observed = 0 + W[SR,SR] = 1; correct = W[AF,AF] + W[SR,SR] = 2;
    # inactive = W[AF,SR]/2 (union {AF, SR}) + W[SR,SR] = 0.25/2 + 1 = 1.125
    assert LABELS.weights[AF, SR] == 0.25
    assert challenge_metric(labels, outputs) == pytest.approx((1 - 1.125) / (2 - 1.125))


def test_an_extra_output_shares_the_record_unit_by_hand():
    # AF predicted as AF and RBBB: the union has two classes, each pair gets 1/2.
    weights = np.array([[1.0, 0.4, 0.25], [0.4, 1.0, 0.35], [0.25, 0.35, 1.0]])  # AF, RBBB, SR
    labels = np.array([[1, 0, 0], [0, 0, 1]], bool)
    outputs = np.array([[1, 1, 0], [0, 0, 1]], bool)
    observed, correct, inactive = 0.5 * 1.0 + 0.5 * 0.4 + 1.0, 2.0, 0.5 * 0.25 + 1.0
    assert challenge_metric(labels, outputs, weights, sinus_index=2) == pytest.approx(
        (observed - inactive) / (correct - inactive))


def test_zero_when_the_truth_is_the_inactive_baseline():
    labels = _records(["426783006"], ["426783006"])
    assert challenge_metric(labels, np.zeros_like(labels)) == 0.0


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_matches_the_definition_on_random_records(seed):
    rng = np.random.default_rng(seed)
    labels = rng.random((12, len(SCORED_CLASSES))) < 0.08
    outputs = rng.random(labels.shape) < 0.1
    assert challenge_metric(labels, outputs) == pytest.approx(_reference(labels, outputs, LABELS.weights, SR))


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="same shape"):
        challenge_metric(np.zeros((2, 26), bool), np.zeros((2, 25), bool))


# --- macro metrics ----------------------------------------------------------------------------

def _random_subset(seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = rng.random((40, 5)) < 0.3
    labels[:, 3] = False  # one class never labelled: no ROC curve
    labels[:, 4] = True   # one class always labelled: no ROC curve either
    scores = np.clip(labels * 0.3 + rng.random(labels.shape) * 0.7, 0, 1)
    return labels, scores


def test_auroc_and_auprc_skip_classes_with_one_label_value():
    labels, scores = _random_subset()
    assert macro_auroc(labels, scores) == pytest.approx(roc_auc_score(labels[:, :3], scores[:, :3], average="macro"))
    assert 0 < macro_auprc(labels, scores) <= 1
    assert np.isnan(macro_auroc(labels[:, 3:], scores[:, 3:]))


def test_f1_and_accuracy_match_scikit_learn():
    labels, scores = _random_subset()
    predictions = scores >= 0.5
    predictions[:, 3] = False  # neither labelled nor predicted: left out of the macro F1
    expected = f1_score(labels[:, [0, 1, 2, 4]], predictions[:, [0, 1, 2, 4]], average="macro")
    assert macro_f1(labels, predictions) == pytest.approx(expected)
    assert accuracy(labels, predictions) == pytest.approx(np.mean((labels == predictions).all(axis=1)))
    assert accuracy(labels, labels) == 1.0


def test_masked_f1_is_the_positive_labels_f1_per_class():
    """A class scored on the records where it is known is one column; scikit-learn's macro F1 of one
    column averaged the F1 of the positive and of the negative label (0.733 where it is 0.667)."""
    labels = np.array([[1], [0], [0], [0]], dtype=bool)
    assert macro_f1(labels, np.array([[1], [1], [0], [0]], dtype=bool)) == pytest.approx(2 / 3)
    rng = np.random.default_rng(3)
    labels, scores = rng.random((40, 4)) < 0.3, rng.random((40, 4))
    known = rng.random((40, 4)) > 0.2
    hand = []
    for k in range(4):
        y, p = labels[known[:, k], k], scores[known[:, k], k] >= 0.5
        hand.append(f1_score(y, p))  # the positive label's F1 (binary average)
    values = classification_metrics(labels, scores, 0.5, challenge=False, known=known)
    assert values["f1"] == pytest.approx(np.mean(hand))


def test_classification_metrics_without_weights_has_no_challenge_metric():
    labels, scores = _random_subset()
    values = classification_metrics(labels, scores, 0.5, challenge=False)
    assert set(values) == {"auroc", "auprc", "f1", "accuracy"}


# --- thresholds and aggregation ---------------------------------------------------------------

def test_tuned_thresholds_maximise_each_class_f1():
    labels, scores = _random_subset(3)
    thresholds = tune_thresholds(labels, scores, default=0.42)
    assert thresholds[3] == 0.42  # no positives: nothing to tune
    for k in (0, 1, 2, 4):
        best = max(f1_score(labels[:, k], scores[:, k] >= t, zero_division=0) for t in np.unique(scores[:, k]))
        assert f1_score(labels[:, k], scores[:, k] >= thresholds[k]) == pytest.approx(best)


def test_aggregate_by_record():
    probs = np.array([[0.2, 0.9], [0.4, 0.1], [0.5, 0.5], [0.6, 0.3]])
    rows = np.array([7, 3, 7, 7])
    records, mean = aggregate_by_record(probs, rows, "mean")
    assert records.tolist() == [3, 7]
    assert np.allclose(mean, [[0.4, 0.1], [(0.2 + 0.5 + 0.6) / 3, (0.9 + 0.5 + 0.3) / 3]])
    _, top = aggregate_by_record(probs, rows, "max")
    assert np.allclose(top, [[0.4, 0.1], [0.6, 0.9]])
    with pytest.raises(ValueError, match="mean"):
        aggregate_by_record(probs, rows, "median")
