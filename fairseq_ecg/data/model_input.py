"""What a model expects as input, owned in one place.

A model fed another sampling rate, segment length, lead set or normalisation than it trained on
gives wrong outputs without an error, and a classifier's outputs mean nothing without its class
names, thresholds and the rule that combines a record's segments. :class:`ModelInput` holds all of
them. Training saves them with every checkpoint (the task's config, and the task state that fairseq
keeps beside the weights: the keys below are named here only), and every consumer
(``fairseq-validate`` through the tasks, ``fairseq-ecg-predict``, ``fairseq-ecg-embed``,
``fairseq-ecg-import``, the Python API) reads them through :meth:`ModelInput.of_checkpoint`
instead of re-reading config keys with defaults of its own. :meth:`ModelInput.segments` cuts a
record into the model's input as evaluation does, with the dataset's own functions.

A checkpoint records its ``format_version`` (task state); the checkpoint readers bring an older
one to the current format with :func:`fairseq_ecg.checkpoints.upgrade_checkpoint`, whose format-1
step for the task state is :func:`task_state_from_format_1`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from omegaconf import OmegaConf

from ..leads import LeadSpec, lead_mask, lead_set_name
from ..metrics.calibration import PlattCalibration
from ..normalization import checkpoint_normalization, normalize_mode, normalize_segment, record_statistics
from .ecg_dataset import consecutive_starts

logger = logging.getLogger(__name__)

# Keys of a checkpoint's task state (``state["task_state"]``), written by the tasks and the import.
FORMAT_VERSION = "format_version"
TRAINED_LEADS = "trained_leads"  # the lead set the model trained on (a preset key or I+II+V2)
NORMALIZE = "normalize"  # the resolved normalisation mode
CLASSES = "classes"  # a classifier's class names, in the order of its outputs
THRESHOLDS = "thresholds"  # a classifier's per-class thresholds tuned on the validation subset
CALIBRATION = "calibration"  # a classifier's calibration fitted on the validation subset (PlattCalibration.to_state)

# 1: checkpoints written before the version was recorded; 2: without calibration; 3: thresholds are on
# the scale of the calibrated probabilities where a calibration is saved (an older reader would apply
# them to uncalibrated ones: it refuses format 3)
CURRENT_FORMAT = 3
# What a checkpoint of format 1 may lack in its saved task config, with the value it trained with.
FORMAT_1_TASK_DEFAULTS = {"sample_rate": 500, "segment_seconds": 5.0, "leads": "12", "aggregate": "mean"}


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _task_config(state: dict) -> Any:
    cfg = state.get("cfg") or {}
    return cfg.get("task") or {}


def checkpoint_format(state: dict) -> int:
    """The format a checkpoint was written in (1: before the version was recorded)."""
    task_state = state.get("task_state")
    return int(task_state.get(FORMAT_VERSION, 1)) if isinstance(task_state, dict) else 1


def task_state_from_format_1(state: dict) -> None:
    """The task-state part of upgrading a format-1 checkpoint, in place: the normalisation it
    trained with (its config's ``task.normalize``, a boolean in the oldest ones) and its trained
    lead set become explicit; a classifier trained before its class names were saved gets
    ``class_0`` ... in the order of its training ``classes.tsv``, said once."""
    if not isinstance(state.get("task_state"), dict):
        state["task_state"] = {}
    task_state = state["task_state"]
    task_state[NORMALIZE] = checkpoint_normalization(state)
    if task_state.get(TRAINED_LEADS) is None:
        task_state[TRAINED_LEADS] = lead_set_name(_plain(_task_config(state).get("leads", FORMAT_1_TASK_DEFAULTS["leads"])))
    model = (state.get("cfg") or {}).get("model") or {}
    if model.get("_name") == "ecg_wav2vec2_classifier" and task_state.get(CLASSES) is None and model.get("num_classes"):
        task_state[CLASSES] = [f"class_{i}" for i in range(int(model["num_classes"]))]
        logger.warning(f"the checkpoint does not record its class names (trained before they were saved): they are "
                       f"class_0 ... class_{int(model['num_classes']) - 1}, in the order of the training classes.tsv")


@dataclass(frozen=True)
class ModelInput:
    """How records become a model's input, and what its outputs are.

    ``classes``, ``thresholds``, ``calibration`` and ``aggregate`` concern classifiers only (None,
    None, None, "mean" for an encoder or identifier checkpoint). The thresholds are on the scale of
    the calibrated probabilities where there is a calibration."""

    sample_rate: float  # Hz
    segment_samples: int
    leads: LeadSpec  # the leads the model trained on (a preset such as "12", or a list of names)
    normalize: str  # none, segment or record (fairseq_ecg.normalization)
    aggregate: str = "mean"  # how a record's segment probabilities combine: mean or max
    classes: Optional[tuple[str, ...]] = None
    thresholds: Optional[tuple[float, ...]] = None
    calibration: Optional[PlattCalibration] = None

    @classmethod
    def of_checkpoint(cls, state: dict) -> "ModelInput":
        """What the model of a checkpoint expects; ``state`` as the plugin's readers return it
        (upgraded to the current format by :func:`fairseq_ecg.checkpoints.upgrade_checkpoint`)."""
        if checkpoint_format(state) != CURRENT_FORMAT:
            raise ValueError(f"a checkpoint of format {checkpoint_format(state)}: read it with "
                             "fairseq_ecg.checkpoints.load_checkpoint, which upgrades it")
        task = {**FORMAT_1_TASK_DEFAULTS, **{k: _plain(v) for k, v in dict(_task_config(state)).items()}}
        task_state = state["task_state"]
        rate = float(task["sample_rate"])
        classes = task_state.get(CLASSES)
        thresholds = task_state.get(THRESHOLDS)
        leads = task["leads"]
        return cls(
            sample_rate=rate,
            segment_samples=int(round(float(task["segment_seconds"]) * rate)),
            leads=leads if isinstance(leads, (str, int)) else list(leads),
            normalize=normalize_mode(task_state[NORMALIZE], allow_auto=False),
            aggregate=str(task["aggregate"]),
            classes=None if classes is None else tuple(str(name) for name in classes),
            thresholds=None if thresholds is None else tuple(float(t) for t in thresholds),
            calibration=PlattCalibration.from_state(task_state.get(CALIBRATION)),
        )

    def task_state(self) -> dict:
        """The task state a checkpoint written by this project carries for this input."""
        state = {FORMAT_VERSION: CURRENT_FORMAT, NORMALIZE: self.normalize, TRAINED_LEADS: lead_set_name(self.leads)}
        if self.classes is not None:
            state[CLASSES] = list(self.classes)
        if self.thresholds is not None:
            state[THRESHOLDS] = list(self.thresholds)
        if self.calibration is not None:
            state[CALIBRATION] = self.calibration.to_state()
        return state

    def tuned_thresholds(self, num_classes: int) -> Optional[np.ndarray]:
        """The thresholds tuned on validation, or None when the checkpoint has none for every class."""
        if self.thresholds is None or len(self.thresholds) != num_classes:
            return None
        return np.asarray(self.thresholds, dtype=np.float64)

    def segments(self, wave: np.ndarray, leads: LeadSpec = None) -> list[torch.Tensor]:
        """A record cut as evaluation cuts it (the dataset's ``cut="consecutive"``: every whole
        segment, or the one shorter record), normalised and with the leads not fed zeroed.

        Args:
            wave: [12, T] float32 at ``sample_rate``, canonical lead order, absent leads zero.
            leads: the leads fed to the model; default: those it trained on.
        Returns:
            [12, segment_samples] (the last or only one may be shorter) float32 tensors.
        """
        keep = torch.from_numpy(lead_mask(self.leads if leads is None else leads).astype(np.float32)).unsqueeze(-1)
        statistics = record_statistics(wave) if self.normalize == "record" else None
        seg = self.segment_samples
        return [normalize_segment(torch.from_numpy(np.array(wave[:, start:start + seg], dtype=np.float32)),
                                  self.normalize, lambda: statistics) * keep
                for start in consecutive_starts(wave.shape[1], seg)]
