"""Checkpoints that survive a kill, and one clear line for a checkpoint that did not.

fairseq writes the first file of a save atomically (``X.pt.tmp``, then a rename) but *copies* it to
the state's other names (``checkpoint_last.pt``, ``checkpoint_best.pt``, ...) with a plain
``shutil.copyfile``. A run killed during that copy (SIGKILL, the out-of-memory killer, a preempted
cluster job) leaves a truncated ``checkpoint_last.pt``, and every rerun, which resumes from that
file, stops in ``torch.load`` with a stack trace ("PytorchStreamReader failed reading zip
archive"). Importing the plugin (``common.user_dir`` / ``--user-dir``) changes two things in
``fairseq.checkpoint_utils`` and nothing else:

1. its copies write ``DST.tmp`` and rename it over ``DST``, like its first write, so every ``*.pt``
   in a save folder is complete whenever the process dies (a stale ``*.pt.tmp`` may stay behind;
   the next save overwrites it);
2. ``load_checkpoint_to_cpu`` (training's resume, fairseq-validate, ``load_model_ensemble``)
   reports a truncated or corrupt file as one ``CheckpointError`` line that names the file, the
   newest readable checkpoint of the same folder with its epoch and update count, and how to
   resume from it: ``checkpoint.restore_file=THAT_FILE`` for one rerun (fairseq then writes a good
   ``checkpoint_last.pt`` again), or copying it over the bad file.

3. the same loader is weights-only whatever torch's switches say (``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``
   would otherwise make fairseq-validate run a checkpoint's pickle): only the plugin's opt-in
   ``FAIRSEQ_ECG_TRUST_CHECKPOINTS=1`` trusts a file; a refusal, like any ``CheckpointError``, is
   printed in one line (``sys.excepthook``; hydra prints it as its one line too), and the
   settings of the plugin's models are checked before fairseq builds a model from them.

Nothing is substituted automatically: with (1), a kill no longer leaves a corrupt file, so one
points at the disk or a copy gone wrong, and whether to go back to an older state is the user's
call. Checking costs nothing on the normal path: a file is examined only after fairseq failed to
load it.
"""
from __future__ import annotations

import logging
import os
import pickle
import shutil
import sys
import zipfile
from pathlib import Path
from typing import Optional

from fairseq import checkpoint_utils
from fairseq.file_io import PathManager
from omegaconf import OmegaConf

from ..errors import EcgError
from ..checkpoints import (CheckpointError, check_settings, load_checkpoint, only_the_plugins_opt_in, refusal,
                          upgrade_checkpoint)

logger = logging.getLogger(__name__)


class _AtomicCopyPathManager(PathManager):
    """fairseq's PathManager, with copies that never leave a partial destination file."""

    @staticmethod
    def copy(src_path: str, dst_path: str, overwrite: bool = False) -> bool:
        if not PathManager.supports_rename(dst_path):  # a remote (ioPath) destination: as before
            return PathManager.copy(src_path, dst_path, overwrite=overwrite)
        shutil.copyfile(src_path, dst_path + ".tmp")
        os.replace(dst_path + ".tmp", dst_path)
        return True


def damage(path: Path | str) -> Optional[str]:
    """Why ``path`` is not a complete checkpoint file (truncated, corrupt), or None when it looks
    whole or is not a torch zip file at all (then fairseq's own error stands)."""
    try:
        with open(path, "rb") as handle:
            magic = handle.read(2)
        if not magic:
            return "an empty file"
        if magic != b"PK":
            return None
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
        return f"bad checksum in {bad}" if bad else None
    except (zipfile.BadZipFile, EOFError, ValueError) as error:
        return str(error)
    except OSError:
        return None


def newest_readable(folder: Path, exclude: Path) -> Optional[tuple[Path, int, int]]:
    """The most recently written checkpoint of ``folder`` that loads, with its epoch and update."""
    candidates = [p for p in folder.glob("*.pt") if p.resolve() != exclude.resolve()]
    for path in sorted(candidates, key=lambda p: p.stat().st_mtime_ns, reverse=True):
        try:
            state = load_checkpoint(path)
        except CheckpointError:
            continue
        history = state.get("optimizer_history") or [{}]
        epoch = ((state.get("extra_state") or {}).get("train_iterator") or {}).get("epoch", 0)
        return path, int(epoch), int(history[-1].get("num_updates", 0))
    return None


def corrupt_checkpoint_message(path: Path | str, reason: str) -> str:
    path = Path(path)
    found = newest_readable(path.parent, path)
    if found is None:
        return (f"{path}: truncated or corrupt checkpoint ({reason}); no other readable checkpoint in "
                f"{path.parent}. Move the file away to start from scratch")
    good, epoch, updates = found
    return (f"{path}: truncated or corrupt checkpoint ({reason}). The newest readable checkpoint in this folder "
            f"is {good} (epoch {epoch} @ {updates} updates): to resume from it, rerun once with "
            f"checkpoint.restore_file={good} (or copy it over {path.name})")


_fairseq_load_checkpoint_to_cpu = getattr(checkpoint_utils.load_checkpoint_to_cpu, "__wrapped__",
                                          checkpoint_utils.load_checkpoint_to_cpu)


def load_checkpoint_to_cpu(path, arg_overrides=None, load_on_all_ranks=False):
    """fairseq's reader, weights-only whatever torch's switches say (only the plugin's opt-in
    trusts a file: see ``checkpoints.only_the_plugins_opt_in``), refusing or reporting a corrupt
    file in one line; the plugin's models' settings are checked before fairseq builds anything
    from them and, as fairseq's own ``_upgrade_state_dict`` does for its configs, a model config
    saved by an older version is upgraded to what that version trained with."""
    try:
        with only_the_plugins_opt_in():
            state = _fairseq_load_checkpoint_to_cpu(path, arg_overrides, load_on_all_ranks)
    except Exception as error:
        if isinstance(error, pickle.UnpicklingError) and "Weights only load failed" in str(error):
            raise refusal(path, error) from None
        reason = damage(path) if os.path.isfile(path) else None
        if reason is None:
            raise
        raise CheckpointError(corrupt_checkpoint_message(path, reason)) from None
    cfg = state.get("cfg") if isinstance(state, dict) else None
    if cfg is not None:
        _check_saved_settings(state, path)
    if cfg is not None:
        upgrade_checkpoint(state, path)
    return state


def _check_saved_settings(state: dict, path) -> None:
    """:func:`fairseq_ecg.checkpoints.check_settings` on what fairseq loaded (its cfg is then an
    OmegaConf config): a plugin model's values are refused before fairseq builds the model."""
    try:
        cfg = state["cfg"]
        plain = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
    except Exception:  # an interpolation that does not resolve: fairseq says so when it builds
        return
    check_settings({**state, "cfg": plain}, path)


def one_line_errors(kind, value, traceback) -> None:
    """``sys.excepthook`` of a program that imported the plugin (``fairseq-validate``): the
    plugin's own :class:`~fairseq_ecg.errors.EcgError` is printed as one line (``PROGRAM: error:
    ...``, exit 1), anything else (a bug) with its traceback as before."""
    if isinstance(value, EcgError):
        print(f"{os.path.basename(sys.argv[0] or 'python')}: error: {' '.join(str(value).split())}",
              file=sys.stderr, flush=True)
        return
    one_line_errors.previous(kind, value, traceback)


one_line_errors.previous = getattr(sys.excepthook, "previous", sys.excepthook)  # imported twice: not chained


load_checkpoint_to_cpu.__wrapped__ = _fairseq_load_checkpoint_to_cpu
checkpoint_utils.load_checkpoint_to_cpu = load_checkpoint_to_cpu
checkpoint_utils.PathManager = _AtomicCopyPathManager
sys.excepthook = one_line_errors
