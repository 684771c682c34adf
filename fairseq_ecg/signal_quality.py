"""Signal quality per lead: what makes a prediction on a record meaningless, flagged before the
model speaks (``fairseq-ecg-predict``'s ``quality`` column).

A lead is checked only where the record has it and the model is fed it: an absent lead is zeros by
convention, not a flat lead. Each check runs over the whole record at the model's rate, in mV:

- ``flat``: peak-to-peak amplitude below 0.05 mV, a dead or disconnected electrode. A lead with a
  heart in it shows its QRS: "low voltage" is a QRS below 0.5 mV in the limb leads and 1 mV in the
  precordial ones (Surawicz et al., AHA/ACCF/HRS recommendations, 2009), ten times this limit.
- ``clipped``: the lead holds its extreme value (its maximum or minimum) for 20 ms or more in a
  row, where an ADC saturates; no QRS or T peak is a plateau that long at the microvolt steps of a
  diagnostic recorder (the narrowest R peak of a wide QRS still rises and falls within 20 ms).
- ``noisy``: power above 40 Hz over half the power in the QRS band (5-15 Hz) of the lead, or of the
  record's median lead where that is larger: mains (50/60 Hz) or muscle noise of the QRS's own size.
  The diagnostic content of an ECG lies mostly below 40 Hz (the monitoring filter is 0.5-40 Hz).
  Checked when the rate is above 80 Hz.
- ``wander``: the baseline (the signal averaged over 1 s) spans more than 2 mV, larger than a
  typical QRS (1-2 mV), so that amplitudes and ST levels cannot be read.

The limits are :class:`QualityLimits`; the synthetic archives of every layout pass them
(``tests/test_signal_quality.py``), and each planted defect fails exactly its own check.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import scipy.signal
from scipy.ndimage import uniform_filter1d

from .leads import LEADS, NUM_LEADS, LeadSpec, lead_mask

FLAGS = ("flat", "clipped", "noisy", "wander")
GOOD = "ok"


@dataclass(frozen=True)
class QualityLimits:
    """The limits of the checks (see the module's docstring for where each comes from)."""

    flat_mv: float = 0.05
    clipped_seconds: float = 0.02
    noise_ratio: float = 0.5
    wander_mv: float = 2.0


def _longest_run(values: np.ndarray, level: float) -> int:
    at = np.concatenate([[False], values == level, [False]])
    edges = np.flatnonzero(np.diff(at.astype(np.int8)))
    return int((edges[1::2] - edges[0::2]).max()) if len(edges) else 0


def _band_power(frequencies: np.ndarray, power: np.ndarray, low: float, high: float) -> float:
    return float(power[(frequencies >= low) & (frequencies < high)].sum())


def band_powers(lead: np.ndarray, sample_rate: float) -> tuple[float, float]:
    """(power in the QRS band 5-15 Hz, power above 40 Hz) of a lead [T], from Welch's estimate over
    2 s windows; (nan, nan) when the rate is 80 Hz or less or the lead shorter than 1 s."""
    if sample_rate <= 80 or lead.size < sample_rate:
        return float("nan"), float("nan")
    frequencies, power = scipy.signal.welch(lead - lead.mean(), sample_rate, nperseg=int(min(lead.size, 2 * sample_rate)))
    return _band_power(frequencies, power, 5.0, 15.0), _band_power(frequencies, power, 40.0, sample_rate)


def lead_flags(lead: np.ndarray, sample_rate: float, limits: QualityLimits = QualityLimits(),
               reference_qrs: float = 0.0) -> list[str]:
    """The checks one lead [T] (mV) fails, in the order of ``FLAGS``. Its noise is held against
    the larger of its own QRS-band power and ``reference_qrs`` (the record's typical lead), so that
    a lead whose QRS is small by its axis (III, aVL) is not called noisy for a resting ECG's noise."""
    lead = np.asarray(lead, dtype=np.float64)
    if lead.size == 0 or np.ptp(lead) < limits.flat_mv:
        return ["flat"]
    flags = []
    plateau = max(3, int(round(limits.clipped_seconds * sample_rate)))
    if max(_longest_run(lead, lead.max()), _longest_run(lead, lead.min())) >= plateau:
        flags.append("clipped")
    qrs, high = band_powers(lead, sample_rate)
    if high > limits.noise_ratio * max(qrs, reference_qrs, 1e-12):
        flags.append("noisy")
    window = int(round(sample_rate))
    if lead.size >= window and np.ptp(uniform_filter1d(lead, window, mode="nearest")) > limits.wander_mv:
        flags.append("wander")
    return flags


def record_flags(wave: np.ndarray, sample_rate: float, present: Optional[np.ndarray] = None, fed: LeadSpec = None,
                 limits: QualityLimits = QualityLimits()) -> dict[str, list[str]]:
    """Per check, the leads that fail it, of those the record has (``present`` [12] bool; default:
    the leads that are not all zeros) and the model is fed (``fed``: a lead set, default all 12).

    Args:
        wave: [12, T] in mV, canonical lead order.
    Returns:
        {flag: [lead names]} for the flags of ``FLAGS`` that some checked lead fails.
    """
    wave = np.asarray(wave)
    if wave.ndim != 2 or wave.shape[0] != NUM_LEADS:
        raise ValueError(f"expected a [{NUM_LEADS}, samples] array, got shape {wave.shape}")
    has = np.any(wave != 0, axis=1) if present is None else np.asarray(present, bool)
    checked = has & lead_mask(fed)
    found: dict[str, list[str]] = {}
    qrs = [band_powers(np.asarray(wave[index], dtype=np.float64), sample_rate)[0] for index in np.flatnonzero(checked)]
    reference = float(np.nanmedian(qrs)) if qrs and not np.isnan(qrs).all() else 0.0
    for index in np.flatnonzero(checked):
        for flag in lead_flags(wave[index], sample_rate, limits, reference):
            found.setdefault(flag, []).append(LEADS[index])
    return {flag: found[flag] for flag in FLAGS if flag in found}


def quality_text(flags: dict[str, list[str]]) -> str:
    """``ok``, or the failed checks with their leads: ``flat:V4,V5;noisy:II``."""
    return ";".join(f"{flag}:{','.join(leads)}" for flag, leads in flags.items()) or GOOD
