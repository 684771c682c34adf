"""``ecg_pretraining``: segments (or CMSC segment pairs) of unlabeled records for self-supervised
pretraining of ``ecg_wav2vec2``."""

from dataclasses import dataclass, field

import numpy as np

from fairseq.dataclass import ChoiceEnum
from fairseq.tasks import register_task

from ..data import EcgSegmentDataset
from .base import EcgTask, EcgTaskConfig

CMSC_POSITIVES = ChoiceEnum(["record", "patient"])


@dataclass
class EcgPretrainingConfig(EcgTaskConfig):
    cmsc: bool = field(
        default=False,
        metadata={"help": "yield pairs of adjacent, non-overlapping segments of the same record (for CMSC)"},
    )
    cmsc_positive: CMSC_POSITIVES = field(
        default="record",
        metadata={"help": "what makes two segments a CMSC positive pair: the same record, or the same "
                  "patient where the manifest knows patients"},
    )


@register_task("ecg_pretraining", dataclass=EcgPretrainingConfig)
class EcgPretrainingTask(EcgTask):
    cfg: EcgPretrainingConfig
    task_name = "ecg_pretraining"

    def load_dataset(self, split: str, combine: bool = False, epoch: int = 1, **kwargs) -> None:
        manifest = self.read_split(split)
        groups = None
        if self.cfg.cmsc_positive == "patient":
            # A record without a patient id is its own patient.
            keys = [row.patient or f"record:{i}" for i, row in enumerate(manifest.rows)]
            groups = np.unique(keys, return_inverse=True)[1]
        self.datasets[split] = EcgSegmentDataset(
            manifest,
            segment_samples=self.segment_samples,
            cut="pairs" if self.cfg.cmsc else "crop",
            leads=self.cfg.leads,
            normalize=self.cfg.normalize,
            groups=groups,
            shuffle=split.startswith("train"),
            seed=self.cfg.seed,
        )
