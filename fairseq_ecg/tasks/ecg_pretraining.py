"""``ecg_pretraining``: windows of two adjacent segments of unlabeled records for self-supervised
pretraining of ``ecg_wav2vec2``.

Every variant reads the same items (``pair_windows``, the default): one random two-segment window
per record and epoch, both halves in the batch. CMSC takes the halves as its positive pair; the
wav2vec 2.0 loss takes both as ordinary segments. So the variants of one experiment see the same
records, segments and number of updates, and ``dataset.batch_size`` counts windows (a batch holds
twice as many segments). ``pair_windows=false`` crops one segment per record instead (wav2vec 2.0
alone, e.g. on records shorter than two segments).
"""

from dataclasses import dataclass, field

import numpy as np
import torch

from fairseq.dataclass import ChoiceEnum
from fairseq.tasks import register_task

from ..errors import EcgError
from ..data import EcgSegmentDataset
from .base import EcgTask, EcgTaskConfig

CMSC_POSITIVES = ChoiceEnum(["record", "patient"])


@dataclass
class EcgPretrainingConfig(EcgTaskConfig):
    cmsc: bool = field(
        default=False,
        metadata={"help": "the run uses the CMSC loss (criterion.cmsc_weight > 0); needs pair_windows"},
    )
    pair_windows: bool = field(
        default=True,
        metadata={"help": "one random window of two adjacent, non-overlapping segments per record and epoch, both "
                  "halves as items (every variant, so that all see the same data); false: one random segment per "
                  "record (wav2vec 2.0 only)"},
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

    def __init__(self, cfg: EcgPretrainingConfig) -> None:
        super().__init__(cfg)
        if cfg.cmsc and not cfg.pair_windows:
            raise EcgError("task.cmsc=true needs task.pair_windows=true (CMSC contrasts the two halves of a window)")

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
            cut="pairs" if self.cfg.pair_windows else "crop",
            leads=self.cfg.leads,
            normalize=self.normalize_mode,
            groups=groups,
            shuffle=split.startswith("train"),
            seed=self.cfg.seed,
        )

    def valid_step(self, sample, model, criterion):
        """As fairseq's, with the random draws of validation (time masks, wav2vec 2.0 distractors)
        taken from a generator keyed by the seed and the batch's items: every validation of a run
        sees the same masks, and training's random stream is not moved by validating (fairseq's
        own validation draws them from the training stream, or from OS entropy)."""
        key = np.random.SeedSequence([int(self.cfg.seed), *sample["id"].tolist()]).generate_state(1)[0]
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(key))
            return super().valid_step(sample, model, criterion)
