"""Input normalisation: the one place that knows the modes and applies them (``task.normalize``).

A model sees its inputs as it was trained on them; with another preprocessing it gives garbage
without an error. So the mode travels with every checkpoint (the task's ``normalize`` in the saved
config and, resolved, in the task state) and everything that reads a checkpoint defaults to
``auto``, the checkpoint's own mode; another mode given explicitly is refused in one line.

Modes:
- ``none``: the waveform in mV as prepared;
- ``segment``: each lead of each segment z-scored over that segment (the old ``normalize=true``);
- ``record``: each lead z-scored over the whole record before it is cut into segments (ECG-FM's
  convention); a constant lead (standard deviation below 1e-6 mV) becomes zeros;
- ``auto``: the mode of the checkpoint the model starts from (``none`` without one).
Booleans of older checkpoints and configs map to ``segment`` (true) and ``none`` (false).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from .errors import EcgError

MODES = ("none", "segment", "record")
AUTO = "auto"
CONSTANT_STD = 1e-6  # mV; below this a lead carries no signal and is set to zeros
_STATE_KEY = "normalize"  # the key in a checkpoint's task_state


def normalize_mode(value: Any, allow_auto: bool = True) -> str:
    """The mode named by ``value``: a mode name, ``auto``, or an old boolean (true -> segment)."""
    if value is None or value is False:
        return "none"
    if value is True:
        return "segment"
    text = str(value).strip().lower()
    text = {"true": "segment", "false": "none", "1": "segment", "0": "none", "": "none"}.get(text, text)
    if text in MODES or (allow_auto and text == AUTO):
        return text
    allowed = ", ".join(MODES + ((AUTO,) if allow_auto else ()))
    raise EcgError(f"normalize={value!r}: expected one of {allowed}")


def checkpoint_normalization(state: dict) -> str:
    """The mode a checkpoint's model was trained with: the resolved mode kept in its task state,
    else its saved ``task.normalize`` (old checkpoints: a boolean)."""
    recorded = (state.get("task_state") or {}).get(_STATE_KEY)
    if recorded is not None:
        return normalize_mode(recorded, allow_auto=False)
    task = (state.get("cfg") or {}).get("task") or {}
    mode = normalize_mode(task.get("normalize", False))
    return "none" if mode == AUTO else mode


def resolve_normalization(requested: Any, recorded: Optional[str], source: str = "the checkpoint") -> str:
    """``requested`` (``auto`` or a mode) checked against the checkpoint's ``recorded`` mode (None:
    no checkpoint); a mismatch is refused, naming both and the fix."""
    mode = normalize_mode(requested)
    if mode == AUTO:
        return recorded or "none"
    if recorded is not None and mode != recorded:
        raise EcgError(
            f"normalize={mode} but {source} was trained with normalize={recorded}; a model fed another "
            f"preprocessing than its own gives wrong outputs: leave normalize at auto (the default) or give {recorded}"
        )
    return mode


def record_statistics(wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-lead mean and standard deviation (population, float64) of a whole record [leads, T],
    read in blocks so that a memory-mapped long record is not loaded at once."""
    leads, length = wave.shape
    total = np.zeros(leads)
    squares = np.zeros(leads)
    block = 1 << 20
    for start in range(0, length, block):
        part = np.asarray(wave[:, start:start + block], dtype=np.float64)
        total += part.sum(axis=1)
    mean = total / max(length, 1)
    for start in range(0, length, block):
        part = np.asarray(wave[:, start:start + block], dtype=np.float64) - mean[:, None]
        squares += (part * part).sum(axis=1)
    return mean, np.sqrt(squares / max(length, 1))


def _zscore(wave: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    scaled = (wave - mean) / std.clamp(min=CONSTANT_STD)
    return torch.where(std > CONSTANT_STD, scaled, torch.zeros_like(wave)).to(wave.dtype)


def normalize_segment(wave: torch.Tensor, mode: str,
                      statistics: Optional[Callable[[], tuple[np.ndarray, np.ndarray]]] = None) -> torch.Tensor:
    """Apply ``mode`` to a segment [leads, T]; ``statistics`` gives the whole record's per-lead
    (mean, std) for ``record`` (called only then)."""
    if mode == "none":
        return wave
    if mode == "segment":
        mean = wave.mean(dim=-1, keepdim=True)
        std = wave.std(dim=-1, keepdim=True)
        return _zscore(wave, mean, std)
    if mode == "record":
        if statistics is None:
            raise ValueError("normalize=record needs the statistics of the whole record")
        mean, std = statistics()
        return _zscore(wave, torch.as_tensor(mean, dtype=torch.float64).unsqueeze(-1),
                       torch.as_tensor(std, dtype=torch.float64).unsqueeze(-1))
    raise ValueError(f"normalize={mode!r} is not resolved to one of {MODES}")


class RecordStatistics:
    """Cache of per-record statistics by waveform file (24 numbers per record), for ``record``."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def __call__(self, path: Path | str) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
        def compute() -> tuple[np.ndarray, np.ndarray]:
            key = str(path)
            if key not in self._cache:
                self._cache[key] = record_statistics(np.load(key, mmap_mode="r"))
            return self._cache[key]
        return compute
