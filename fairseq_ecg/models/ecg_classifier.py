"""``ecg_wav2vec2_classifier``: an ``ecg_wav2vec2`` encoder, its global vector (time-average of the
context network's output) and one linear layer to a logit per class (docs/method.md, "Downstream tasks").

The number of classes comes from the task (``classes.tsv``) and is saved with the checkpoint, so
a checkpoint evaluated against a manifest with another class list fails at once, naming both.
"""

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from fairseq.models import register_model

from ..errors import EcgError
from ..metrics.calibration import EDGE, PlattCalibration
from .precision import full_precision
from .downstream import EcgEncoderConfig, EcgEncoderModel


@dataclass
class EcgClassifierConfig(EcgEncoderConfig):
    num_classes: Optional[int] = field(
        default=None,
        metadata={"help": "outputs of the linear head; filled in from the task's classes.tsv and saved with "
                  "the checkpoint"},
    )


@register_model("ecg_wav2vec2_classifier", dataclass=EcgClassifierConfig)
class EcgClassifierModel(EcgEncoderModel):
    cfg: EcgClassifierConfig

    def __init__(self, cfg: EcgClassifierConfig, encoder) -> None:
        super().__init__(cfg, encoder)
        if not cfg.num_classes or cfg.num_classes < 1:
            raise EcgError(f"model: the classifier needs at least one class, found num_classes={cfg.num_classes}")
        self.head = nn.Linear(encoder.cfg.encoder_embed_dim, cfg.num_classes)

    @classmethod
    def build_model(cls, cfg: EcgClassifierConfig, task=None) -> "EcgClassifierModel":
        declared = getattr(task, "num_classes", None)
        if cfg.num_classes and declared and cfg.num_classes != declared:
            where = getattr(getattr(task, "cfg", None), "data", "the task")
            raise EcgError(f"model: this classifier has {cfg.num_classes} outputs but {where}/classes.tsv lists "
                             f"{declared} classes; evaluate it on manifests with the class list it was trained on")
        if not cfg.num_classes:
            cfg.num_classes = declared
            if not cfg.num_classes:
                raise EcgError("model: num_classes is unknown; train with task ecg_classification (it reads "
                                 "classes.tsv) or set model.num_classes")
        return cls(cfg, cls.build_encoder(cfg))

    def forward(self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None, **kwargs) -> dict:
        """Args:
            source: [batch, leads, time]; padding_mask: [batch, time] (True = padding) or None.
        Returns:
            ``logits`` [batch, num_classes], before the sigmoid. The head computes in fp32 under
            bf16 autocast too (the logits feed the loss and metrics).
        """
        pooled = self.embed(source, padding_mask)
        with full_precision(pooled):
            return {"logits": self.head(pooled.float())}


class RecordProbabilities(nn.Module):
    """A record's class probabilities from its segments' as validation and predict give them:
    combined by ``aggregate`` (mean or max), then the calibration where a class is fitted
    (:class:`fairseq_ecg.metrics.calibration.PlattCalibration`), in float64. The torch form of
    the metrics' numpy path, for the graphs that need one: explanations (gradients) and export."""

    def __init__(self, aggregate: str, calibration: Optional[PlattCalibration], num_classes: int) -> None:
        super().__init__()
        self.aggregate = aggregate
        slopes, offsets = (calibration.slopes, calibration.offsets) if calibration else ((1.0,) * num_classes,
                                                                                        (0.0,) * num_classes)
        self.register_buffer("slopes", torch.tensor(slopes, dtype=torch.float64))
        self.register_buffer("offsets", torch.tensor(offsets, dtype=torch.float64))
        self.register_buffer("fitted", (self.slopes != 1.0) | (self.offsets != 0.0))

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        """Args:
            probs: [..., segments, classes], each segment's sigmoid.
        Returns:
            [..., classes] float64, the records' probabilities.
        """
        wide = probs.double()
        record = wide.amax(dim=-2) if self.aggregate == "max" else wide.mean(dim=-2)
        clipped = record.clamp(EDGE, 1 - EDGE)
        calibrated = torch.sigmoid(self.slopes * torch.log(clipped / (1 - clipped)) + self.offsets)
        return torch.where(self.fitted, calibrated, record)
