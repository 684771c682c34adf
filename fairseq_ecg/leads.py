"""Lead names, their canonical order and the lead-subset presets.

This module is the one owner of lead naming: every other part of the plugin (record reading,
manifests, tasks, the experiments runner) asks it how a name or a preset maps to channel indices.
"""
from __future__ import annotations

from typing import Iterable, Sequence, Union

import numpy as np

from .errors import EcgError

LEADS: tuple[str, ...] = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
NUM_LEADS = len(LEADS)

PRESETS: dict[str, tuple[str, ...]] = {
    "12": LEADS,
    "6": ("I", "II", "III", "aVR", "aVL", "aVF"),
    "4": ("I", "II", "III", "V2"),
    "3": ("I", "II", "V2"),
    "2": ("I", "II"),
    "1": ("I",),
}

# Spellings seen in real archives besides the canonical ones (matched case-insensitively).
_EXTRA_ALIASES = {"LI": "I", "LII": "II", "LIII": "III", "D1": "I", "D2": "II", "D3": "III"}
_ALIASES: dict[str, str] = {name.upper(): name for name in LEADS}
_ALIASES.update(_EXTRA_ALIASES)

LeadSpec = Union[str, int, Sequence[str], None]


class UnknownLeadError(EcgError):
    """A lead name or preset that the plugin does not know."""


def canonical_lead(name: str) -> str:
    """Return the canonical spelling of a lead name (``avr`` -> ``aVR``)."""
    key = str(name).strip().upper()
    if key not in _ALIASES:
        raise UnknownLeadError(
            f"unknown lead name {name!r}; accepted: {', '.join(LEADS)} (any case)"
        )
    return _ALIASES[key]


def parse_leads(spec: LeadSpec) -> tuple[str, ...]:
    """Turn a preset (``"6"``, ``6``), a list (``"[I,II,V2]"``, ``["I", "II"]``) or ``None``
    (all twelve) into lead names in canonical order."""
    if spec is None:
        return LEADS
    if isinstance(spec, int):
        spec = str(spec)
    if isinstance(spec, str):
        text = spec.strip()
        if text in PRESETS:
            return PRESETS[text]
        if text.lower() in ("all", ""):
            return LEADS
        # also reads a list printed by Python ("['I', 'II']"), as a saved config may hold it
        names = [part.strip(" '\"") for part in text.strip("[]()").replace(";", ",").split(",") if part.strip(" '\"")]
        if not names or (len(names) == 1 and names[0].strip().isdigit()):
            raise UnknownLeadError(
                f"unknown lead set {spec!r}; use a preset ({', '.join(PRESETS)}) "
                f"or a list of leads such as [I,II,V2]"
            )
    else:
        names = list(spec)
    chosen = {canonical_lead(n) for n in names}
    return tuple(name for name in LEADS if name in chosen)


def lead_mask(spec: LeadSpec) -> np.ndarray:
    """Boolean vector over the 12 canonical leads, True where the lead is kept."""
    kept = set(parse_leads(spec))
    return np.array([name in kept for name in LEADS], dtype=bool)


def lead_set_name(spec: LeadSpec) -> str:
    """Short name of a lead set: the preset key when it is one, else ``I+II+V2``."""
    names = parse_leads(spec)
    for key, preset in PRESETS.items():
        if names == preset:
            return key
    return "+".join(names)


def mask_to_string(mask: Iterable[bool]) -> str:
    """Lead-presence mask as a 12-character string of 0/1 (the manifest column)."""
    return "".join("1" if bool(v) else "0" for v in mask)


def mask_from_string(text: str) -> np.ndarray:
    if len(text) != NUM_LEADS or set(text) - {"0", "1"}:
        raise ValueError(f"lead mask {text!r} must be {NUM_LEADS} characters of 0/1")
    return np.array([c == "1" for c in text], dtype=bool)


def lead_list(mask: Iterable[bool]) -> str:
    """The leads of a mask as ``I,II,V2`` (``none`` for no lead): how messages and CSVs name them."""
    names = [name for name, kept in zip(LEADS, mask) if kept]
    return ",".join(names) if names else "none"


def lead_change(trained: LeadSpec, fed: LeadSpec) -> str:
    """What a run feeds a model trained on other leads, exactly: the leads it shares, those the
    model knows that go in as zeros, and those it never saw. Empty when the sets are equal."""
    known, now = lead_mask(trained), lead_mask(fed)
    if (known == now).all():
        return ""
    parts = [f"the model was trained on leads {lead_list(known)}; this run feeds it {lead_list(known & now)}"]
    if (known & ~now).any():
        parts.append(f"with zeros for {lead_list(known & ~now)}")
    if (now & ~known).any():
        parts.append(f"and also {lead_list(now & ~known)}, which it never saw")
    return " ".join(parts)


def missing_leads_summary(masks: Iterable[np.ndarray], used: LeadSpec, what: str = "records") -> str:
    """One line on the records that lack leads a model is fed (they go in as zeros), grouped by
    the leads they lack, most common first; empty when none lacks any. ``masks``: each record's
    present leads (12 booleans)."""
    from collections import Counter

    wanted = lead_mask(used)
    counts: Counter = Counter()
    total = 0
    for mask in masks:
        total += 1
        lacking = wanted & ~np.asarray(mask, dtype=bool)
        if lacking.any():
            counts[lead_list(lacking)] += 1
    if not counts:
        return ""
    groups = "; ".join(f"{n} lack {leads}" for leads, n in counts.most_common(3))
    more = f"; {len(counts) - 3} other patterns" if len(counts) > 3 else ""
    return (f"{sum(counts.values())} of {total} {what} lack leads that the model is fed ({lead_list(wanted)}), "
            f"which go in as zeros: {groups}{more}")
