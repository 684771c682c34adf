"""``ecg_wav2vec2_identifier``: an ``ecg_wav2vec2`` encoder with an embedding projection and an
ArcFace head over the training patients.

The model only measures angles: it returns the L2-normalised embedding (what held-out patients are
matched by) and its cosines to one normalised weight vector per training patient. The angular
margin needs the true patient, so the ``arcface`` criterion applies it (fairseq: losses live in
criterions).
"""

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from fairseq.models import register_model

from ..errors import EcgError
from .precision import full_precision
from .downstream import EcgEncoderConfig, EcgEncoderModel


@dataclass
class EcgIdentifierConfig(EcgEncoderConfig):
    embed_dim: int = field(default=256, metadata={"help": "dimension of the identification embedding"})
    num_patients: Optional[int] = field(
        default=None,
        metadata={"help": "classes of the ArcFace head (the training patients); filled in from the task "
                  "ecg_identification and saved with the checkpoint"},
    )


@register_model("ecg_wav2vec2_identifier", dataclass=EcgIdentifierConfig)
class EcgIdentifierModel(EcgEncoderModel):
    cfg: EcgIdentifierConfig

    def __init__(self, cfg: EcgIdentifierConfig, encoder) -> None:
        super().__init__(cfg, encoder)
        if not cfg.num_patients or cfg.num_patients < 2:
            raise EcgError(f"model: the ArcFace head needs at least 2 patients, found num_patients={cfg.num_patients}")
        self.projection = nn.Linear(encoder.cfg.encoder_embed_dim, cfg.embed_dim)
        self.patient_weights = nn.Parameter(torch.empty(cfg.num_patients, cfg.embed_dim))
        nn.init.xavier_uniform_(self.patient_weights)

    @classmethod
    def build_model(cls, cfg: EcgIdentifierConfig, task=None) -> "EcgIdentifierModel":
        if not cfg.num_patients:
            cfg.num_patients = getattr(task, "num_patients", None)
            if not cfg.num_patients:
                raise EcgError("model: num_patients is unknown; train with task ecg_identification "
                                 "(it counts the patients of train.tsv) or set model.num_patients")
        return cls(cfg, cls.build_encoder(cfg))

    def forward(self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None, **kwargs) -> dict:
        """Args:
            source: [batch, leads, time]; padding_mask: [batch, time] (True = padding) or None.
        Returns:
            ``embedding`` [batch, embed_dim] (unit length) and ``cosine`` [batch, num_patients]
            (to each training patient, before scale and margin). Both in fp32 under bf16 autocast
            too: bf16 cosines near 1 are 0.004 apart, 0.1 after ArcFace's scale.
        """
        pooled = self.embed(source, padding_mask)
        with full_precision(pooled):
            embedding = F.normalize(self.projection(pooled.float()), dim=-1)
            cosine = F.linear(embedding, F.normalize(self.patient_weights, dim=-1))
        return {"embedding": embedding, "cosine": cosine}
