"""What every ECG task shares: where the manifests are, the segment length, the lead subset and
normalisation. Not registered itself; the registered tasks subclass it."""

import logging
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import II, MISSING

from fairseq.dataclass import FairseqDataclass
from fairseq.tasks import FairseqTask

from ..leads import parse_leads
from ..manifest import Manifest, ManifestError, check_waveforms, read_manifest

logger = logging.getLogger(__name__)


@dataclass
class EcgTaskConfig(FairseqDataclass):
    data: str = field(default=MISSING, metadata={"help": "folder of manifests (SPLIT.tsv) written by fairseq-ecg-manifest"})
    sample_rate: int = field(default=500, metadata={"help": "sampling rate (Hz) the manifests were prepared at"})
    segment_seconds: float = field(default=5.0, metadata={"help": "length of one input segment, in seconds"})
    leads: str = field(
        default="12",
        metadata={"help": "leads the model sees: a preset (12, 6, 4, 3, 2, 1) or a list like [I,II,V2]; "
                  "the other leads are zeroed"},
    )
    normalize: bool = field(
        default=False, metadata={"help": "z-score each lead of each segment (records are already in mV)"}
    )
    seed: int = II("common.seed")
    check_files: bool = field(
        default=True, metadata={"help": "check every waveform file's header against its manifest row at load time"}
    )


class EcgTask(FairseqTask):
    cfg: EcgTaskConfig

    def __init__(self, cfg: EcgTaskConfig) -> None:
        super().__init__(cfg)
        parse_leads(cfg.leads)  # fail at start-up on an unknown lead name, not in a worker

    @classmethod
    def setup_task(cls, cfg: EcgTaskConfig, **kwargs) -> "EcgTask":
        return cls(cfg)

    @property
    def segment_samples(self) -> int:
        return int(round(self.cfg.segment_seconds * self.cfg.sample_rate))

    def read_split(self, split: str) -> Manifest:
        manifest = read_manifest(Path(self.cfg.data) / f"{split}.tsv")
        if not manifest.rows:
            raise ManifestError(f"{manifest.path}: no records; check the preparation's skipped.tsv")
        if self.cfg.check_files:
            check_waveforms(manifest)
        logger.info(f"{manifest.path}: {len(manifest)} records")
        return manifest

    def max_positions(self):
        return None

    @property
    def source_dictionary(self):
        return None

    @property
    def target_dictionary(self):
        return None
