"""Segments of prepared ECG records, as fairseq datasets.

One dataset serves every task: it cuts fixed-length segments out of the ``.npy`` waveforms of a
manifest (memory-mapped, so a 5 s crop reads 5 s), keeps only the requested leads (the others are
zeroed: a reduced-lead input is the 12-channel input with absent leads at zero), normalises each
lead as ``normalize`` says (:mod:`fairseq_ecg.normalization`), and collates ``[batch, leads, time]``
tensors with a padding mask.

Three ways to cut a record into items:
- ``crop``: one random segment per record and epoch (fine-tuning);
- ``pairs``: one random window of two adjacent, non-overlapping segments per record and epoch
  (pretraining, every variant: CMSC reads the two halves as a positive pair, wav2vec 2.0 takes both
  as items, so all variants see the same segments per update); records shorter than two segments
  give no item (counted in a warning). The collated batch interleaves the halves: rows 2i and
  2i+1 are the two halves of item i. One window per record means no two items of a batch come
  from the same record, so a record's own other pairs are never CMSC negatives or extra positives;
- ``consecutive``: every consecutive segment of the record (evaluation, aggregated per record).

Training items change every epoch: crops, pair windows and the batches they fall in are drawn
from ``(seed, epoch, ...)``, and the dataset tells fairseq that its epoch iterator cannot be reused
(``can_reuse_epoch_itr_across_epochs``). Otherwise fairseq builds the batches once and keeps its
data-loader workers alive with the first epoch's copy of the dataset, so ``set_epoch`` would never
reach them and every epoch would repeat the first one's crops. A run resumed mid-epoch rebuilds
the same batches from the same ``(seed, epoch)`` and skips the ones already done.
"""
from __future__ import annotations

import logging
from typing import Optional, Sequence

import numpy as np
import torch

from fairseq.data import FairseqDataset

from ..leads import LeadSpec, lead_mask
from ..manifest import Manifest, load_waveform
from ..normalization import RecordStatistics, normalize_mode, normalize_segment

logger = logging.getLogger(__name__)

CUT_MODES = ("crop", "pairs", "consecutive")


def consecutive_starts(length: int, segment_samples: int) -> list[int]:
    """Where evaluation cuts a record of ``length`` samples: every whole segment (a shorter tail is
    left out), or the one shorter record."""
    return [number * segment_samples for number in range(max(length // segment_samples, 1))]


def collate_segments(segments: Sequence[torch.Tensor]) -> dict:
    """Segments [leads, T_i] as a model's ``net_input``: ``source`` [batch, leads, max T_i] with
    the shorter ones zero-padded at the end, and ``padding_mask`` [batch, max T_i] (True = padding)
    only when some segment is padded."""
    longest = max(seg.shape[-1] for seg in segments)
    source = segments[0].new_zeros(len(segments), segments[0].shape[0], longest)
    padding_mask = torch.zeros(len(segments), longest, dtype=torch.bool)
    for i, seg in enumerate(segments):
        source[i, :, : seg.shape[-1]] = seg
        padding_mask[i, seg.shape[-1]:] = True
    net_input = {"source": source}
    if padding_mask.any():
        net_input["padding_mask"] = padding_mask
    return net_input


class EcgSegmentDataset(FairseqDataset):
    def __init__(
        self,
        manifest: Manifest,
        segment_samples: int,
        cut: str = "crop",
        leads: LeadSpec = None,
        normalize: str = "none",
        targets: Optional[Sequence] = None,
        groups: Optional[Sequence[int]] = None,
        shuffle: bool = True,
        seed: int = 1,
    ) -> None:
        super().__init__()
        if cut not in CUT_MODES:
            raise ValueError(f"cut must be one of {CUT_MODES}, found {cut!r}")
        self.manifest = manifest
        self.segment_samples = int(segment_samples)
        self.cut = cut
        self.keep_leads = torch.from_numpy(lead_mask(leads).astype(np.float32)).unsqueeze(-1)
        self.normalize = normalize_mode(normalize, allow_auto=False)  # none, segment or record
        self._record_statistics = RecordStatistics()
        self.targets = targets
        self.groups = np.asarray(groups if groups is not None else np.arange(len(manifest)), dtype=np.int64)
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 1
        self.items = self._make_items()

    def _make_items(self) -> np.ndarray:
        """(row, segment number) per item; rows too short for a pair are reported, not hidden."""
        lengths = np.array([row.num_samples for row in self.manifest.rows], dtype=np.int64)
        if self.cut == "crop":
            counts = np.ones_like(lengths)
        elif self.cut == "pairs":
            counts = (lengths >= 2 * self.segment_samples).astype(np.int64)
            short = int((counts == 0).sum())
            if short:
                logger.warning(
                    f"{self.manifest.path}: {short} record(s) shorter than two segments "
                    f"({2 * self.segment_samples} samples) give no CMSC pair and are not used"
                )
        else:
            counts = np.array([len(consecutive_starts(int(n), self.segment_samples)) for n in lengths], dtype=np.int64)
        rows = np.repeat(np.arange(len(lengths)), counts)
        numbers = np.concatenate([np.arange(c) for c in counts]) if len(counts) else np.zeros(0, np.int64)
        return np.stack([rows, numbers], axis=1).astype(np.int64) if len(rows) else np.zeros((0, 2), np.int64)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def can_reuse_epoch_itr_across_epochs(self) -> bool:
        # Items depend on the epoch: fairseq must rebuild the batches and its data-loader
        # workers (which hold a copy of this dataset) every epoch, see the module docstring.
        return False

    def __len__(self) -> int:
        return len(self.items)

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng((self.seed, self.epoch, index))

    def _starts(self, index: int) -> list[int]:
        row, number = (int(v) for v in self.items[index])
        length = self.manifest.rows[row].num_samples
        seg = self.segment_samples
        if self.cut == "crop":
            slack = max(length - seg, 0)
            return [int(self._rng(index).integers(0, slack + 1)) if self.shuffle else slack // 2]
        if self.cut == "pairs":
            slack = length - 2 * seg
            start = int(self._rng(index).integers(0, slack + 1)) if self.shuffle else slack // 2
            return [start, start + seg]
        return [number * seg]  # the number-th of consecutive_starts(length, seg)

    def _segment(self, row: int, start: int) -> torch.Tensor:
        path = self.manifest.file_of(row)
        wave = torch.from_numpy(load_waveform(path, start, self.segment_samples))
        wave = normalize_segment(wave, self.normalize, self._record_statistics(path))
        return wave * self.keep_leads

    def __getitem__(self, index: int) -> dict:
        row = int(self.items[index][0])
        item = {
            "id": index,
            "row": row,
            "segments": [self._segment(row, start) for start in self._starts(index)],
            "group": int(self.groups[row]),
        }
        if self.targets is not None:
            item["target"] = self.targets[row]
        return item

    def size(self, index: int) -> int:
        return min(self.segment_samples, self.manifest.rows[int(self.items[index][0])].num_samples)

    def num_tokens(self, index: int) -> int:
        return self.size(index) * (2 if self.cut == "pairs" else 1)

    def ordered_indices(self) -> np.ndarray:
        if self.shuffle:
            return np.random.default_rng((self.seed, self.epoch)).permutation(len(self))
        return np.arange(len(self))

    def collater(self, samples: list[dict]) -> dict:
        if not samples:
            return {}
        segments = [seg for s in samples for seg in s["segments"]]
        per_item = len(samples[0]["segments"])
        net_input = collate_segments(segments)
        batch = {
            "id": torch.LongTensor([s["id"] for s in samples for _ in range(per_item)]),
            "net_input": net_input,
            "group": torch.LongTensor([s["group"] for s in samples for _ in range(per_item)]),
            "row": torch.LongTensor([s["row"] for s in samples for _ in range(per_item)]),
            "pairs": self.cut == "pairs",  # rows 2i, 2i+1 are the two halves of one window
        }
        if "target" in samples[0]:
            batch["target"] = torch.stack([torch.as_tensor(s["target"]) for s in samples])
        return batch
