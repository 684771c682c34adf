"""What every ECG task shares: where the manifests are, the segment length, the lead subset and
normalisation. Not registered itself; the registered tasks subclass it."""

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import II, MISSING, OmegaConf, open_dict

from fairseq.dataclass import FairseqDataclass
from fairseq.tasks import FairseqTask

from ..metrics.bootstrap import DEFAULT_RESAMPLES
from ..data.model_input import CURRENT_FORMAT, FORMAT_VERSION, NORMALIZE, TRAINED_LEADS, ModelInput
from ..leads import lead_change, lead_set_name, missing_leads_summary, parse_leads
from ..manifest import Manifest, ManifestError, check_waveforms, read_manifest
from ..normalization import AUTO, normalize_mode, resolve_normalization
from ..models.precision import PRECISION_CHOICES, AutocastForward
from ..prepared import TASK_FOLDERS

logger = logging.getLogger(__name__)



@dataclass
class EcgTaskConfig(FairseqDataclass):
    data: str = field(default=MISSING, metadata={"help": "folder of manifests (SPLIT.tsv) written by fairseq-ecg-manifest"})
    sample_rate: int = field(default=500, metadata={"help": "sampling rate (Hz) the manifests were prepared at"})
    segment_seconds: float = field(default=5.0, metadata={"help": "length of one input segment, in seconds"})
    leads: Any = field(  # Any: hydra reads task.leads=[I,II,V2] as a list, task.leads=6 as a number
        default="12",
        metadata={"help": "leads the model sees: a preset (12, 6, 4, 3, 2, 1) or a list like [I,II,V2]; "
                  "the other leads are zeroed"},
    )
    normalize: Any = field(  # Any: older checkpoints saved a boolean (true = segment, false = none)
        default="auto",
        metadata={"help": "input normalisation: none (mV as prepared), segment (z-score each lead of each "
                  "segment), record (z-score each lead over the whole record, constant leads zero; ECG-FM's), "
                  "auto (the mode of model.model_path's checkpoint, else none); saved with the checkpoint"},
    )
    seed: int = II("common.seed")
    check_files: bool = field(
        default=True, metadata={"help": "check every waveform file's header against its manifest row at load time"}
    )
    bootstrap_resamples: int = field(
        default=DEFAULT_RESAMPLES,
        metadata={"help": "95% bootstrap intervals of the figures of every evaluated subset but train and valid "
                  "(those choose the checkpoint and its thresholds): resamples of the subset's patients (records "
                  "without a patient id: the record); 0 for none (fairseq_ecg/metrics/bootstrap.py)"},
    )
    bootstrap_seed: int = field(default=0, metadata={"help": "seed of the bootstrap resamples (the same seed, "
                                                             "the same resampled patients: paired comparisons)"})
    per_record_results: Optional[str] = field(
        default=None,
        metadata={"help": "folder: fairseq-validate writes each subset's per-record outputs and targets there "
                  "(SUBSET.results.csv; identification also SUBSET.embeddings.npy; fairseq_ecg/metrics/record_results.py)"},
    )
    precision: PRECISION_CHOICES = field(
        default="fp32",
        metadata={"help": "fp32, or bf16: the model's forward pass (training and validation) under bf16 autocast, "
                  "on CPU or CUDA; weights, optimizer state, losses, metrics and checkpoints stay fp32 (see "
                  "fairseq_ecg/models/precision.py). Not fairseq's common.bf16 or common.amp: leave those off"},
    )


class EcgTask(FairseqTask):
    cfg: EcgTaskConfig
    task_name = ""  # the registered name, set by each subclass (a key of TASK_FOLDERS)

    def __init__(self, cfg: EcgTaskConfig) -> None:
        super().__init__(cfg)
        parse_leads(cfg.leads)  # fail at start-up on an unknown lead name, not in a worker
        # saved in every checkpoint (fairseq_ecg.data.model_input names the keys)
        self.state.merge_state_dict({TRAINED_LEADS: lead_set_name(cfg.leads), FORMAT_VERSION: CURRENT_FORMAT})
        normalize_mode(cfg.normalize)  # and on an unknown normalisation
        self._normalize: Optional[str] = None  # resolved in build_model

    def load_state_dict(self, state_dict) -> None:
        """A checkpoint's task state (fairseq-validate, ``load_model_ensemble_and_task``): one line
        when this run's lead set is not the one the model was trained on (allowed: evaluating a
        12-lead model on 6 leads is an experiment of its own)."""
        trained = state_dict.get(TRAINED_LEADS)
        change = lead_change(trained, self.cfg.leads) if trained is not None else ""
        if change:
            logger.warning(f"{change} (task.leads / --leads)")
        super().load_state_dict(state_dict)

    @property
    def normalize_mode(self) -> str:
        """The normalisation the datasets apply: resolved when the model is built (``auto`` needs
        the checkpoint); datasets loaded before that are updated then."""
        if self._normalize is not None:
            return self._normalize
        mode = normalize_mode(self.cfg.normalize)
        return "none" if mode == AUTO else mode

    def resolve_normalization(self, model_cfg, from_checkpoint: bool) -> str:
        """``task.normalize`` against the checkpoint's: when rebuilt from a checkpoint, the mode
        its task state records; when training from ``model.model_path``, that file's mode."""
        if from_checkpoint:
            recorded = self.state.state_dict.get(NORMALIZE)
            recorded = None if recorded is None else normalize_mode(recorded, allow_auto=False)
            return resolve_normalization(self.cfg.normalize, recorded, "this checkpoint")
        path = model_cfg.get("model_path") if hasattr(model_cfg, "get") else None
        if not path:
            return resolve_normalization(self.cfg.normalize, None)
        from ..checkpoints import load_checkpoint  # a training run from a checkpoint: read its mode

        recorded = ModelInput.of_checkpoint(load_checkpoint(path)).normalize
        return resolve_normalization(self.cfg.normalize, recorded, f"model.model_path={path}")

    def _record_normalization(self, model_cfg, mode: str) -> None:
        """Keep the resolved mode in the task state (saved in every checkpoint), in the saved
        config's ``task.normalize`` where reachable, and in the datasets already loaded."""
        self._normalize = mode
        self.state.merge_state_dict({NORMALIZE: mode})
        root = model_cfg._get_parent() if OmegaConf.is_config(model_cfg) else None
        if root is not None and "task" in root and OmegaConf.is_config(root.task) and "normalize" in root.task:
            with open_dict(root.task):
                root.task.normalize = mode
        for dataset in self.datasets.values():
            if hasattr(dataset, "normalize"):
                dataset.normalize = mode

    @classmethod
    def setup_task(cls, cfg: EcgTaskConfig, **kwargs) -> "EcgTask":
        return cls(cfg)

    @property
    def segment_samples(self) -> int:
        return int(round(self.cfg.segment_seconds * self.cfg.sample_rate))

    def data_file(self, name: str) -> Path:
        """``task.data/name``; when that is not a file, a ``ManifestError`` for the usual
        mistakes with ``task.data`` (a missing folder, a file, the prepared root, the folder of
        another task), else the path unchanged (the reader then says what is missing)."""
        data = Path(self.cfg.data)
        path = data / name
        if path.is_file():
            return path
        own = TASK_FOLDERS.get(self.task_name, "")
        if not data.exists():
            where = f" (for {self.task_name}: DEST/{own}, DEST being fairseq-ecg-manifest's --dest)" if own else ""
            raise ManifestError(f"task.data={data}: folder not found; check the path{where}")
        if not data.is_dir():
            raise ManifestError(f"task.data={data} is a file; it must be the folder that holds the manifests "
                                f"(train.tsv, valid.tsv, ...), e.g. task.data={data.parent}")
        if any((data / sub).is_dir() for sub in TASK_FOLDERS.values()):
            others = ", ".join(f"{data / sub} for {task}" for task, sub in TASK_FOLDERS.items() if task != self.task_name)
            use = f"use {data / own} for {self.task_name} ({others})" if own else f"use {others}"
            raise ManifestError(f"task.data={data} is the prepared root; {use}")
        sibling = data.parent / own
        meant_for = {sub: task for task, sub in TASK_FOLDERS.items()}.get(data.name)
        if own and data.name != own and (meant_for or sibling.is_dir()):
            why = f" ({data.name}/ is for {meant_for})" if meant_for else ""
            raise ManifestError(f"task.data={data} has no {name}{why}; use {sibling} for {self.task_name}")
        return path

    def read_split(self, split: str) -> Manifest:
        manifest = read_manifest(self.data_file(f"{split}.tsv"))
        if not manifest.rows:
            raise ManifestError(self.empty_split_message(manifest.path, split))
        if self.cfg.check_files:
            check_waveforms(manifest)
        logger.info(f"{manifest.path}: {len(manifest)} records")
        lacking = missing_leads_summary((row.present_leads for row in manifest.rows), self.cfg.leads)
        if lacking:
            logger.warning(f"{manifest.path}: {lacking}")
        return manifest

    def empty_split_message(self, path: Path, split: str) -> str:
        """Why ``split`` has no records and what to do: when the training split of the same folder
        has records, the patient split left this one empty (a small archive); else records were
        skipped or none were found."""
        train = Path(self.cfg.data) / "train.tsv"
        try:
            split_left_it_empty = not split.startswith("train") and train.is_file() and bool(read_manifest(train).rows)
        except ManifestError:
            split_left_it_empty = False
        if not split_left_it_empty:
            return f"{path}: no records; check the preparation's skipped.tsv"
        share = "--test-percent" if split.startswith("test") else "--valid-percent"
        fix = (f"prepare again with a larger {share} (fairseq-ecg-manifest; the default is 10, a share of the patients)")
        if split.startswith("valid"):
            fix += ", or train without validation: dataset.disable_validation=true"
        return (f"{path}: no records: the patient split of fairseq-ecg-manifest left '{split}' empty (too few "
                f"patients for its share); {fix}")

    def warn_other_task_folder(self) -> None:
        """One line when ``task.data`` is the folder that fairseq-ecg-manifest wrote for another
        task (e.g. pretraining on ``finetune/``: fewer records, chosen for another purpose)."""
        data = Path(self.cfg.data)
        own = TASK_FOLDERS.get(self.task_name, "")
        meant_for = {sub: task for task, sub in TASK_FOLDERS.items()}.get(data.name)
        if own and meant_for and meant_for != self.task_name:
            sibling = data.parent / own
            instead = f"; {sibling} is the one for {self.task_name}" if sibling.is_dir() else ""
            logger.warning(f"task.data={data} is fairseq-ecg-manifest's folder for {meant_for}, not for "
                           f"{self.task_name} (DEST/{own}){instead}; training on it anyway")

    def build_model(self, cfg, from_checkpoint: bool = False):
        """Build the model, and keep what it filled in at build time where fairseq saves it.

        Downstream models fill settings left empty (``encoder_args`` from ``model_path``,
        ``num_patients`` from the task) in the merged copy of ``cfg`` that fairseq hands them;
        copying them back into ``cfg`` (as fairseq's audio_pretraining does for ``w2v_args``)
        lets a saved checkpoint rebuild on its own. Rebuilt from a checkpoint, such a model takes
        its architecture from ``encoder_args`` and its weights from the checkpoint, so the
        pretraining file is not read again (it may be gone).
        A training run (not ``from_checkpoint``) first checks ``task.data`` (see ``data_file``):
        fairseq lists that folder before loading any subset and would fail there without a word.
        """
        if not from_checkpoint:  # a training run: a wrong task.data fails here, in one line
            self.data_file("train.tsv")
            self.warn_other_task_folder()
        self._record_normalization(cfg, self.resolve_normalization(cfg, from_checkpoint))
        if from_checkpoint and cfg.get("encoder_args") is not None and cfg.get("model_path"):
            cfg = copy.deepcopy(cfg)
            with open_dict(cfg):
                cfg.model_path = None
        model = super().build_model(cfg, from_checkpoint)
        built = getattr(model, "cfg", None)
        if built is not None and OmegaConf.is_config(cfg):
            with open_dict(cfg):
                for key in list(cfg.keys()):
                    if not OmegaConf.is_missing(cfg, key) and cfg[key] is None and getattr(built, key, None) is not None:
                        cfg[key] = getattr(built, key)
        return model

    def bootstraps(self, split: str) -> bool:
        """Whether ``split``'s figures get bootstrap intervals: not those that train the model or
        choose its checkpoint and thresholds (reported figures are on other patients)."""
        return self.cfg.bootstrap_resamples > 0 and not split.startswith(("train", "valid"))

    def whole_subset(self, split: str, rows) -> bool:
        """Whether the manifest rows ``rows`` cover every record of the loaded subset ``split``: a
        fairseq-validate reduction (all batches at once), not one batch of training's validation."""
        dataset = self.datasets.get(split)
        return dataset is not None and len({int(r) for r in rows}) == len(dataset.manifest)

    def get_batch_iterator(self, dataset, **kwargs):
        """As fairseq's, except that an evaluation dataset (``cut="consecutive"``) loses no item:
        this fairseq drops a last batch whose size is not a multiple of
        ``dataset.required_batch_size_multiple`` (default 8), which would silently leave segments
        out of whole-subset metrics (fairseq-validate uses that default)."""
        if getattr(dataset, "cut", None) == "consecutive":
            kwargs["required_batch_size_multiple"] = 1
        return super().get_batch_iterator(dataset, **kwargs)

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        """fairseq's training step with the model's forward at ``task.precision`` (the loss and the
        backward pass outside autocast)."""
        return super().train_step(sample, self._at_precision(model), criterion, optimizer, update_num, ignore_grad)

    def valid_step(self, sample, model, criterion):
        """fairseq's validation step (also fairseq-validate's) at ``task.precision``."""
        return super().valid_step(sample, self._at_precision(model), criterion)

    def _at_precision(self, model):
        precision = str(getattr(self.cfg, "precision", "fp32"))
        return model if precision == "fp32" else AutocastForward(model, precision)

    def max_positions(self):
        return None

    @property
    def source_dictionary(self):
        return None

    @property
    def target_dictionary(self):
        return None
