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

import torch
import torch.nn.functional as F

from fairseq import metrics, utils
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass

from ..errors import EcgError
from ..metrics.meters import EmbeddedSegments, log_identification

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


@register_criterion("arcface", dataclass=ArcFaceConfig)
class ArcFaceCriterion(FairseqCriterion):
    def __init__(self, task, scale: float = 192.0, margin: float = 1.0) -> None:
        super().__init__(task)
        if scale <= 0 or not 0 <= margin < math.pi / 2:
            raise EcgError(f"criterion: need scale > 0 and 0 <= margin < pi/2, found scale={scale}, margin={margin}")
        self.scale, self.margin = scale, margin

    def forward(self, model, sample, reduce: bool = True):
        """Args:
            model: an identifier; sample: a batch of segments with ``target`` [segments] (the patient),
                and ``probe`` [segments] on held-out gallery/probe subsets.
        Returns:
            (ArcFace cross-entropy summed over segments, or 0 on held-out patients, ``sample_size`` =
            segments, logging output; on held-out patients it carries the ``EmbeddedSegments``).
        """
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
        log_identification([log["identification"] for log in logging_outputs if "identification" in log])

    def logging_outputs_can_be_summed(self) -> bool:
        # Training logs are sums (fast multi-worker reduction, CPU included); validation logs carry
        # embeddings, which fairseq must gather as lists (raise common.all_gather_list_size).
        return self.training
