"""The settings that define a training run, saved beside its checkpoints, and a stop when a run is
started into a folder that holds a run with other settings.

fairseq resumes whatever ``checkpoint_last.pt`` its ``checkpoint.save_dir`` holds, whatever the
overrides of the new command say: a 1-lead fine-tuning run started into the folder of a finished
6-lead run prints "done training in 0.0 seconds", exits 0, and leaves the 6-lead model where the
1-lead one was expected. Importing the plugin wraps ``fairseq.checkpoint_utils.load_checkpoint``
(the call with which ``fairseq-hydra-train`` resumes, after it built the model and before it
trains) for the plugin's own tasks:

* the run's defining settings (``KEYS``: task, leads, normalisation, the variant's loss weights,
  the initialisation, ``model_path``, the RLM probability, ...) are written to
  ``SAVE_DIR/run_settings.json``;
* when that folder already holds checkpoints of a run whose saved settings differ (read from its
  ``run_settings.json``, or, in a folder written before this file existed, from the configuration
  stored in its ``checkpoint_last.pt``), the run stops with one line that names the differing
  settings and the two ways out: another ``checkpoint.save_dir``, or ``+resume_anyway=true`` to
  resume that run with the new settings all the same.

A setting whose default changed between versions (``KEPT_ON_RESUME``: ``model.rlm_mode``) is taken
from the run being resumed when the new command line does not name it, so the resumed run goes on as
it was trained (a checkpoint saved before the setting existed reads as the value it trained with).

Settings that only say how long or how fast to train (``max_update``, ``max_epoch``, batch size,
workers, logging) are not compared: raising ``max_update`` to continue a finished run is normal.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Optional

from fairseq import checkpoint_utils
from ..errors import EcgError
from omegaconf import OmegaConf, open_dict

from ..checkpoints import CheckpointError
from ..checkpoints import load_checkpoint as read_checkpoint
from ..leads import lead_set_name
from ..manifest import atomic_write_text

logger = logging.getLogger(__name__)

SETTINGS_FILE = "run_settings.json"
OVERRIDE = "resume_anyway"  # the top-level hydra override: +resume_anyway=true
PLUGIN_TASKS = ("ecg_pretraining", "ecg_classification", "ecg_identification")
# Dotted config keys that define what a run trains; a key a configuration lacks is left out.
KEYS = (
    "task._name", "task.leads", "task.normalize", "task.sample_rate", "task.segment_seconds",
    "task.cmsc", "task.cmsc_positive", "task.pair_windows",
    "model._name", "model.init", "model.model_path", "model.rlm_prob", "model.rlm_mode", "model.freeze_encoder_updates",
    "model.encoder_layers", "model.encoder_embed_dim",
    "criterion._name", "criterion.w2v_weight", "criterion.cmsc_weight", "criterion.loss_weights",
)
PATH_KEYS = ("model.model_path",)
# Settings a resumed run takes from the run it resumes unless its command line names them: a default
# that changed between versions must not change a run half-way (model.rlm_mode: the redraw was the
# only mode before the paper's independent draws became the default).
KEPT_ON_RESUME = ("model.rlm_mode",)


class RunSettingsError(EcgError):
    """A training run that cannot go on as asked (a folder that holds a run with other settings, a
    schedule fairseq cannot build); Hydra prints a ``CompactHydraException`` as its one line."""


def _lookup(cfg: Any, dotted: str) -> tuple[bool, Any]:
    node = cfg
    for part in dotted.split("."):
        if node is None:
            return False, None
        try:
            if part not in node:
                return False, None
            node = node[part]
        except (TypeError, KeyError):
            return False, None
    return True, node


def _plain(key: str, value: Any) -> Any:
    """A JSON value that compares equal for equal settings however they were spelled."""
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    if key == "task.leads":
        try:
            return lead_set_name(value)
        except ValueError:
            return str(value)
    if key in PATH_KEYS and isinstance(value, str) and value not in ("", "???"):
        return os.path.abspath(value)
    if isinstance(value, tuple):
        return list(value)
    if value is None or isinstance(value, (bool, int, float, str, list, dict)):
        return value
    return str(value)  # enums and the like: their plain name


def settings_of(cfg: Any) -> dict:
    """The defining settings of a run from its full configuration (``trainer.cfg``, or the
    ``cfg`` stored in a checkpoint)."""
    found = {}
    for key in KEYS:
        present, value = _lookup(cfg, key)
        if present:
            try:
                found[key] = _plain(key, value)
            except Exception:  # an unresolvable interpolation: not comparable, leave it out
                continue
    return found


def differences(saved: dict, current: dict) -> list[str]:
    """``key: SAVED there, CURRENT now`` for each key both know with different values."""
    return [f"{key}: {json.dumps(saved[key])} there, {json.dumps(current[key])} now"
            for key in KEYS if key in saved and key in current and saved[key] != current[key]]


def _checkpoints_in(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.pt")) if folder.is_dir() else []


def saved_settings(folder: Path) -> Optional[dict]:
    """The settings of the run whose checkpoints ``folder`` holds, or None when it holds none
    (a settings file without checkpoints is from a run that never saved: nothing to resume)."""
    if not _checkpoints_in(folder):
        return None
    path = folder / SETTINGS_FILE
    if path.is_file():
        try:
            return upgrade_saved_settings(dict(json.loads(path.read_text())["settings"]))
        except (ValueError, KeyError, TypeError, OSError):
            logger.warning(f"{path}: unreadable, the settings of the run in this folder are not compared")
            return None
    last = folder / "checkpoint_last.pt"
    if last.is_file():  # a folder written before run_settings.json existed
        try:
            return settings_of(read_checkpoint(last)["cfg"])
        except CheckpointError:
            return None  # fairseq's resume reports the file itself
    return None


def upgrade_saved_settings(settings: dict) -> dict:
    """Saved settings of an older version completed with what it trained with, by the rule that
    upgrades its checkpoints' configs (``upgrade_saved_model_cfg``)."""
    from ..models.ecg_wav2vec2 import upgrade_saved_model_cfg

    model = {key[len("model."):]: value for key, value in settings.items() if key.startswith("model.")}
    upgrade_saved_model_cfg(model)
    return {**settings, **{f"model.{key}": value for key, value in model.items() if f"model.{key}" not in settings
                           and f"model.{key}" in KEYS}}


def _named_on_command_line(key: str) -> bool:
    """Whether the hydra command line of this process sets ``key`` (``key=...``, ``+key=...``)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    except Exception:  # no hydra run (a spawned worker): nothing was named
        overrides = []
    return any(item.lstrip("+~").split("=", 1)[0] == key for item in overrides)


def keep_resumed_settings(cfg: Any, saved: Optional[dict], current: dict, model: Any = None) -> dict:
    """Give a resumed run the ``KEPT_ON_RESUME`` settings of the run it resumes where its command
    line does not name them: in ``cfg`` (which fairseq saves with every checkpoint) and in the
    built ``model``'s modules that hold the setting as an attribute. Returns the updated current
    settings; says once what it kept."""
    if saved is None:
        return current
    kept = {}
    for key in KEPT_ON_RESUME:
        if key in saved and key in current and saved[key] != current[key] and not _named_on_command_line(key):
            section, name = key.split(".", 1)
            with open_dict(cfg[section]):
                cfg[section][name] = saved[key]
            for module in (model.modules() if model is not None else ()):
                if hasattr(module, name) and not callable(getattr(module, name)):
                    setattr(module, name, saved[key])
            kept[key] = saved[key]
    if kept:
        logger.warning(f"{cfg.checkpoint.save_dir}: the resumed run keeps "
                       f"{', '.join(f'{key}={value}' for key, value in kept.items())}, the setting it was trained "
                       f"with (give {'/'.join(kept)} on the command line to change it, with +{OVERRIDE}=true)")
    return {**current, **kept}


def check_and_record(cfg: Any, model: Any = None) -> None:
    """Stop (``RunSettingsError``) when ``checkpoint.save_dir`` holds a run with other settings,
    unless ``+resume_anyway=true``; then write this run's settings there (rank 0). A setting of
    ``KEPT_ON_RESUME`` that the command line leaves out is taken from the resumed run first."""
    folder = Path(cfg.checkpoint.save_dir)
    saved = saved_settings(folder)
    current = keep_resumed_settings(cfg, saved, settings_of(cfg), model)
    changed = differences(saved, current) if saved is not None else []
    earlier: list = []
    if changed:
        if not cfg.get(OVERRIDE, False):
            raise RunSettingsError(
                f"checkpoint.save_dir={folder} holds the checkpoints of a run with other settings "
                f"({'; '.join(changed)}), which fairseq would resume instead of training this one; "
                f"give this run its own checkpoint.save_dir=..., or add +{OVERRIDE}=true to resume that "
                "run with these settings anyway")
        logger.warning(f"{folder}: resuming a run with other settings ({'; '.join(changed)}), as "
                       f"+{OVERRIDE}=true asks")
        try:
            earlier = json.loads((folder / SETTINGS_FILE).read_text()).get("earlier", [])
        except (ValueError, OSError, AttributeError):
            earlier = []
        earlier = [*earlier, saved]
    if cfg.distributed_training.distributed_rank == 0:
        record = {"settings": current}
        if earlier:
            record["earlier"] = earlier  # the settings the resumed checkpoints were trained with
        atomic_write_text(folder / SETTINGS_FILE, json.dumps(record, indent=1) + "\n")


_fairseq_load_checkpoint = getattr(checkpoint_utils.load_checkpoint, "__wrapped__", checkpoint_utils.load_checkpoint)


def check_schedule(cfg: Any) -> None:
    """Stop in one line on a schedule fairseq would stop on with a bare ``AssertionError`` once the
    model is built: ``tri_stage`` with ``phase_ratio`` (identification's, after fairseq-signals) is
    fractions of ``optimization.max_update``, so it needs one."""
    scheduler = _lookup(cfg, "lr_scheduler._name")[1]
    if scheduler == "tri_stage" and _lookup(cfg, "lr_scheduler.phase_ratio")[1] is not None:
        if (_lookup(cfg, "optimization.max_update")[1] or 0) <= 0:
            raise RunSettingsError(
                "lr_scheduler=tri_stage with phase_ratio needs optimization.max_update > 0 (its phases are "
                "fractions of it); give optimization.max_update=N, or schedule=fixed (examples/finetune/schedule/) "
                "for a constant rate")


def load_checkpoint(cfg, trainer, **passthrough_args):
    """fairseq's resume step, after the settings and schedule checks for the plugin's tasks."""
    full = getattr(trainer, "cfg", None)
    if full is not None and _lookup(full, "task._name")[1] in PLUGIN_TASKS:
        check_schedule(full)
        check_and_record(full, getattr(trainer, "model", None))
    return _fairseq_load_checkpoint(cfg, trainer, **passthrough_args)


load_checkpoint.__wrapped__ = _fairseq_load_checkpoint
checkpoint_utils.load_checkpoint = load_checkpoint
