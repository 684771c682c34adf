"""``ecg_identification``: recognise training patients, evaluate on held-out ones (docs/method.md).

Splits (``DIR/identify/`` from fairseq-ecg-manifest):

* ``train`` (or any ``S.tsv``): random 5 s crops; the target is the patient's class, its index in
  the sorted patient ids of ``train.tsv``.
* ``S`` where ``S_gallery.tsv`` and ``S_probe.tsv`` exist (``valid``, ``test``): held-out
  patients (``valid`` selects the checkpoint, ``test``, of other patients, is reported), each record cut into all its consecutive segments; every segment carries its
  record, its role (gallery or probe) and its patient. One subset holds both roles, so
  fairseq's own validation loop (batching, sharding, logging) embeds everything in one pass and
  the ``arcface`` criterion matches probes against the gallery over the whole subset. Hence
  ``--valid-subset test`` (or ``valid``), not ``test_probe``.
"""

import dataclasses
import logging
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch

from fairseq import metrics
from fairseq.tasks import register_task

from ..metrics.bootstrap import interval_text
from ..metrics.identification import record_embeddings
from ..data import EcgSegmentDataset
from ..manifest import Manifest, ManifestError, read_manifest
from ..prepared import GALLERY, PROBE, held_out, identify_test_missing
from ..metrics.record_results import IdentificationResults, results_file, row_names, write_identification_results
from .base import EcgTask, EcgTaskConfig

logger = logging.getLogger(__name__)



class GalleryProbeDataset(EcgSegmentDataset):
    """Consecutive segments of gallery and probe records; batches add ``probe`` [segments] (bool)."""

    def __init__(self, manifest: Manifest, probe: np.ndarray, split: str = "", **kwargs) -> None:
        super().__init__(manifest, cut="consecutive", shuffle=False, **kwargs)
        self.probe = np.asarray(probe, dtype=bool)
        self.split = split

    def __getitem__(self, index: int) -> dict:
        item = super().__getitem__(index)
        item["probe"] = bool(self.probe[item["row"]])
        return item

    def collater(self, samples: List[dict]) -> dict:
        batch = super().collater(samples)
        if batch:
            batch["probe"] = torch.tensor([s["probe"] for s in samples for _ in s["segments"]], dtype=torch.bool)
            batch["split"] = self.split
        return batch


def _joined(gallery: Manifest, probe: Manifest) -> Manifest:
    """One manifest of the gallery rows then the probe rows, paths made absolute (roots may differ)."""
    rows = [dataclasses.replace(row, relative_path=str(m.root / row.relative_path))
            for m in (gallery, probe) for row in m.rows]
    return Manifest(root=Path("/"), rows=rows, path=probe.path)


@register_task("ecg_identification", dataclass=EcgTaskConfig)
class EcgIdentificationTask(EcgTask):
    task_name = "ecg_identification"

    def __init__(self, cfg: EcgTaskConfig) -> None:
        super().__init__(cfg)
        self._patients: Optional[List[str]] = None

    @property
    def patients(self) -> List[str]:
        """Training patients in class order (sorted ids of ``train.tsv``); read once, when needed."""
        if self._patients is None:
            manifest = read_manifest(self.data_file("train.tsv"))
            if not manifest.rows:
                raise ManifestError(
                    f"{manifest.path}: no records; identification trains on patients with >= 2 records and "
                    "the prepared archive has none (PhysioNet/CinC 2021 has no patient ids, so each record is "
                    "its own patient); prepare PTB-XL (--layout ptbxl), or give fairseq-ecg-manifest patient ids "
                    "with --labels CSV (columns record,patient)")
            missing = [n for n, row in enumerate(manifest.rows, start=2) if not row.patient]
            if missing:
                raise ManifestError(f"{manifest.path}:{missing[0]}: no patient id; identification needs one per row")
            self._patients = sorted({row.patient for row in manifest.rows})
        return self._patients

    @property
    def num_patients(self) -> int:
        return len(self.patients)

    def _pair_exists(self, split: str) -> bool:
        return all((Path(self.cfg.data) / f"{held_out(split, role)}.tsv").is_file() for role in (GALLERY, PROBE))

    def load_dataset(self, split: str, combine: bool = False, epoch: int = 1, **kwargs) -> None:
        common = dict(segment_samples=self.segment_samples, leads=self.cfg.leads, normalize=self.normalize_mode,
                      seed=self.cfg.seed)
        if self._pair_exists(split):
            gallery, probe = (self.read_split(held_out(split, role)) for role in (GALLERY, PROBE))
            manifest = _joined(gallery, probe)
            ids = {patient: i for i, patient in enumerate(sorted({row.patient for row in manifest.rows}))}
            targets = np.array([ids[row.patient] for row in manifest.rows], dtype=np.int64)
            roles = np.arange(len(manifest)) >= len(gallery)
            logger.info(f"{split}: {len(gallery)} gallery and {len(probe)} probe records of {len(ids)} patients")
            if len(ids) < 2 and not split.startswith("test"):
                logger.warning(
                    f"{split}: the gallery and probe hold one patient, so there is no impostor pair: eer is nan "
                    "each epoch and cannot rank checkpoints (checkpoint_best.pt is then not the best); prepare "
                    "again with a larger --valid-percent (fairseq-ecg-manifest), or train without validation: "
                    "dataset.disable_validation=true")
            self.datasets[split] = GalleryProbeDataset(manifest, roles, split, targets=targets, **common)
            return
        if split == "test" and self._pair_exists("valid") and not (Path(self.cfg.data) / "test.tsv").is_file():
            raise ManifestError(identify_test_missing(self.cfg.data))  # a folder prepared before the test split
        index = {patient: i for i, patient in enumerate(self.patients)}  # first: says why train.tsv is empty
        manifest = self.read_split(split)
        unknown = [(n, row.patient) for n, row in enumerate(manifest.rows, start=2) if row.patient not in index]
        if unknown:
            hint = ""
            base = split.rsplit("_", 1)[0]
            if split.endswith((f"_{GALLERY}", f"_{PROBE}")) and self._pair_exists(base):
                hint = f"; to evaluate gallery against probe give the subset name without the suffix ({base})"
            raise ManifestError(f"{manifest.path}:{unknown[0][0]}: patient {unknown[0][1]!r} is not a training "
                                f"patient, so it has no class{hint}")
        targets = np.array([index[row.patient] for row in manifest.rows], dtype=np.int64)
        self.datasets[split] = EcgSegmentDataset(
            manifest, cut="crop", targets=targets, shuffle=split.startswith("train"), **common
        )

    def reduce_metrics(self, logging_outputs, criterion) -> None:
        """The criterion's metrics, then, for a reported subset, their bootstrap intervals (once the
        subset is whole) and, in fairseq-validate, the per-record results."""
        super().reduce_metrics(logging_outputs, criterion)
        parts = [log["identification"] for log in logging_outputs if "identification" in log]
        if not parts or parts[0].split not in self.datasets:
            return
        split = parts[0].split
        records = len(self.datasets[split].manifest)
        if self.bootstraps(split):
            resamples, seed = int(self.cfg.bootstrap_resamples), int(self.cfg.bootstrap_seed)
            for name in ("top1_accuracy", "eer"):
                metrics.log_derived(f"{name}_ci95", lambda m, name=name: interval_text(
                    m["_identification"].intervals(records, resamples, seed), name))
        if self.cfg.per_record_results and self.whole_subset(split, np.concatenate([p.rows for p in parts])):
            embeddings, probe, _ = record_embeddings([p for p in parts if len(p)])
            rows = np.unique(np.concatenate([p.rows for p in parts]))
            names, patients = row_names(rows, self.datasets[split].manifest)
            folder = Path(self.cfg.per_record_results)
            folder.mkdir(parents=True, exist_ok=True)
            write_identification_results(folder, split, IdentificationResults(names, patients, probe, embeddings))
            logger.info(f"{split}: per-record results of {len(names)} records -> {results_file(folder, split)}")

    def get_batch_iterator(self, dataset, *args, **kwargs):
        """As fairseq's, except that a gallery/probe subset keeps its last, smaller batch: fairseq
        drops a last batch that is not a multiple of ``required_batch_size_multiple`` (default 8,
        and fairseq-validate's too), and every record counts for top-1 and EER."""
        if isinstance(dataset, GalleryProbeDataset):
            kwargs["required_batch_size_multiple"] = 1
        return super().get_batch_iterator(dataset, *args, **kwargs)
