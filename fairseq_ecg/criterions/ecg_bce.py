"""``ecg_bce``: multi-label binary cross-entropy on the classifier's logits.

In evaluation it also logs each batch's segment probabilities (``ScoredSegments``), from which the
subset-level metrics (Challenge 2021 metric, macro AUROC, AUPRC, F1, exact-match accuracy) are
computed by :mod:`fairseq_ecg.metrics.meters`. They need the task's settings (label set and reward
table, per-record aggregation, thresholds), which a criterion's static ``reduce_metrics`` cannot
see; ``ecg_classification`` calls ``log_classification`` from its own ``reduce_metrics`` with them.

Unknown labels (target -1: a source that does not record that class, ``?CODE`` in the label
file) are not negatives: they carry no loss (nor count in ``nlabels``) and every metric leaves
them out (:func:`fairseq_ecg.metrics.classification_metrics`).
"""

import logging
from dataclasses import dataclass, field
from typing import List, Optional

import torch
import torch.nn.functional as F

from fairseq import metrics, utils
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass

from ..errors import EcgError
from ..metrics.meters import ScoredSegments

logger = logging.getLogger(__name__)


@dataclass
class EcgBceConfig(FairseqDataclass):
    pos_weight: Optional[List[float]] = field(
        default=None,
        metadata={"help": "weight of the positive term per class (one value per line of classes.tsv), "
                  "e.g. negatives/positives to counter rare classes; default: 1 for every class"},
    )


@register_criterion("ecg_bce", dataclass=EcgBceConfig)
class EcgBceCriterion(FairseqCriterion):
    def __init__(self, task, pos_weight: Optional[List[float]] = None) -> None:
        super().__init__(task)
        classes = getattr(task, "num_classes", None)
        if pos_weight is not None and classes is not None and len(pos_weight) != classes:
            raise EcgError(f"criterion: pos_weight has {len(pos_weight)} values, expected one per class ({classes})")
        self.pos_weight = None if pos_weight is None else torch.tensor(pos_weight, dtype=torch.float32)

    def forward(self, model, sample, reduce: bool = True):
        """Args:
            model: a classifier; sample: a batch of ``EcgSegmentDataset`` (``net_input``, ``target``
                [segments, classes] with -1 for unknown labels, ``id``, ``row``).
        Returns:
            (loss summed over segments and known labels, ``sample_size`` = segments, logging output;
            in evaluation it carries the batch's ``ScoredSegments``).
        """
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
