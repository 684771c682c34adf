"""``arcface``: additive angular margin softmax (ArcFace, Deng et al. 2019) for patient identification.

Training: the model gives cosines between normalised embeddings and one normalised weight vector
per training patient; the margin ``m`` is added to the angle of the true patient only (so it needs
the target, hence here and not in the model), and the scaled cosines go through cross-entropy.

Validation on held-out patients (samples that carry a ``probe`` flag, see ``ecg_identification``)
has no class loss: the patients are not classes of the head. Each batch logs its segment
embeddings instead; a meter gathers them over the whole subset, averages them per record and
reports ``top1_accuracy`` (the probe's most similar gallery record is the same patient) and
``eer`` (equal error rate of same- vs different-patient cosines over all probe x gallery pairs).
Because every value is computed from the whole subset when fairseq reads the meters, it is the
same number in ``fairseq-hydra-train`` (which reduces per batch) and ``fairseq-validate`` (which
reduces once), and never an average over batches.
"""

import logging
import math
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_curve

from fairseq import metrics, utils
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass
from fairseq.logging import meters as fairseq_meters
from fairseq.logging.meters import Meter

from ..errors import EcgError
from ..bootstrap import Intervals, identification_intervals

logger = logging.getLogger(__name__)


@dataclass
class ArcFaceConfig(FairseqDataclass):
    scale: float = field(
        default=192.0,
        metadata={"help": "s, the radius of the hypersphere the cosines are scaled to; 192, the value of "
                  "fairseq-signals' identification configs (the paper is silent)"},
    )
    margin: float = field(
        default=1.0,
        metadata={"help": "m, additive angular margin (radians) on the true patient; 1.0, fairseq-signals' "
                  "identification configs (ArcFace's own paper used 0.5 for face identities)"},
    )


def arcface_logits(cosine: torch.Tensor, target: torch.Tensor, scale: float, margin: float) -> torch.Tensor:
    """Scaled logits [batch, classes] with cos(theta + margin) in place of the target's cos(theta).

    ``cosine`` [batch, classes] in [-1, 1], ``target`` [batch] class indices. Where theta + m would
    pass pi, cos(theta + m) would grow again; there the logit continues linearly instead,
    cos(theta) - m sin(m), which keeps the penalty monotonic in theta (as in insightface).
    """
    if cosine.dim() != 2 or target.shape != cosine.shape[:1]:
        raise ValueError(f"expected cosine [batch, classes] and target [batch], found "
                         f"{tuple(cosine.shape)} and {tuple(target.shape)}")
    cosine = cosine.clamp(-1.0, 1.0)
    true_cos = cosine.gather(1, target.unsqueeze(1))
    sine = (1.0 - true_cos * true_cos).clamp(min=1e-12).sqrt()
    with_margin = true_cos * math.cos(margin) - sine * math.sin(margin)
    with_margin = torch.where(true_cos > math.cos(math.pi - margin), with_margin,
                              true_cos - margin * math.sin(margin))
    return cosine.scatter(1, target.unsqueeze(1), with_margin) * scale


class EmbeddedSegments(int):
    """What one validation batch logs: per segment its item ``id``, record (``row``), gallery/probe
    role, patient and embedding (arrays of equal length).

    fairseq-validate prints every logged value at its log interval, in any ``--log-format``; as an
    int (the segment count) this prints as a number, JSON included, instead of failing there.
    """

    def __new__(cls, ids: np.ndarray, rows: np.ndarray, probe: np.ndarray, patients: np.ndarray,
                embeddings: np.ndarray, split: str = "") -> "EmbeddedSegments":
        self = super().__new__(cls, len(rows))
        self.ids, self.rows, self.probe, self.patients, self.embeddings = ids, rows, probe, patients, embeddings
        self.split = split
        return self

    def __reduce__(self):  # pickled when fairseq gathers logs from several workers
        return EmbeddedSegments, (self.ids, self.rows, self.probe, self.patients, self.embeddings, self.split)

    def __len__(self) -> int:
        return len(self.rows)


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


def record_embeddings(segments: List[EmbeddedSegments]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per record: mean of its segment embeddings (normalised again), probe flag and patient."""
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


class IdentificationMeter(Meter):
    """Collects ``EmbeddedSegments`` over a validation subset; the metrics are computed (once per
    state) when read.

    fairseq also logs validation into its long-lived "valid" aggregator, which sees every pass
    and is saved in checkpoints: an item id that comes again means the subset is being read
    again, so the meter starts over and holds at most one pass; its saved state is empty.
    """

    def __init__(self) -> None:
        super().__init__()
        self.reset()

    def reset(self) -> None:
        self.parts: List[EmbeddedSegments] = []
        self.seen: set = set()
        self._result: Optional[Tuple[float, float]] = None
        self._intervals: dict = {}

    def update(self, segments: EmbeddedSegments) -> None:
        ids = set(segments.ids.tolist())
        if not self.seen.isdisjoint(ids):
            self.reset()
        self.seen |= ids
        self.parts.append(segments)
        self._result, self._intervals = None, {}

    def intervals(self, records: int, resamples: int, seed: int) -> Optional[Intervals]:
        """Bootstrap intervals of top-1 and EER over the probe patients (gallery fixed), once the
        meter holds all ``records`` of the subset; None before."""
        if len({int(r) for p in self.parts for r in p.rows}) != records or resamples <= 0:
            return None
        key = (records, resamples, seed)
        if key not in self._intervals:
            embeddings, probe, patients = record_embeddings([p for p in self.parts if len(p)])
            self._intervals[key] = identification_intervals(embeddings, probe, patients, resamples, seed)
            logger.info(f"{self.parts[0].split or 'subset'}: 95% bootstrap intervals from {resamples} resamples of "
                        f"{len(set(patients[probe].tolist()))} probe patients (gallery fixed)")
        return self._intervals[key]

    def result(self) -> Tuple[float, float]:
        if self._result is None:
            parts = [p for p in self.parts if len(p)]
            self._result = identification_metrics(*record_embeddings(parts)) if parts else (float("nan"),) * 2
        return self._result

    @property
    def smoothed_value(self) -> float:
        return float(sum(len(p) for p in self.parts))


# Resuming a checkpoint saved mid-epoch rebuilds saved meters by class name from this module.
fairseq_meters.IdentificationMeter = IdentificationMeter


@register_criterion("arcface", dataclass=ArcFaceConfig)
class ArcFaceCriterion(FairseqCriterion):
    def __init__(self, task, scale: float = 192.0, margin: float = 1.0) -> None:
        super().__init__(task)
        if scale <= 0 or not 0 <= margin < math.pi / 2:
            raise EcgError(f"criterion: need scale > 0 and 0 <= margin < pi/2, found scale={scale}, margin={margin}")
        self.scale, self.margin = scale, margin

    def forward(self, model, sample, reduce: bool = True):
        net_output = model(**sample["net_input"])
        if "probe" in sample:
            return self._gallery_probe(net_output, sample)
        cosine, target = net_output["cosine"].float(), sample["target"].long().view(-1)
        logits = arcface_logits(cosine, target, self.scale, self.margin)
        loss = F.cross_entropy(logits, target, reduction="sum" if reduce else "none")
        count = target.numel()
        logging_output = {
            "loss": loss.detach().sum().item(), "ntokens": count, "nsentences": count, "sample_size": count,
            "correct": int((cosine.argmax(dim=1) == target).sum()), "count": count,
        }
        return loss, count, logging_output

    def _gallery_probe(self, net_output: dict, sample: dict):
        embedding = net_output["embedding"]
        count = embedding.shape[0]
        segments = EmbeddedSegments(
            ids=sample["id"].cpu().numpy(), rows=sample["row"].cpu().numpy(), probe=sample["probe"].cpu().numpy(),
            patients=sample["target"].view(-1).cpu().numpy(), embeddings=embedding.detach().float().cpu().numpy(),
            split=str(sample.get("split", "")),
        )
        logging_output = {"ntokens": count, "nsentences": count, "sample_size": count, "identification": segments}
        return embedding.new_zeros(()), count, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        def total(key: str) -> float:
            return utils.item(sum(log.get(key, 0) for log in logging_outputs))

        sample_size = total("sample_size")
        if any("loss" in log for log in logging_outputs):
            metrics.log_scalar("loss", total("loss") / max(sample_size, 1) / math.log(2), sample_size, round=3)
        if total("count") > 0:
            metrics.log_scalar("_correct", total("correct"))
            metrics.log_scalar("_count", total("count"))
            metrics.log_derived("accuracy", lambda m: round(m["_correct"].sum / max(m["_count"].sum, 1), 5))
        parts = [log["identification"] for log in logging_outputs if "identification" in log]
        if parts:
            for part in parts:
                metrics.log_custom(IdentificationMeter, "_identification", part)
            metrics.log_derived("top1_accuracy", lambda m: round(m["_identification"].result()[0], 5))
            metrics.log_derived("eer", lambda m: round(m["_identification"].result()[1], 5))
            # No class loss exists for held-out patients; "loss" is the EER there, so fairseq's default
            # best_checkpoint_metric (loss, lower is better) and early stopping still track identification.
            metrics.log_derived("loss", lambda m: round(m["_identification"].result()[1], 5))

    def logging_outputs_can_be_summed(self) -> bool:
        # Training logs are sums (fast multi-worker reduction, CPU included); validation logs carry
        # embeddings, which fairseq must gather as lists (raise common.all_gather_list_size).
        return self.training
