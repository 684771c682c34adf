"""``wav2vec2_cmsc``: the local wav2vec 2.0 loss plus the global CMSC loss, one criterion for every
pretraining variant (W2V: ``cmsc_weight=0``; CMSC: ``w2v_weight=0``; W2V+CMSC: both).

The wav2vec 2.0 part is fairseq's own ``Wav2vecCriterion``; this module adds the CMSC term, a
symmetric InfoNCE over the normalised global vectors of the two segments of each pair, with the
negatives gathered from every worker.
"""

import math
from dataclasses import dataclass, field
from typing import List, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F

from fairseq import metrics, utils
from fairseq.criterions import register_criterion
from fairseq.criterions.wav2vec_criterion import Wav2vecCriterion, Wav2VecCriterionConfig

from ..errors import EcgError

# Logged per forward and averaged over forwards (not summed like losses).
AVERAGED_KEYS = ("prob_perplexity", "code_perplexity", "temp")


@dataclass
class Wav2Vec2CmscConfig(Wav2VecCriterionConfig):
    infonce: bool = field(default=True, metadata={"help": "wav2vec 2.0 contrastive (InfoNCE) loss"})
    log_keys: List[str] = field(
        default_factory=lambda: list(AVERAGED_KEYS), metadata={"help": "model outputs to log"}
    )
    w2v_weight: float = field(default=1.0, metadata={"help": "weight of the local wav2vec 2.0 loss (0 = off)"})
    cmsc_weight: float = field(default=0.0, metadata={"help": "weight of the global CMSC loss (0 = off)"})
    cmsc_temperature: float = field(default=0.1, metadata={"help": "temperature of the CMSC InfoNCE"})


class _GatherWithGradient(torch.autograd.Function):
    """all_gather whose backward returns each worker the summed gradient of its own rows
    (all_reduce, which every backend, gloo included, supports)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        world = dist.get_world_size()
        ctx.rank, ctx.rows = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_from_workers(x: torch.Tensor, groups: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rows of ``x`` (differentiably) and their group ids from every worker; a worker with
    fewer rows pads, and the padding is dropped again."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, groups
    world = dist.get_world_size()
    counts = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world)]
    dist.all_gather(counts, torch.tensor([x.shape[0]], dtype=torch.long, device=x.device))
    counts = [int(c.item()) for c in counts]
    rows = max(counts)
    padded = F.pad(x, (0, 0, 0, rows - x.shape[0]))
    padded_groups = F.pad(groups, (0, rows - groups.shape[0]), value=-1)
    gathered = _GatherWithGradient.apply(padded)
    group_parts = [torch.empty_like(padded_groups) for _ in range(world)]
    dist.all_gather(group_parts, padded_groups.contiguous())
    keep = torch.cat([torch.arange(rows, device=x.device) < c for c in counts])
    return gathered[keep], torch.cat(group_parts)[keep]


def cmsc_loss(first: torch.Tensor, second: torch.Tensor, groups: torch.Tensor, temperature: float) -> Tuple[torch.Tensor, int, int]:
    """Symmetric InfoNCE between the global vectors of the first and second segments of each pair.

    ``first``/``second`` [N, D] (pair i = row i of each), ``groups`` [N] record or patient ids:
    every segment of the same group is a positive, all others are negatives. The candidates of
    each direction are the other halves of every worker's pairs. Returns the loss averaged over the
    N local pairs and over the two directions, (L_12 + L_21) / 2, as the paper and the reference
    (fairseq-signals' ``cmsc`` criterion) define it; the number of correct top-1 matches over the
    2N local anchors; and 2N.

    Per direction and anchor, the loss is the mean of -log softmax over the anchor's positives
    (CLOCS), then the mean over anchors. With record positives each anchor has exactly one positive
    (its pair's other half: a batch holds one window per record), so this is the plain
    cross-entropy of the similarity matrix. With patient positives the reference takes one flat
    mean over all (anchor, positive) entries, which weights a patient with many records in the
    batch more; the per-anchor mean weights every anchor once (the two agree whenever every anchor
    has the same number of positives).
    """
    first, second = F.normalize(first.float(), dim=-1), F.normalize(second.float(), dim=-1)
    all_first, all_groups = gather_from_workers(first, groups)
    all_second, _ = gather_from_workers(second, groups)
    positives = groups.unsqueeze(1) == all_groups.unsqueeze(0)  # [N, M]
    per_anchor = positives.sum(dim=1).clamp(min=1)
    total, correct = first.new_zeros(()), 0
    for anchors, candidates in ((first, all_second), (second, all_first)):
        logits = anchors @ candidates.t() / temperature
        log_prob = logits.log_softmax(dim=-1)
        total = total - (log_prob.masked_fill(~positives, 0.0).sum(dim=-1) / per_anchor).mean()
        correct += int(positives.gather(1, logits.argmax(dim=-1, keepdim=True)).sum())
    return total / 2, correct, 2 * first.shape[0]


class _KeepOutput:
    """Calls the model like the parent criterion does and keeps the output, so that fairseq's
    wav2vec 2.0 loss is reused as it is and CMSC reads the same forward pass."""

    def __init__(self, model) -> None:
        self.model, self.output = model, None

    def __call__(self, **net_input):
        self.output = self.model(**net_input)
        return self.output

    def __getattr__(self, name):
        return getattr(self.model, name)


@register_criterion("wav2vec2_cmsc", dataclass=Wav2Vec2CmscConfig)
class Wav2Vec2CmscCriterion(Wav2vecCriterion):
    def __init__(self, task, infonce=True, loss_weights=None, log_keys=None, w2v_weight=1.0,
                 cmsc_weight=0.0, cmsc_temperature=0.1):
        super().__init__(task, infonce, loss_weights, log_keys)
        if w2v_weight <= 0 and cmsc_weight <= 0:
            raise EcgError("criterion: w2v_weight and cmsc_weight are both 0; set at least one above 0")
        self.w2v_weight, self.cmsc_weight, self.cmsc_temperature = w2v_weight, cmsc_weight, cmsc_temperature

    def forward(self, model, sample, reduce=True):
        """Args:
            model: an ``ecg_wav2vec2``; sample: a batch of ``cut="pairs"`` segments (rows 2i and
                2i+1 the two halves of one window) with ``net_input`` and ``group`` (the patient).
        Returns:
            (loss, ``sample_size``, logging output with ``loss_w2v`` and ``loss_cmsc``), the loss such
            that fairseq's division by ``sample_size`` gives w2v_weight x wav2vec 2.0's loss +
            cmsc_weight x the CMSC loss per update.
        """
        if self.w2v_weight > 0:
            keeper = _KeepOutput(model)
            loss, sample_size, logging_output = super().forward(keeper, sample, reduce)
            net_output = keeper.output
            logging_output["loss_w2v"] = loss.item()
            loss = loss * self.w2v_weight
        else:  # CMSC alone needs neither masking nor the quantiser
            net_output = model(**sample["net_input"], mask=False, features_only=True)
            sample_size = sample["id"].numel()
            loss = net_output["global"].new_zeros(())
            logging_output = {"ntokens": sample_size, "nsentences": sample_size, "sample_size": sample_size}
        logging_output["nforwards"] = 1
        if self.cmsc_weight > 0:
            if not sample.get("pairs"):
                raise EcgError("the CMSC loss needs segment pairs: set task.pair_windows=true (the default)")
            global_repr, groups = net_output["global"], sample["group"][0::2]
            mean, correct, anchors = cmsc_loss(global_repr[0::2], global_repr[1::2], groups, self.cmsc_temperature)
            # Scaled by the local loss's sample size like the reference, so that fairseq's division by
            # the sample size leaves L = w2v_weight * L_local + cmsc_weight * L_CMSC per update.
            loss = loss + self.cmsc_weight * mean * sample_size
            logging_output.update(loss_cmsc=mean.item() * sample_size, cmsc_correct=correct, cmsc_count=anchors)
        logging_output["loss"] = loss.item()
        return loss, sample_size, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        builtin = ("loss", "ntokens", "nsentences", "sample_size", "correct", "count")
        Wav2vecCriterion.reduce_metrics([{k: log[k] for k in builtin if k in log} for log in logging_outputs])

        def total(key):
            return utils.item(sum(log.get(key, 0) for log in logging_outputs))

        sample_size, forwards = total("sample_size") or 1, total("nforwards") or 1
        for key in ("loss_w2v", "loss_cmsc"):
            if any(key in log for log in logging_outputs):
                metrics.log_scalar(key, total(key) / sample_size / math.log(2), sample_size, round=3)
        for key in AVERAGED_KEYS:
            if any(key in log for log in logging_outputs):
                metrics.log_scalar(key, total(key) / forwards, round=3)
        if total("cmsc_count") > 0:
            metrics.log_scalar("_cmsc_correct", total("cmsc_correct"))
            metrics.log_scalar("_cmsc_count", total("cmsc_count"))
            metrics.log_derived(
                "cmsc_accuracy",
                lambda meters: round(meters["_cmsc_correct"].sum / meters["_cmsc_count"].sum, 5)
                if meters["_cmsc_count"].sum > 0 else float("nan"),
            )

    def logging_outputs_can_be_summed(self) -> bool:
        # Every logged value is a sum (averages are divided by "nforwards"), so fairseq may sum
        # logs across workers without a CUDA gather, which also makes CPU multi-process work.
        return True
