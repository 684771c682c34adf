"""``ecg_classification``: multi-label arrhythmia classification (PhysioNet/CinC 2021, docs/method.md).

Data: a manifest folder (``DIR/finetune`` from fairseq-ecg-manifest) with ``SPLIT.tsv``, its labels
``SPLIT.lbl`` and the class list ``classes.tsv``; targets are multi-hot over those classes
(equivalent codes count as one class).

* ``train`` (any split starting with ``train``): one random 5 s crop per record and epoch;
* every other split: every consecutive 5 s segment of every record; the segment probabilities
  are combined per record (``aggregate``: mean or max) and the metrics computed over the whole
  subset (see ``criterions/ecg_bce.py`` for how that goes through fairseq's logging).

Thresholds: a record is predicted positive for a class when its probability reaches the class's
threshold: by default (``tune_thresholds``) the one that maximises its F1 on the ``valid``
subset (0.5 is rarely crossed by a classifier trained on a small labeled set), else ``threshold``. Training tunes them at every validation and keeps them in the task's
state, which fairseq saves in each checkpoint (``task_state``) and restores in fairseq-validate,
so a test subset is scored at the thresholds tuned on the validation data of that checkpoint.

Calibration (``calibration=valid``; off by default, see below): at each validation a Platt
calibration per class is fitted on the ``valid`` records' probabilities (fairseq_ecg/metrics/calibration.py), the thresholds
are tuned on the calibrated ones, and both are kept in the task state; every other subset is scored
on the checkpoint's calibrated probabilities. ``ece`` and ``brier`` are logged for the probabilities
as scored and, where a calibration applies, ``ece_uncalibrated`` and ``brier_uncalibrated`` for the
same records before it. ``calibration=none`` (the default) scores the probabilities as trained, a
calibrated checkpoint at its thresholds mapped back to that scale. Off by default because on the
demo it made the test patients' probabilities worse, not better: fitted on the 129 valid records
that also chose the checkpoint, it raised the test ECE from 0.026 to 0.034 (7 runs; a temperature
alone, or only classes with 40 valid positives, did no better), while fitted on half of the test
patients it lowered the other half's from 0.027 to 0.025. Turn it on with a validation set that
is large and not the one that chooses the checkpoint's epoch, and check ``ece_uncalibrated``.
checkpoint's thresholds mapped back to that scale.

Classes other than the CinC 2021 scored ones (PTB-XL's benchmark tasks, ``fairseq-ecg-manifest
--ptbxl-labels``): the Challenge metric, defined for the CinC classes only, is off (one notice),
and a run whose ``checkpoint.best_checkpoint_metric`` is ``challenge_metric`` (the YAML's) chooses
its checkpoints by macro AUROC instead.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import numpy as np

from omegaconf import DictConfig, open_dict

from fairseq.dataclass import ChoiceEnum
from fairseq.tasks import register_task

from ..errors import EcgError
from ..metrics.calibration import CALIBRATIONS, MIN_EACH, PlattCalibration
from ..metrics.meters import ClassificationMeter, ScoredSegments, Scoring, log_classification
from ..data import EcgSegmentDataset
from ..data.model_input import CALIBRATION, CLASSES, THRESHOLDS
from ..labels import (SINUS_RHYTHM, WEIGHTS_CSV, LabelSet, column_names, label_set_from_names, read_weights_csv,
                      scored_labels)
from ..manifest import CLASSES_FILE, Manifest, ManifestError, read_classes, read_labels
from ..metrics.record_results import ClassificationResults, results_file, row_names, write_classification_results
from .base import EcgTask, EcgTaskConfig

logger = logging.getLogger(__name__)

AGGREGATE = ChoiceEnum(["mean", "max"])
CALIBRATION_CHOICES = ChoiceEnum(list(CALIBRATIONS))
TUNE_SPLIT = "valid"
NO_WEIGHTS = ("none", "")
CHALLENGE_METRIC, SELECT_WITHOUT_CHALLENGE = "challenge_metric", "auroc"


@dataclass
class EcgClassificationConfig(EcgTaskConfig):
    aggregate: AGGREGATE = field(
        default="mean", metadata={"help": "how the segment probabilities of a record are combined in evaluation"}
    )
    weights_path: Optional[str] = field(
        default=None,
        metadata={"help": "Challenge reward table (weights.csv) for the Challenge metric; its classes must be those "
                  "of classes.tsv, in order. Default: the packaged 2021 table for the CinC classes, none for other classes "
                  "(PTB-XL's tasks: one notice, checkpoints chosen by macro AUROC); 'none': no Challenge metric"},
    )
    threshold: float = field(default=0.5, metadata={"help": "probability at or above which a class is predicted"})
    tune_thresholds: bool = field(
        default=True,
        metadata={"help": "per class, use the threshold that maximises F1 on the valid subset (tuned at each "
                  "validation, saved with the checkpoint, applied to every other subset); false: ``threshold`` "
                  "for every class. Without a valid subset nothing is tuned and ``threshold`` serves, said once"},
    )
    calibration: CALIBRATION_CHOICES = field(
        default="none",
        metadata={"help": "none (default): the probabilities as trained (a calibrated checkpoint's thresholds mapped "
                  "back to that scale). valid: fit a Platt calibration per class on the valid subset at each validation (saved "
                  "with the checkpoint; thresholds are tuned on its scale) and score every other subset through "
                  f"the checkpoint's; a class with fewer than {MIN_EACH} valid positives or negatives stays as "
                  "trained, said once. Off by default: on the demo's 129 valid records it raised the test ECE "
                  "(module docstring)"},
    )


class LabelledSegments(EcgSegmentDataset):
    """Segments with targets whose batches name their subset (``split``): scoring differs between
    the subset that tunes the thresholds and the others."""

    def __init__(self, manifest: Manifest, split: str, **kwargs) -> None:
        super().__init__(manifest, **kwargs)
        self.split = split

    def collater(self, samples: List[dict]) -> dict:
        batch = super().collater(samples)
        if batch:
            batch["split"] = self.split
        return batch


@register_task("ecg_classification", dataclass=EcgClassificationConfig)
class EcgClassificationTask(EcgTask):
    cfg: EcgClassificationConfig
    task_name = "ecg_classification"

    def __init__(self, cfg: EcgClassificationConfig) -> None:
        super().__init__(cfg)
        self._label_set: Optional[LabelSet] = None
        self._table: Optional[LabelSet] = None
        self._table_read = False
        self._warned_untuned = False
        self._said_uncalibrated = False

    @property
    def label_set(self) -> LabelSet:
        """The classes of ``classes.tsv``, read once, when first needed."""
        if self._label_set is None:
            self._label_set = label_set_from_names(read_classes(self.data_file(CLASSES_FILE).parent))
        return self._label_set

    @property
    def num_classes(self) -> int:
        return len(self.label_set)

    @property
    def reward_table(self) -> Optional[LabelSet]:
        """The Challenge weights for ``classes.tsv`` (None with ``weights_path=none``, and by default
        for classes other than the CinC ones); a table for other classes is refused here, before any
        training, rather than scored wrongly."""
        if not self._table_read:
            path = self.cfg.weights_path
            if path is not None and path.strip().lower() in NO_WEIGHTS:
                table = None
                logger.info(f"task.weights_path={path}: {self._select_by_auroc()}")
            elif path is None and self.label_set.names != scored_labels().names:
                logger.warning(f"{Path(self.cfg.data) / CLASSES_FILE}: {len(self.label_set)} classes that are not "
                               "the CinC 2021 scored classes: no Challenge metric (it is defined for those only); "
                               f"{self._select_by_auroc()}")
                table = None
            else:
                path = path or str(WEIGHTS_CSV)
                table = read_weights_csv(path)
                ours, theirs = self.label_set.names, table.names
                if ours != theirs:
                    k = next((i for i, (a, b) in enumerate(zip(theirs, ours)) if a != b), min(len(ours), len(theirs)))
                    expected, found = (names[k] if k < len(names) else "nothing" for names in (ours, theirs))
                    raise EcgError(
                        f"{path}: the Challenge weights must cover the {len(ours)} classes of "
                        f"{Path(self.cfg.data) / CLASSES_FILE} in the same order, found {len(theirs)} "
                        f"(class {k + 1}: expected {expected}, found {found}); give task.weights_path="
                        "a weights.csv for these classes, or task.weights_path=none to skip the Challenge metric")
                if SINUS_RHYTHM not in table.code_to_index:
                    raise EcgError(f"{path}: no sinus rhythm class ({SINUS_RHYTHM}); the Challenge metric scores "
                                     "against always predicting it; use task.weights_path=none to skip the metric")
            self._table, self._table_read = table, True
        return self._table

    def load_dataset(self, split: str, combine: bool = False, epoch: int = 1, **kwargs) -> None:
        label_set = self.label_set  # first: a folder without classes.tsv is named before its labels
        manifest = self.read_split(split)
        targets = np.stack([label_set.encode(codes) for codes in read_labels(manifest)])
        if self.reward_table is None and self.cfg.weights_path is not None:  # read now: a table that
            logger.info(f"{split}: no Challenge metric (task.weights_path=none)")  # does not fit fails first
        train = split.startswith("train")
        self.datasets[split] = LabelledSegments(
            manifest, split, segment_samples=self.segment_samples, cut="crop" if train else "consecutive",
            leads=self.cfg.leads, normalize=self.normalize_mode, targets=targets, shuffle=train, seed=self.cfg.seed,
        )

    def _select_by_auroc(self) -> str:
        """Without a Challenge metric, a training run set to choose checkpoints by it (the YAML's
        ``checkpoint.best_checkpoint_metric``) chooses them by macro AUROC. fairseq gives a task only
        its own config, whose parent is the run's (``merge_with_parent``): the checkpoint settings
        are changed there, before the first validation reads them. Returns what was done, for the
        notice."""
        root = self.cfg._get_parent() if isinstance(self.cfg, DictConfig) else None
        checkpoint = root.get("checkpoint") if isinstance(root, DictConfig) else None
        if checkpoint is None or checkpoint.get("best_checkpoint_metric") != CHALLENGE_METRIC:
            return "checkpoints are chosen as checkpoint.best_checkpoint_metric says"
        with open_dict(checkpoint):
            checkpoint.best_checkpoint_metric = SELECT_WITHOUT_CHALLENGE
            checkpoint.maximize_best_checkpoint_metric = True
        return f"checkpoints are chosen by macro AUROC (checkpoint.best_checkpoint_metric={SELECT_WITHOUT_CHALLENGE})"

    def build_model(self, cfg, from_checkpoint: bool = False):
        """As the base task's; a training run also keeps the class names in the task state (saved in
        each checkpoint), so that predictions can name their columns without the manifests."""
        model = super().build_model(cfg, from_checkpoint)
        if not from_checkpoint:
            self.state.merge_state_dict({CLASSES: list(self.label_set.names)})
        return model

    def load_state_dict(self, state_dict) -> None:
        """A checkpoint's task state: a model trained on other classes than ``classes.tsv``'s is
        refused in one line (fairseq would fail on the head's shape with a traceback, or, with as
        many classes under other names, score every column against the wrong labels)."""
        saved = state_dict.get(CLASSES)
        path = Path(self.cfg.data) / CLASSES_FILE
        if saved is not None and path.is_file() and list(saved) != list(self.label_set.names):
            ours = list(self.label_set.names)
            differ = next(k for k, pair in enumerate(zip(list(saved) + [None] * len(ours), ours + [None] * len(saved)))
                          if pair[0] != pair[1])
            raise ManifestError(
                f"{path}: {len(ours)} classes, but the checkpoint's model was trained on {len(saved)} "
                f"(they differ from class {differ + 1}: {saved[differ] if differ < len(saved) else 'none'} there, "
                f"{ours[differ] if differ < len(ours) else 'none'} here); evaluate on data prepared with the "
                "model's classes (the same label table or --ptbxl-labels), or fine-tune a model on these")
        super().load_state_dict(state_dict)

    @property
    def tuned_thresholds(self) -> Optional[np.ndarray]:
        """Per-class thresholds tuned at the last validation (kept in the checkpoint's task state)."""
        stored = self.state.state_dict.get(THRESHOLDS)
        return None if stored is None else np.asarray(stored, dtype=np.float64)

    @property
    def saved_calibration(self) -> Optional[PlattCalibration]:
        """The calibration fitted at the last validation (kept in the checkpoint's task state)."""
        return PlattCalibration.from_state(self.state.state_dict.get(CALIBRATION))

    def scoring(self, split: str) -> Scoring:
        """How the subset ``split`` is scored (see the module docstring for the thresholds and the calibration)."""
        table = self.reward_table
        thresholds: Optional[np.ndarray] = np.full(self.num_classes, float(self.cfg.threshold))
        fit, saved = self.cfg.calibration == "valid" and split == TUNE_SPLIT, self.saved_calibration
        calibration = saved if self.cfg.calibration == "valid" and not fit else None
        if self.cfg.tune_thresholds:
            if split == TUNE_SPLIT:
                thresholds = None
            elif self.tuned_thresholds is not None and len(self.tuned_thresholds) == self.num_classes:
                thresholds = self.tuned_thresholds
                if saved is not None and calibration is None:  # tuned on the calibrated scale, applied to the other
                    thresholds = saved.uncalibrated(thresholds)
            elif not self._warned_untuned:
                self._warned_untuned = True
                logger.warning(f"{split}: no thresholds tuned on '{TUNE_SPLIT}' yet (they are tuned when training "
                               f"validates); scoring at threshold {self.cfg.threshold}")
        dataset = self.datasets.get(split)
        bootstrap = self.bootstraps(split) and dataset is not None
        return Scoring(
            aggregate=str(self.cfg.aggregate),
            weights=None if table is None else table.weights,
            sinus_index=None if table is None else table.index_of(SINUS_RHYTHM),
            thresholds=thresholds,
            default_threshold=float(self.cfg.threshold),
            calibration=calibration,
            fit_calibration=fit,
            resamples=int(self.cfg.bootstrap_resamples) if bootstrap else 0,
            seed=int(self.cfg.bootstrap_seed),
            records=len(dataset.manifest) if dataset is not None else 0,
            patients=np.array([row.patient for row in dataset.manifest.rows], dtype=object) if bootstrap else None,
        )

    def reduce_metrics(self, logging_outputs, criterion) -> None:
        """The criterion's loss, then the whole-subset metrics from the scored segments."""
        super().reduce_metrics(logging_outputs, criterion)
        parts = [log["scored"] for log in logging_outputs if "scored" in log]
        if parts:
            scoring = self.scoring(parts[0].split)
            log_classification(parts, scoring)
            if self.cfg.per_record_results and self.whole_subset(parts[0].split, np.concatenate([p.rows for p in parts])):
                self.write_results(parts, scoring)

    def write_results(self, parts: List[ScoredSegments], scoring: Scoring) -> None:
        """``per_record_results/SPLIT.results.csv`` of one whole subset (fairseq_ecg/metrics/record_results.py)."""
        meter = ClassificationMeter()
        for part in parts:
            meter.update(part, scoring)
        rows, uncalibrated, targets, known = meter.records()
        meter.result()  # the calibration in force
        split = parts[0].split
        manifest = self.datasets[split].manifest
        records, patients = row_names(rows, manifest)
        path = results_file(self.cfg.per_record_results, split)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_classification_results(path, ClassificationResults(
            records, patients, column_names(self.label_set.names), meter.calibrated(uncalibrated), targets,
            np.ones_like(targets) if known is None else known,
            None if meter.calibration is None else uncalibrated))
        logger.info(f"{split}: per-record results of {len(records)} records -> {path}")

    def post_validate(self, model, stats, agg) -> None:
        """After fairseq-hydra-train validates the tuning subset: keep its calibration and thresholds (saved next)."""
        meter = agg["_classification"] if "_classification" in agg else None
        if meter is None or not meter.parts:
            return
        thresholds = meter.result()[1]
        if meter.scoring.fit_calibration:
            self.state.merge_state_dict({CALIBRATION: meter.calibration.to_state()})
            few, falling = meter.uncalibrated_classes
            if (few or falling) and not self._said_uncalibrated:
                self._said_uncalibrated = True
                names = self.label_set.names
                logger.warning(f"calibration on '{TUNE_SPLIT}': {len(few) + len(falling)} of {len(names)} classes stay as "
                               f"trained: {len(few)} with fewer than {MIN_EACH} known positives or negatives"
                               + (f" ({', '.join(names[k] for k in few[:5])}{' ...' if len(few) > 5 else ''})" if few else "")
                               + (f", {len(falling)} whose fitted scaling did not rise with the label "
                                  f"({', '.join(names[k] for k in falling[:5])})" if falling else ""))
        elif CALIBRATION in self.state.state_dict:  # thresholds tuned below are on the scale as trained
            del self.state.state_dict[CALIBRATION]
        if self.cfg.tune_thresholds and meter.scoring.thresholds is None:
            self.state.merge_state_dict({THRESHOLDS: [float(t) for t in thresholds]})
            logger.info(f"thresholds tuned on '{TUNE_SPLIT}': " + " ".join(f"{t:.3f}" for t in thresholds))
