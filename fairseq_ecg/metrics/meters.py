"""The tasks' whole-subset metrics as fairseq meters, fed by what each evaluation batch logs.

Why the metrics are not averaged per batch: they are not decomposable (AUROC, the Challenge metric,
EER) and they are defined per record, while a record's segments may fall into different batches.
In evaluation a criterion therefore logs each batch's per-segment outputs (a :class:`SegmentLog`:
``ScoredSegments`` of ``ecg_bce``, ``EmbeddedSegments`` of ``arcface``); a :class:`SubsetMeter`
gathers the whole subset and computes the metrics once per state, when fairseq reads the derived
values. fairseq-validate calls reduce_metrics once with every batch's log, the trainer once per
batch into an aggregator that spans the subset: both read the same meter at the end, so both give
the whole-subset numbers, never an average over batches.

fairseq also logs evaluation into its long-lived "valid" aggregator (saved in checkpoints): an
item id that comes again means a new pass, so a meter starts over and holds at most one pass; its
saved state is empty. Resuming a checkpoint saved mid-epoch rebuilds saved meters by class name
from ``fairseq.logging.meters``, where the meters are registered.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
from fairseq import metrics
from fairseq.logging import meters as fairseq_meters
from fairseq.logging.meters import Meter

from .bootstrap import Intervals, classification_intervals, identification_intervals, interval_text
from .calibration import PlattCalibration, brier_score, expected_calibration_error, fit_platt
from .classification import aggregate_by_record, classification_metrics, tune_thresholds, tune_thresholds_known
from .identification import identification_metrics, record_embeddings

logger = logging.getLogger(__name__)

METRICS = ("challenge_metric", "auroc", "auprc", "f1", "accuracy", "ece", "brier")
# Logged where a calibration applies: the same two figures of the probabilities before it.
UNCALIBRATED_METRICS = ("ece_uncalibrated", "brier_uncalibrated")
INTERVAL_METRICS = ("challenge_metric", "auroc", "f1", "accuracy")  # with a bootstrap interval


def _rebuild(cls: type, values: dict) -> "SegmentLog":
    return cls(**values)


class SegmentLog(int):
    """What one evaluation batch logs: per segment its item ``ids``, record ``rows`` and the arrays
    a subclass names in ``fields`` (one entry per segment), the subset's name (``split``) and the
    optional arrays of ``optional`` (None when absent).

    An int, the segment count: fairseq-validate prints every logged value at its log interval, in
    any ``--log-format``, JSON included; it pickles, for gathering logs from several workers.
    """

    fields: Tuple[str, ...] = ("ids", "rows")
    optional: Tuple[str, ...] = ()

    def __new__(cls, *args, **kwargs) -> "SegmentLog":
        names = cls.fields + ("split",) + cls.optional
        values = {**dict(zip(names, args)), **kwargs}
        missing = [name for name in cls.fields if name not in values]
        if missing or set(values) - set(names):
            raise TypeError(f"{cls.__name__}: needs {', '.join(cls.fields)}; got {', '.join(values)}")
        self = super().__new__(cls, len(values["rows"]))
        for name in names:
            setattr(self, name, values.get(name, "" if name == "split" else None))
        return self

    def __reduce__(self):
        return _rebuild, (type(self), {name: getattr(self, name) for name in self.fields + ("split",) + self.optional})

    def __len__(self) -> int:
        return int(self)


class ScoredSegments(SegmentLog):
    """``ecg_bce``'s log: multi-hot ``targets`` and ``probs`` [segments, classes]; ``known`` False
    where a label is unknown (not a negative)."""

    fields = ("ids", "rows", "targets", "probs")
    optional = ("known",)


class EmbeddedSegments(SegmentLog):
    """``arcface``'s log on held-out patients: gallery/probe role, patient and embedding per segment."""

    fields = ("ids", "rows", "probe", "patients", "embeddings")


class SubsetMeter(Meter):
    """Collects the :class:`SegmentLog` parts of one pass over a subset; results are computed when
    read and cached until a part comes."""

    def __init__(self) -> None:
        super().__init__()
        self.reset()

    def reset(self) -> None:
        self.parts: List[SegmentLog] = []
        self.seen: set = set()
        self.forget()

    def forget(self) -> None:
        """Drop what was computed from the parts so far."""

    def add(self, segments: SegmentLog) -> None:
        ids = set(segments.ids.tolist())
        if not self.seen.isdisjoint(ids):  # a new pass over the subset
            self.reset()
        self.seen |= ids
        self.parts.append(segments)
        self.forget()

    def filled(self) -> List[SegmentLog]:
        return [p for p in self.parts if len(p)]

    def records_seen(self) -> int:
        return len({int(r) for p in self.parts for r in p.rows})

    @property
    def smoothed_value(self) -> float:
        return float(sum(len(p) for p in self.parts))


@dataclass(frozen=True, eq=False)
class Scoring:
    """How a subset is scored: per-record aggregation, reward table (None: no Challenge metric) and
    thresholds (None: tune them on this subset, per class, and report the metrics at them), and the
    calibration of the record probabilities (``fit_calibration``: fit it on this subset first;
    thresholds are on the calibrated scale)."""

    aggregate: str = "mean"
    weights: Optional[np.ndarray] = None
    sinus_index: Optional[int] = None
    thresholds: Optional[np.ndarray] = None
    default_threshold: float = 0.5
    calibration: Optional[PlattCalibration] = None
    fit_calibration: bool = False
    # Bootstrap intervals (fairseq_ecg.metrics.bootstrap): 0 resamples for none; computed once the meter
    # holds all ``records`` of the subset, resampling ``patients`` (one per record row).
    resamples: int = 0
    seed: int = 0
    records: int = 0
    patients: Optional[np.ndarray] = None


class ClassificationMeter(SubsetMeter):
    """Classification over a subset: ``ScoredSegments`` aggregated per record and scored when read."""

    def __init__(self) -> None:
        self.scoring = Scoring()
        super().__init__()

    def forget(self) -> None:
        self._result: Optional[Tuple[Dict[str, float], np.ndarray]] = None
        self._intervals: Optional[Intervals] = None
        # the calibration in force, and (with fit_calibration) the classes left as they were: few, falling
        self.calibration: Optional[PlattCalibration] = None
        self.uncalibrated_classes: Tuple[List[int], List[int]] = ([], [])

    def update(self, segments: ScoredSegments, scoring: Scoring) -> None:
        self.add(segments)
        self.scoring = scoring

    def records(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray, Optional[np.ndarray]]:
        """Per record of the subset so far: (manifest rows, probabilities aggregated over its segments
        [records, classes], before calibration, targets [records, classes], known labels or None)."""
        parts = self.filled()
        rows = np.concatenate([p.rows for p in parts])
        records, probs = aggregate_by_record(np.concatenate([p.probs for p in parts]), rows, self.scoring.aggregate)
        first = np.unique(rows, return_index=True)[1]
        targets = np.concatenate([p.targets for p in parts])[first]
        known = None
        if all(p.known is not None for p in parts):
            known = np.concatenate([p.known for p in parts])[first]
        return records, probs, targets, known

    def complete(self) -> bool:
        """Whether every record of the subset (``scoring.records``) has been scored."""
        return self.scoring.records > 0 and self.records_seen() == self.scoring.records

    def intervals(self) -> Optional[Intervals]:
        """Bootstrap intervals of every metric (``scoring.resamples`` of the patients), once the
        whole subset is in; None before, or with 0 resamples."""
        if self._intervals is None and self.scoring.resamples > 0 and self.complete():
            records, probs, targets, known = self.records()
            _, thresholds = self.result()
            probs = self.calibrated(probs)
            self._intervals = classification_intervals(
                targets, probs, thresholds, self.scoring.patients[records], self.scoring.resamples, self.scoring.seed,
                self.scoring.weights, self.scoring.sinus_index, known)
            patients = len(set(self.scoring.patients[records].tolist()))
            logger.info(f"{self.parts[0].split or 'subset'}: 95% bootstrap intervals from {self._intervals.resamples} "
                        f"resamples of {patients} patients (a record without a patient id counts as one); a class "
                        f"without positives or negatives in a resample was left out of that resample's macro AUROC "
                        f"{self._intervals.dropped} times")
        return self._intervals

    def calibrated(self, probs: np.ndarray) -> np.ndarray:
        """Record probabilities as scored: through the calibration in force, if any (after :meth:`result`)."""
        return probs if self.calibration is None else self.calibration.apply(probs)

    def result(self) -> Tuple[Dict[str, float], np.ndarray]:
        """(metrics by name, the per-class thresholds they were computed at)."""
        if self._result is None:
            if not self.filled():
                return {name: float("nan") for name in METRICS + UNCALIBRATED_METRICS}, np.zeros(0)
            records, raw, targets, known = self.records()
            self.calibration = self.scoring.calibration
            if self.scoring.fit_calibration:
                self.calibration, *classes = fit_platt(targets, raw, known)
                self.uncalibrated_classes = tuple(classes)
            probs = self.calibrated(raw)
            thresholds = self.scoring.thresholds
            if thresholds is None:
                thresholds = (tune_thresholds(targets, probs, self.scoring.default_threshold) if known is None
                              else tune_thresholds_known(targets, probs, known, self.scoring.default_threshold))
            values = classification_metrics(targets, probs, thresholds, self.scoring.weights,
                                             self.scoring.sinus_index, challenge=self.scoring.weights is not None,
                                             known=known)
            values.update(ece=expected_calibration_error(targets, probs, known), brier=brier_score(targets, probs, known))
            if self.calibration is not None:
                values.update(ece_uncalibrated=expected_calibration_error(targets, raw, known),
                              brier_uncalibrated=brier_score(targets, raw, known))
            self._result = values, np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (probs.shape[1],))
        return self._result


class IdentificationMeter(SubsetMeter):
    """Identification over a held-out subset: ``EmbeddedSegments`` averaged per record, each probe
    matched to the gallery when read."""

    def forget(self) -> None:
        self._result: Optional[Tuple[float, float]] = None
        self._intervals: dict = {}

    def update(self, segments: EmbeddedSegments) -> None:
        self.add(segments)

    def intervals(self, records: int, resamples: int, seed: int) -> Optional[Intervals]:
        """Bootstrap intervals of top-1 and EER over the probe patients (gallery fixed), once the
        meter holds all ``records`` of the subset; None before."""
        if self.records_seen() != records or resamples <= 0:
            return None
        key = (records, resamples, seed)
        if key not in self._intervals:
            embeddings, probe, patients = record_embeddings(self.filled())
            self._intervals[key] = identification_intervals(embeddings, probe, patients, resamples, seed)
            logger.info(f"{self.parts[0].split or 'subset'}: 95% bootstrap intervals from {resamples} resamples of "
                        f"{len(set(patients[probe].tolist()))} probe patients (gallery fixed)")
        return self._intervals[key]

    def result(self) -> Tuple[float, float]:
        """(top-1 accuracy, EER)."""
        if self._result is None:
            parts = self.filled()
            self._result = identification_metrics(*record_embeddings(parts)) if parts else (float("nan"),) * 2
        return self._result


fairseq_meters.ClassificationMeter = ClassificationMeter
fairseq_meters.IdentificationMeter = IdentificationMeter


def log_classification(parts: List[ScoredSegments], scoring: Scoring) -> None:
    """Log one or more batches of scored segments; the metrics appear as derived values."""
    if not parts:
        return
    for part in parts:
        metrics.log_custom(ClassificationMeter, "_classification", part, scoring)
    names = METRICS if scoring.weights is not None else METRICS[1:]
    calibrated = scoring.calibration is not None or scoring.fit_calibration
    for name in names + (UNCALIBRATED_METRICS if calibrated else ()):
        metrics.log_derived(name, lambda m, name=name: round(m["_classification"].result()[0][name], 5))
    if scoring.resamples > 0:
        for name in names:
            if name in INTERVAL_METRICS:
                metrics.log_derived(f"{name}_ci95", lambda m, name=name: interval_text(m["_classification"].intervals(), name))


def log_identification(parts: List[EmbeddedSegments]) -> None:
    """Log one or more batches of held-out embeddings; top-1 accuracy and EER appear as derived values,
    and the EER as ``loss``: held-out patients have no class loss, so fairseq's default
    best_checkpoint_metric (loss, lower is better) and early stopping still track identification."""
    if not parts:
        return
    for part in parts:
        metrics.log_custom(IdentificationMeter, "_identification", part)
    metrics.log_derived("top1_accuracy", lambda m: round(m["_identification"].result()[0], 5))
    metrics.log_derived("eer", lambda m: round(m["_identification"].result()[1], 5))
    metrics.log_derived("loss", lambda m: round(m["_identification"].result()[1], 5))
