"""Loading checkpoints safely: tensors and plain containers only, never arbitrary pickled code.

A fairseq checkpoint is a pickle. Every place where the plugin reads one (``model.model_path``,
``fairseq-ecg-embed``, the experiments runner) goes through ``load_checkpoint``, which uses
``torch.load(weights_only=True)``; a file that needs more is refused unless the user opts in for a
file they trust (``FAIRSEQ_ECG_TRUST_CHECKPOINTS=1``).
"""
from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Optional

import torch

TRUST_ENV = "FAIRSEQ_ECG_TRUST_CHECKPOINTS"
ENCODER_MODEL = "ecg_wav2vec2"
DOWNSTREAM_MODELS = ("ecg_wav2vec2_classifier", "ecg_wav2vec2_identifier")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and what was expected."""


def _refusal_reason(error: Exception) -> str:
    """The sentence of torch's weights-only refusal that names what the file holds ("Unsupported
    global: GLOBAL exec ..."), without its terminal colour codes; else its first line."""
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(error)).splitlines() if line.strip()]
    for line in lines:
        if "WeightsUnpickler error:" in line:
            return line.split("WeightsUnpickler error:", 1)[1].split(". ")[0].strip()
    return lines[0] if lines else "unsafe content"


def load_checkpoint(path: Path | str) -> dict:
    """Read a fairseq checkpoint on the CPU, tensors and plain containers only; a config saved by
    an older version is upgraded to what that version trained with (``upgrade_saved_model_cfg``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    trusted = os.environ.get(TRUST_ENV, "") == "1"
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic[:2] != b"PK" and magic[:1] != b"\x80":  # zip (torch >= 1.6) or a bare pickle
        raise CheckpointError(f"{path}: not a checkpoint (neither a torch zip file nor a pickle)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=not trusted)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{path}: refused, the file needs more than tensors to load ({_refusal_reason(error)}); "
            f"if you trust its source, set {TRUST_ENV}=1"
        ) from None
    except Exception as error:  # truncated zip, bad pickle opcodes, ...: whatever torch raises
        raise CheckpointError(f"{path}: not a readable checkpoint, truncated or corrupt "
                              f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})") from None
    if not isinstance(state, dict) or "model" not in state or not isinstance(state.get("cfg"), dict):
        raise CheckpointError(f"{path}: not a fairseq checkpoint written by fairseq-hydra-train")
    from .models.ecg_wav2vec2 import upgrade_saved_model_cfg  # here: the models import this module

    upgrade_saved_model_cfg(state["cfg"].get("model"))
    return state


def model_name(state: dict) -> str:
    return str((state["cfg"].get("model") or {}).get("_name", ""))


def encoder_state(state: dict, path: Path | str, allow_downstream: bool = False) -> tuple[dict, dict]:
    """The ``ecg_wav2vec2`` config and weights held by a checkpoint.

    A pretraining checkpoint holds them directly; a classifier or identifier holds them under
    ``encoder.`` (accepted only with ``allow_downstream``, e.g. for embeddings).
    """
    name = model_name(state)
    if name == ENCODER_MODEL:
        return dict(state["cfg"]["model"]), state["model"]
    if allow_downstream and name in DOWNSTREAM_MODELS:
        encoder_cfg = state["cfg"]["model"].get("encoder_args")
        if not encoder_cfg:
            raise CheckpointError(f"{path}: this {name} checkpoint does not record its encoder settings "
                                  "(encoder_args); fine-tune it again with this version of fairseq_ecg")
        weights = {k[len("encoder."):]: v for k, v in state["model"].items() if k.startswith("encoder.")}
        return dict(encoder_cfg), weights
    expected = ENCODER_MODEL if not allow_downstream else ", ".join((ENCODER_MODEL,) + DOWNSTREAM_MODELS)
    raise CheckpointError(
        f"{path}: a {name or 'unknown'} checkpoint, expected {expected} "
        f"(give the checkpoint of a pretraining run, e.g. checkpoints/pretrain/w2v_cmsc_rlm/checkpoint_best.pt)"
    )


def read_encoder(path: Path | str, allow_downstream: bool = False) -> tuple[dict, dict]:
    return encoder_state(load_checkpoint(path), path, allow_downstream)


def find_checkpoint(folder_or_file: Path | str, preferred: Optional[str] = "checkpoint_best.pt") -> Path:
    path = Path(folder_or_file)
    return path / preferred if path.is_dir() and preferred else path
