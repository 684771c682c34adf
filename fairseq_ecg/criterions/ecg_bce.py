"""``ecg_bce``: multi-label binary cross-entropy on the classifier's logits, and the subset-level
classification metrics (Challenge 2021 metric, macro AUROC, AUPRC, F1, exact-match accuracy).

Why the metrics are not averaged per batch: they are not decomposable (AUROC, the Challenge metric)
and they are defined per record, while a record's segments may fall into different batches. In
evaluation the criterion therefore logs each batch's segment probabilities (``ScoredSegments``);
``log_classification`` feeds them to a ``ClassificationMeter``, which gathers the whole subset and
computes the metrics once per state, when fairseq reads the derived values. fairseq-validate calls
reduce_metrics once with every batch's log, the trainer once per batch into an aggregator that
spans the subset: both read the same meter at the end, so both give the whole-subset numbers.

The metrics need the task's settings (label set and reward table, per-record aggregation,
thresholds), which a criterion's static ``reduce_metrics`` cannot see; ``ecg_classification``
calls ``log_classification`` from its own ``reduce_metrics`` with them.

Unknown labels (target -1: a source that does not record that class, ``?CODE`` in the label
file) are not negatives: they carry no loss (nor count in ``nlabels``) and every metric leaves
them out (:func:`fairseq_ecg.metrics.classification_metrics`).
"""

import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from fairseq import metrics, utils
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass
from fairseq.logging import meters as fairseq_meters
from fairseq.logging.meters import Meter

from ..errors import EcgError
from ..bootstrap import Intervals, classification_intervals, interval_text
from ..metrics import aggregate_by_record, classification_metrics, tune_thresholds, tune_thresholds_known

METRICS = ("challenge_metric", "auroc", "auprc", "f1", "accuracy")
INTERVAL_METRICS = ("challenge_metric", "auroc", "f1", "accuracy")  # with a bootstrap interval
logger = logging.getLogger(__name__)


@dataclass
class EcgBceConfig(FairseqDataclass):
    pos_weight: Optional[List[float]] = field(
        default=None,
        metadata={"help": "weight of the positive term per class (one value per line of classes.tsv), "
                  "e.g. negatives/positives to counter rare classes; default: 1 for every class"},
    )


@dataclass
class ScoredSegments:
    """What one evaluation batch logs: per segment its item ``id``, record (``row``), multi-hot
    ``targets`` and ``probs``, and the subset (``split``). Printed as a count, so fairseq's
    progress lines stay short."""

    ids: np.ndarray
    rows: np.ndarray
    targets: np.ndarray
    probs: np.ndarray
    split: str = ""
    known: Optional[np.ndarray] = None  # False where the label is unknown (not a negative)

    def __len__(self) -> int:
        return len(self.rows)

    def __str__(self) -> str:
        return f"{len(self)} segments"


@dataclass(frozen=True, eq=False)
class Scoring:
    """How a subset is scored: per-record aggregation, reward table (None: no Challenge metric) and
    thresholds (None: tune them on this subset, per class, and report the metrics at them)."""

    aggregate: str = "mean"
    weights: Optional[np.ndarray] = None
    sinus_index: Optional[int] = None
    thresholds: Optional[np.ndarray] = None
    default_threshold: float = 0.5
    # Bootstrap intervals (fairseq_ecg.bootstrap): 0 resamples for none; computed once the meter
    # holds all ``records`` of the subset, resampling ``patients`` (one per record row).
    resamples: int = 0
    seed: int = 0
    records: int = 0
    patients: Optional[np.ndarray] = None


class ClassificationMeter(Meter):
    """Collects ``ScoredSegments`` over a subset; aggregates per record and scores when read.

    fairseq also logs evaluation into its long-lived "valid" aggregator (saved in checkpoints):
    an item id that comes again means a new pass, so the meter starts over and holds at most one
    pass; its saved state is empty.
    """

    def __init__(self) -> None:
        super().__init__()
        self.scoring = Scoring()
        self.reset()

    def reset(self) -> None:
        self.parts: List[ScoredSegments] = []
        self.seen: set = set()
        self._result: Optional[Tuple[Dict[str, float], np.ndarray]] = None
        self._intervals: Optional[Intervals] = None

    def update(self, segments: ScoredSegments, scoring: Scoring) -> None:
        ids = set(segments.ids.tolist())
        if not self.seen.isdisjoint(ids):
            self.reset()
        self.seen |= ids
        self.parts.append(segments)
        self.scoring = scoring
        self._result = self._intervals = None

    def records(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray, Optional[np.ndarray]]:
        """Per record of the subset so far: (manifest rows, probabilities aggregated over its segments
        [records, classes], targets [records, classes], known labels or None)."""
        parts = [p for p in self.parts if len(p)]
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
        return self.scoring.records > 0 and len({int(r) for p in self.parts for r in p.rows}) == self.scoring.records

    def intervals(self) -> Optional[Intervals]:
        """Bootstrap intervals of every metric (``scoring.resamples`` of the patients), once the
        whole subset is in; None before, or with 0 resamples."""
        if self._intervals is None and self.scoring.resamples > 0 and self.complete():
            records, probs, targets, known = self.records()
            _, thresholds = self.result()
            self._intervals = classification_intervals(
                targets, probs, thresholds, self.scoring.patients[records], self.scoring.resamples, self.scoring.seed,
                self.scoring.weights, self.scoring.sinus_index, known)
            patients = len(set(self.scoring.patients[records].tolist()))
            logger.info(f"{self.parts[0].split or 'subset'}: 95% bootstrap intervals from {self._intervals.resamples} "
                        f"resamples of {patients} patients (a record without a patient id counts as one); a class "
                        f"without positives or negatives in a resample was left out of that resample's macro AUROC "
                        f"{self._intervals.dropped} times")
        return self._intervals

    def result(self) -> Tuple[Dict[str, float], np.ndarray]:
        """(metrics by name, the per-class thresholds they were computed at)."""
        if self._result is None:
            parts = [p for p in self.parts if len(p)]
            if not parts:
                return {name: float("nan") for name in METRICS}, np.zeros(0)
            records, probs, targets, known = self.records()
            thresholds = self.scoring.thresholds
            if thresholds is None:
                thresholds = (tune_thresholds(targets, probs, self.scoring.default_threshold) if known is None
                              else tune_thresholds_known(targets, probs, known, self.scoring.default_threshold))
            values = classification_metrics(targets, probs, thresholds, self.scoring.weights,
                                             self.scoring.sinus_index, challenge=self.scoring.weights is not None,
                                             known=known)
            self._result = values, np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (probs.shape[1],))
        return self._result

    @property
    def smoothed_value(self) -> float:
        return float(sum(len(p) for p in self.parts))


# Resuming a checkpoint saved mid-epoch rebuilds saved meters by class name from this module.
fairseq_meters.ClassificationMeter = ClassificationMeter


def log_classification(parts: List[ScoredSegments], scoring: Scoring) -> None:
    """Log one or more batches of scored segments; the metrics appear as derived values."""
    if not parts:
        return
    for part in parts:
        metrics.log_custom(ClassificationMeter, "_classification", part, scoring)
    names = METRICS if scoring.weights is not None else METRICS[1:]
    for name in names:
        metrics.log_derived(name, lambda m, name=name: round(m["_classification"].result()[0][name], 5))
    if scoring.resamples > 0:
        for name in names:
            if name in INTERVAL_METRICS:
                metrics.log_derived(f"{name}_ci95", lambda m, name=name: interval_text(m["_classification"].intervals(), name))


@register_criterion("ecg_bce", dataclass=EcgBceConfig)
class EcgBceCriterion(FairseqCriterion):
    def __init__(self, task, pos_weight: Optional[List[float]] = None) -> None:
        super().__init__(task)
        classes = getattr(task, "num_classes", None)
        if pos_weight is not None and classes is not None and len(pos_weight) != classes:
            raise EcgError(f"criterion: pos_weight has {len(pos_weight)} values, expected one per class ({classes})")
        self.pos_weight = None if pos_weight is None else torch.tensor(pos_weight, dtype=torch.float32)

    def forward(self, model, sample, reduce: bool = True):
        """Loss summed over segments and classes; ``sample_size`` = segments."""
        logits = model(**sample["net_input"])["logits"].float()
        target = sample["target"].float()
        if logits.shape != target.shape:
            raise EcgError(f"logits {tuple(logits.shape)} and targets {tuple(target.shape)} differ: the model's "
                             "classes must be those of classes.tsv")
        pos_weight = None if self.pos_weight is None else self.pos_weight.to(logits.device)
        known = target >= 0  # unknown labels (-1, "?CODE" in the label file) are no negatives: left out
        loss = F.binary_cross_entropy_with_logits(logits, target.clamp(min=0), weight=known.float(),
                                                  pos_weight=pos_weight, reduction="sum" if reduce else "none")
        count = target.shape[0]
        logging_output = {"loss": loss.detach().sum().item(), "ntokens": count, "nsentences": count,
                          "sample_size": count, "nlabels": int(known.sum().item())}
        if not self.training:
            logging_output["scored"] = ScoredSegments(
                ids=sample["id"].cpu().numpy(), rows=sample["row"].cpu().numpy(),
                targets=target.cpu().numpy() > 0.5, probs=torch.sigmoid(logits).detach().cpu().numpy(),
                split=str(sample.get("split", "")), known=known.cpu().numpy(),
            )
        return loss, count, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        """The loss, in nats per label (mean binary cross-entropy)."""
        def total(key: str) -> float:
            return utils.item(sum(log.get(key, 0) for log in logging_outputs))

        labels = total("nlabels")
        if labels > 0:
            metrics.log_scalar("loss", total("loss") / labels, labels, round=4)

    def logging_outputs_can_be_summed(self) -> bool:
        # Training logs are sums (fast multi-worker reduction, CPU included); evaluation logs carry
        # probabilities, which fairseq must gather as lists (raise common.all_gather_list_size).
        return self.training
