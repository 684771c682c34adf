"""The synthetic ECG signal and the WFDB archives (PhysioNet/CinC 2021, PTB-XL) written from it.

The signal is a 3-D heart vector, one Gaussian bump per wave (P, Q, R, S, T, and the extra forces
of bundle branch blocks), projected to I, II, V1-V6 with the Dower coefficients; III, aVR, aVL and
aVF follow exactly from Einthoven and Goldberger. A patient is a seeded draw of wave vectors,
widths, axis, heart rate and morphology classes; each record draws its rhythm, premature beats,
noise and baseline wander. The layouts: :mod:`fairseq_ecg.synth`.
"""
from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import scipy.io
import scipy.signal

from ..labels import PTBXL_SCP_TO_SNOMED as SCP
from ..leads import LEADS

LAYOUTS = ("physionet2021", "ptbxl", "numpy", "code15", "mimic_iv_ecg", "muse_xml", "dicom")
GAIN = 1000  # ADC units per mV, as in both archives
GROUP_SIZE = 500  # records per g<k> folder
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

# Dower coefficients (lead = a*X + b*Y + c*Z), rows I, II, V1..V6; X left, Y inferior, Z posterior.
DOWER = np.array([
    [0.632, -0.235, 0.059], [0.235, 1.066, -0.132],
    [-0.515, 0.157, -0.917], [0.044, 0.164, -1.387], [0.882, 0.098, -1.277],
    [1.213, 0.127, -0.601], [1.125, 0.127, -0.086], [0.831, 0.076, 0.230],
])

# The classes written, in #Dx order: SNOMED CT code -> (abbreviation, PTB-XL statement, its text).
NSR, AF, SB, STACH, IAVB = "426783006", "164889003", "426177001", "427084000", "270492004"
CRBBB, CLBBB, LAD, RAD = "713427006", "733534002", "39732003", "47665007"
PVC, TINV, LQRSV = "427172004", "59931005", "251146004"
CLASSES: dict[str, tuple[str, str, str]] = {
    NSR: ("NSR", "SR", "sinus rhythm"), AF: ("AF", "AFIB", "atrial fibrillation"),
    SB: ("SB", "SBRAD", "sinus bradycardia"), STACH: ("STach", "STACH", "sinus tachycardia"),
    IAVB: ("IAVB", "1AVB", "first degree AV block"),
    CRBBB: ("CRBBB", "CRBBB", "complete right bundle branch block"),
    CLBBB: ("CLBBB", "CLBBB", "complete left bundle branch block"),
    LAD: ("LAD", "LAFB", "left anterior fascicular block"),  # PTB-XL has no axis statement
    RAD: ("RAD", "LPFB", "left posterior fascicular block"),
    PVC: ("PVC", "PVC", "ventricular premature complex"), TINV: ("TInv", "INVT", "inverted T-waves"),
    LQRSV: ("LQRSV", "LVOLT", "low QRS voltages in the frontal and horizontal leads"),
}
EXTRA_NAMES = {"445118002": "LAnFB", "445211001": "LPFB"}  # what LAFB/LPFB map back to
# A subset of PTB-XL's scp_statements.csv, rows as in the real table, every statement of CLASSES among them (statement: description,
# diagnostic, form, rhythm, diagnostic_class, diagnostic_subclass): the statements written above and
# others that exercise the benchmark's aggregation (diagnostic and form at once: NDT, LNGQT, NST_;
# a subclass of several statements: IMI/ILMI, LAFB/LPFB; other superclasses: MI, HYP, STTC).
SCP_STATEMENTS: dict[str, tuple[str, str, str, str, str, str]] = {
    "NDT": ("non-diagnostic T abnormalities", "1.0", "1.0", "", "STTC", "STTC"),
    "NST_": ("non-specific ST changes", "1.0", "1.0", "", "STTC", "NST_"),
    "LNGQT": ("long QT-interval", "1.0", "1.0", "", "STTC", "STTC"),
    "NORM": ("normal ECG", "1.0", "", "", "NORM", "NORM"),
    "IMI": ("inferior myocardial infarction", "1.0", "", "", "MI", "IMI"),
    "ASMI": ("anteroseptal myocardial infarction", "1.0", "", "", "MI", "AMI"),
    "LVH": ("left ventricular hypertrophy", "1.0", "", "", "HYP", "LVH"),
    "LAFB": ("left anterior fascicular block", "1.0", "", "", "CD", "LAFB/LPFB"),
    "ISC_": ("non-specific ischemic", "1.0", "", "", "STTC", "ISC_"),
    "IRBBB": ("incomplete right bundle branch block", "1.0", "", "", "CD", "IRBBB"),
    "1AVB": ("first degree AV block", "1.0", "", "", "CD", "_AVB"),
    "CRBBB": ("complete right bundle branch block", "1.0", "", "", "CD", "CRBBB"),
    "CLBBB": ("complete left bundle branch block", "1.0", "", "", "CD", "CLBBB"),
    "LPFB": ("left posterior fascicular block", "1.0", "", "", "CD", "LAFB/LPFB"),
    "ILMI": ("inferolateral myocardial infarction", "1.0", "", "", "MI", "IMI"),
    "PVC": ("ventricular premature complex", "", "1.0", "", "", ""),
    "INVT": ("inverted T-waves", "", "1.0", "", "", ""),
    "LVOLT": ("low QRS voltages in the frontal and horizontal leads", "", "1.0", "", "", ""),
    "PAC": ("atrial premature complex", "", "1.0", "", "", ""),
    "SR": ("sinus rhythm", "", "", "1.0", "", ""),
    "AFIB": ("atrial fibrillation", "", "", "1.0", "", ""),
    "STACH": ("sinus tachycardia", "", "", "1.0", "", ""),
    "SBRAD": ("sinus bradycardia", "", "", "1.0", "", ""),
    "AFLT": ("atrial flutter", "", "", "1.0", "", ""),
}
SCP_STATEMENT_COLUMNS = ("", "description", "diagnostic", "form", "rhythm", "diagnostic_class", "diagnostic_subclass")


@dataclass(frozen=True)
class RecordingSite:
    """Where synthetic records come from (a site of the Challenge data, or a layout of its own): its
    folder, record-name prefix, sampling rate and record lengths. Not :class:`fairseq_ecg.sources.Source`,
    the reader of a layout."""

    name: str
    prefix: str
    fs: int
    durations: tuple[int, ...]
    duration_p: tuple[float, ...]
    weight: float


SOURCES = (
    RecordingSite("cpsc_2018", "A", 500, (10, 15, 20, 30), (0.6, 0.2, 0.1, 0.1), 0.35),
    RecordingSite("georgia", "E", 500, (10,), (1.0,), 0.40),
    RecordingSite("st_petersburg_incart", "I", 257, (30,), (1.0,), 0.12),
    RecordingSite("ptb", "S", 1000, (10, 15, 20), (0.5, 0.3, 0.2), 0.13),
)
PTBXL_SOURCE = RecordingSite("ptb-xl", "", 500, (10,), (1.0,), 1.0)
# The other layouts (fairseq_ecg.synth.layouts): rates and lengths of the real archives.
LAYOUT_SOURCES = {
    "ptbxl": PTBXL_SOURCE,
    "numpy": RecordingSite("numpy", "", 500, (10, 12), (0.5, 0.5), 1.0),
    "code15": RecordingSite("code15", "", 400, (7, 10), (0.3, 0.7), 1.0),
    "mimic_iv_ecg": RecordingSite("mimic_iv_ecg", "", 500, (10,), (1.0,), 1.0),
    "muse_xml": RecordingSite("muse_xml", "", 500, (10,), (1.0,), 1.0),
    "dicom": RecordingSite("dicom", "", 500, (10,), (1.0,), 1.0),
}


@dataclass(frozen=True)
class SynthRecord:
    """One written record and what a reader should recover from it."""

    name: str
    path: Path  # without extension: what wfdb.rdrecord takes
    patient: str  # P00001 (patients.csv); for ptbxl the patient_id of the csv without ".0"
    sample_rate: int
    num_samples: int
    codes: tuple[str, ...]  # SNOMED CT codes (#Dx; for ptbxl those its scp_codes map to)
    source: str
    layout: str
    seed: int
    index: int
    patient_index: int


@dataclass(frozen=True)
class Patient:
    """The fixed physiology of one patient: wave vectors (W, 3) in mV, offsets to the R peak and
    widths in seconds, kind 0 atrial / 1 depolarisation / 2 repolarisation, and class flags."""

    index: int
    source: RecordingSite
    age: int
    sex: str
    vectors: np.ndarray
    offsets: np.ndarray
    widths: np.ndarray
    kinds: np.ndarray
    rate: float
    af_prone: bool
    pvc_vector: np.ndarray
    codes: tuple[str, ...]  # morphology classes, present in every record of the patient


def _unit(v: Sequence[float]) -> np.ndarray:
    v = np.asarray(v, dtype=float)
    return v / np.linalg.norm(v)


def _direction(rng: np.random.Generator, angle_deg: float, z: float) -> np.ndarray:
    """Unit vector with a frontal-plane angle (0 = left, 90 = inferior) and a Z component."""
    a = np.deg2rad(angle_deg)
    return _unit([np.cos(a), np.sin(a), z + rng.normal(0, 0.05)])


def leads_from_independent(eight: np.ndarray) -> np.ndarray:
    """(8, T) leads I, II, V1-V6 -> (12, T) in canonical order; the other limb leads follow
    exactly from Einthoven and Goldberger, as on a real electrocardiograph."""
    i, ii = eight[0], eight[1]
    limb = np.stack([i, ii, ii - i, -(i + ii) / 2, i - ii / 2, ii - i / 2])
    return np.concatenate([limb, eight[2:]])


def vcg_to_leads(vcg: np.ndarray) -> np.ndarray:
    """(3, T) heart vector -> (12, T) leads in the order of fairseq_ecg.leads.LEADS."""
    return leads_from_independent(DOWER @ vcg)


def _frontal_axis(net: np.ndarray) -> np.ndarray:
    """QRS axis in degrees from net areas (..., 3) in leads I and aVF, as a cardiologist reads it."""
    return np.rad2deg(np.arctan2(net @ (DOWER[1] - DOWER[0] / 2), net @ DOWER[0]))


def make_patient(seed: int, index: int, layout: str = "physionet2021") -> Patient:
    """Draw patient ``index`` of the archive with ``seed``; the same arguments give the same
    patient, so records of a patient share morphology (what patient identification relies on)."""
    rng = np.random.default_rng([seed, 1, index])
    weights = np.array([s.weight for s in SOURCES])
    source = SOURCES[rng.choice(len(SOURCES), p=weights / weights.sum())]
    source = LAYOUT_SOURCES.get(layout, source)
    age, sex = int(rng.integers(18, 91)), ("Male", "Female")[int(rng.integers(2))]
    u_axis, u_cond, u_tinv, u_low, u_avb, u_af = rng.random(6)
    clbbb, crbbb = u_cond < 0.07, 0.07 <= u_cond < 0.17
    target = (rng.uniform(-75, -45) if u_axis < 0.13 else rng.uniform(105, 150) if u_axis < 0.22 and not clbbb
              else rng.uniform(0, 75))
    # QRS: septal Q, main R, terminal S (or the broad notched R of a left bundle branch block)
    if clbbb:
        base = [_direction(rng, 20, 0.9) * rng.uniform(1.0, 1.5)] * 2
        base_off, base_w = [-0.025, 0.030], [0.022, 0.024]
    else:
        base = [_direction(rng, rng.uniform(110, 160), -1.0) * rng.uniform(0.1, 0.25),
                _direction(rng, rng.uniform(30, 60), rng.uniform(0.2, 0.5)) * rng.uniform(1.2, 2.0),
                _direction(rng, rng.uniform(200, 250), 1.0) * rng.uniform(0.3, 0.6)]
        base_off, base_w = [-0.028, 0.0, 0.028], [0.009, rng.uniform(0.011, 0.014), 0.011]
    extra, extra_off, extra_w = np.zeros((0, 3)), [], []
    if crbbb:  # late rightward-anterior force: rSR' in V1, broad S in I and V6
        extra = _unit([-0.45, 0.05, -0.9])[None] * rng.uniform(0.7, 1.1)
        extra_off, extra_w = [0.058], [0.018]
    base = np.array(base)
    # rotate the QRS in the frontal plane until the measured axis reaches the patient's target
    angles = np.deg2rad(np.arange(-180, 180, 0.5))
    rots = np.zeros((len(angles), 3, 3))
    rots[:, 0, 0] = rots[:, 1, 1] = np.cos(angles)
    rots[:, 1, 0], rots[:, 0, 1], rots[:, 2, 2] = np.sin(angles), -np.sin(angles), 1.0
    nets = rots @ (np.array(base_w) @ base) + np.array(extra_w, dtype=float) @ extra  # net QRS areas
    rot = rots[np.argmin(np.abs((_frontal_axis(nets) - target + 180) % 360 - 180))]
    qrs = np.concatenate([base @ rot.T, extra])
    qrs_off, qrs_w = np.array(base_off + extra_off), np.array(base_w + extra_w)
    axis = float(_frontal_axis((qrs * qrs_w[:, None]).sum(0)))
    # voltage: low-voltage patients under 0.5 mV peak-to-peak in every limb lead, others well above
    t = np.arange(-0.2, 0.2, 0.002)  # one beat at 500 Hz
    p2p = np.ptp(vcg_to_leads(qrs.T @ np.exp(-0.5 * ((t[None, :] - qrs_off[:, None]) / qrs_w[:, None]) ** 2)), axis=1)
    scale = (rng.uniform(0.25, 0.42) / p2p[:6].max() if u_low < 0.08
             else min(max(1.0, rng.uniform(0.9, 1.3) / p2p[:6].max()), 3.2 / p2p.max()))
    qrs *= scale
    low = bool(p2p[:6].max() * scale < 0.5)  # the label follows the measured voltage
    # discordant repolarisation in a left bundle branch block
    t_dir = -_unit(qrs.sum(0)) if clbbb else _direction(rng, rng.uniform(20, 60), rng.uniform(-0.5, -0.1))
    tinv = u_tinv < 0.1 and not clbbb
    t_vec = t_dir * rng.uniform(0.3, 0.55) * (-1 if tinv else 1) * (0.6 if low else 1)
    p_vec = _direction(rng, rng.uniform(40, 70), rng.uniform(-0.2, 0.2)) * rng.uniform(0.12, 0.25)
    iavb = u_avb < 0.1
    pr = rng.uniform(0.26, 0.34) if iavb else rng.uniform(0.13, 0.18)
    codes = {CRBBB: crbbb, CLBBB: clbbb, LAD: axis < -30, RAD: axis > 90, TINV: tinv, LQRSV: low, IAVB: iavb}
    return Patient(
        index=index, source=source, age=age, sex=sex,
        vectors=np.concatenate([p_vec[None], qrs, t_vec[None]]),
        offsets=np.concatenate([[-pr], qrs_off, [rng.uniform(0.26, 0.3)]]),
        widths=np.concatenate([[rng.uniform(0.022, 0.028)], qrs_w, [rng.uniform(0.045, 0.06)]]),
        kinds=np.array([0] + [1] * len(qrs) + [2]),
        rate=float(rng.uniform(60, 92)), af_prone=bool(u_af < 0.12),
        pvc_vector=_unit(rng.normal(size=3)) * rng.uniform(1.5, 2.4),
        codes=tuple(code for code in CLASSES if codes.get(code)),
    )


@dataclass(frozen=True)
class RecordPlan:
    fs: int
    num_samples: int
    rhythm: str
    beats: np.ndarray  # R-peak times in seconds (some before 0 and after the end)
    pvc: np.ndarray  # bool per beat
    codes: tuple[str, ...]
    stamp: str


def plan_record(seed: int, index: int, patient: Patient) -> RecordPlan:
    """Rhythm, beat times and labels of one record (kept apart from rendering so labels are
    known without drawing the signal)."""
    rng = np.random.default_rng([seed, 2, index])
    src = patient.source
    duration = int(src.durations[rng.choice(len(src.durations), p=src.duration_p)])
    af = patient.af_prone and rng.random() < 0.85
    u = rng.random()
    rhythm = AF if af else (NSR if u < 0.7 else SB if u < 0.85 else STACH)
    rate = {AF: rng.uniform(75, 130), NSR: np.clip(patient.rate + rng.normal(0, 6), 62, 98),
            SB: rng.uniform(42, 56), STACH: rng.uniform(105, 145)}[rhythm]
    rr_mean = 60.0 / rate
    count = int(np.ceil((duration + 2.5) / (0.6 * rr_mean))) + 2
    k = np.arange(count)
    if af:  # irregularly irregular
        rr = np.clip(rr_mean * np.exp(rng.normal(0, 0.2, count)), 0.3, 2.0)
    else:  # sinus with respiratory variation
        rr = rr_mean * (1 + 0.03 * np.sin(2 * np.pi * 0.25 * k * rr_mean + rng.uniform(0, 6.3))
                        + 0.01 * rng.normal(size=count))
    beats = np.cumsum(rr) - 1.2 - rng.uniform(0, rr_mean)
    beats = beats[beats < duration + 1.0]
    pvc = np.zeros(len(beats), dtype=bool)
    if rng.random() < 0.12:
        inside = np.flatnonzero((beats > 0.5) & (beats < duration - 0.8))
        inside = inside[inside > 0]  # a premature beat needs a preceding beat
        for b in rng.permutation(inside)[: int(rng.integers(1, 4))]:
            if not pvc[b - 1] and not pvc[min(b + 1, len(beats) - 1)]:
                pvc[b] = True  # premature: early after the preceding beat, full compensatory pause
                beats[b] = beats[b - 1] + rng.uniform(0.5, 0.65) * (beats[b] - beats[b - 1])
    has = set(patient.codes) | {rhythm} | ({PVC} if pvc.any() else set())
    if af:
        has.discard(IAVB)
    day, month, year = rng.integers(1, 29), _MONTHS[rng.integers(12)], rng.integers(2010, 2021)
    hms = rng.integers(0, 60, 3)
    stamp = f"{day:02d}-{month}-{year} {hms[0] % 24:02d}:{hms[1]:02d}:{hms[2]:02d}"
    return RecordPlan(src.fs, duration * src.fs, rhythm, beats, pvc, tuple(c for c in CLASSES if c in has), stamp)


def render(seed: int, index: int, patient: Patient, plan: RecordPlan, noise: bool) -> np.ndarray:
    """Signal of a planned record in mV, (12, T): Gaussian waves summed by np.bincount over
    short windows (no per-sample Python loop), then noise on the independent leads."""
    fs, n = plan.fs, plan.num_samples
    rng = np.random.default_rng([seed, 3, index])
    beats, pvc = plan.beats, plan.pvc
    rr_prev = np.clip(np.diff(beats, prepend=beats[0] - 60.0 / patient.rate), 0.3, 1.6)
    resp = 1 + 0.06 * np.sin(2 * np.pi * 0.22 * beats + rng.uniform(0, 6.3))
    normal = np.flatnonzero(~pvc)
    waves = patient.kinds > (0 if plan.rhythm == AF else -1)  # AF: no P wave
    kinds, vec = patient.kinds[waves], patient.vectors[waves]
    off, wid = patient.offsets[waves], patient.widths[waves]
    gain = np.where(kinds[None, :] == 1, resp[normal, None], 1.0)
    gain = gain * rng.uniform(0.97, 1.03, (len(normal), 1))
    rr = rr_prev[normal, None]  # QT follows the preceding RR; PR fits inside it even when fast
    shift = np.where(kinds == 2, off * np.sqrt(rr), np.where(kinds == 0, np.maximum(off, -0.55 * rr), off))
    centers = [(beats[normal, None] + shift).ravel()]
    widths = [np.broadcast_to(wid, (len(normal), len(wid))).ravel()]
    vectors = [(gain[:, :, None] * vec[None]).reshape(-1, 3)]
    if pvc.any():  # wide bizarre QRS without P, discordant T
        b, v = beats[pvc], patient.pvc_vector
        centers.append(np.concatenate([b - 0.01, b + 0.04, b + 0.33]))
        widths.append(np.repeat([0.032, 0.028, 0.07], len(b)))
        vectors.append(np.repeat([v, -0.35 * v, -0.25 * v], len(b), axis=0))
    centers, widths, vectors = np.concatenate(centers), np.concatenate(widths), np.concatenate(vectors)
    half = int(np.ceil(4.5 * widths.max() * fs))
    idx = np.rint(centers * fs).astype(np.int64)[:, None] + np.arange(-half, half + 1)[None, :]
    g = np.exp(-0.5 * ((idx / fs - centers[:, None]) / widths[:, None]) ** 2)
    keep = (idx >= 0) & (idx < n)
    vcg = np.stack([np.bincount(idx[keep], weights=(g * vectors[:, a, None])[keep], minlength=n)
                    for a in range(3)])
    t = np.arange(n) / fs
    if plan.rhythm == AF:  # fibrillatory baseline, strongest in V1
        freq, amp, ph = rng.uniform(4.5, 8, 3), rng.uniform(0.015, 0.04, 3), rng.uniform(0, 6.3, 3)
        f_wave = (amp[:, None] * np.sin(2 * np.pi * freq[:, None] * t + ph[:, None]
                                         + 0.8 * np.sin(2 * np.pi * 0.3 * t))).sum(0)
        vcg += _unit([-0.3, 0.5, -0.8])[:, None] * f_wave
    eight = DOWER @ vcg
    if noise:
        nrng = np.random.default_rng([seed, 4, index])
        # baseline wander: two slow sinusoids per independent lead
        freq, amp, ph = [nrng.uniform(low, high, (8, 2, 1)) for low, high in ((0.05, 0.4), (0.02, 0.15), (0, 6.3))]
        eight += (amp * np.sin(2 * np.pi * freq * t + ph)).sum(1)
        eight += nrng.uniform(0.005, 0.025) * nrng.standard_normal((8, n))
        if nrng.random() < 0.3:
            eight += nrng.uniform(0.005, 0.02, (8, 1)) * np.sin(2 * np.pi * nrng.choice([50, 60]) * t)
    return leads_from_independent(eight)


def synthesize_signal(record: SynthRecord, noise: bool = True) -> np.ndarray:
    """The float signal (12, T) in mV of a written record, before int16 quantisation, in the
    canonical lead order; ``noise=False`` leaves out baseline wander, powerline and white noise."""
    patient = make_patient(record.seed, record.patient_index, record.layout)
    plan = plan_record(record.seed, record.index, patient)
    return render(record.seed, record.index, patient, plan, noise)


def quantise(signal: np.ndarray) -> np.ndarray:
    """mV -> int16 ADC units at 1000/mV, the storage of both archives."""
    return np.clip(np.rint(signal * GAIN), -32768, 32767).astype(np.int16)


def assign_patients(records: int, patients: int, rng: np.random.Generator) -> np.ndarray:
    """Patient index of each record: every patient gets one record, a second when there are
    enough records, and the rest go to a skewed few (as in real archives)."""
    order = [np.arange(patients)]
    rest = records - patients
    if rest >= patients:
        order.append(np.arange(patients))
        rest -= patients
        weights = rng.gamma(1.0, size=patients)
        order.append(rng.choice(patients, rest, p=weights / weights.sum()))
    else:
        order.append(rng.choice(patients, rest, replace=False))
    return rng.permutation(np.concatenate(order))


def records_of(people: list, owner: Sequence[int], seed: int, indices: Optional[Sequence[int]] = None):
    """(index, patient index, patient, plan, float signal in mV (12, T)) of every record (or those
    of ``indices``), in order; record i belongs to ``people[owner[i]]``."""
    for index in range(len(owner)) if indices is None else indices:
        patient = people[owner[index]]
        plan = plan_record(seed, index, patient)
        yield index, owner[index], patient, plan, render(seed, index, patient, plan, noise=True)


def write_header(path: Path, first: str, file_name: str, fmt: str, gain: str, val: np.ndarray,
                  names: Sequence[str], comments: Sequence[str]) -> None:
    checksums = (val.astype(np.int64).sum(1) + 32768) % 65536 - 32768  # WFDB 16-bit checksum
    lines = [first] + [f"{file_name} {fmt} {gain} 16 0 {int(val[i, 0])} {int(checksums[i])} 0 {name}"
                       for i, name in enumerate(names)] + [f"#{c}" for c in comments]
    path.write_text("\n".join(lines) + "\n")


def write_wfdb16(path: Path, val: np.ndarray, fs: int, names: Sequence[str] = tuple(lead.upper() for lead in LEADS),
                 gain: int = GAIN, when: str = "") -> None:
    """A WFDB format-16 record (interleaved little-endian int16 ``.dat`` and its ``.hea``; by
    default with PTB-XL's lead names AVR, AVL, AVF) at ``gain`` ADC units per mV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".dat").write_bytes(np.ascontiguousarray(val.T).astype("<i2").tobytes())
    write_header(path.with_suffix(".hea"), f"{path.name} 12 {fs} {val.shape[1]}{when}", f"{path.name}.dat",
                 "16", f"{gain}.0(0)/mV", val, names, [])


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _write_challenge(out: Path, patient: Patient, plan: RecordPlan, val: np.ndarray, number: int) -> Path:
    """One Challenge record: ``.mat`` (MATLAB v4, 24-byte header for ``val``) and its header."""
    name = f"{patient.source.prefix}{number:04d}"
    path = out / "training" / patient.source.name / f"g{(number - 1) // GROUP_SIZE + 1}" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path.with_suffix(".mat"), {"val": val}, format="4")
    comments = [f"Age: {patient.age}", f"Sex: {patient.sex}", f"Dx: {','.join(plan.codes)}",
                "Rx: Unknown", "Hx: Unknown", "Sx: Unknown"]
    write_header(path.with_suffix(".hea"), f"{name} 12 {plan.fs} {plan.num_samples} {plan.stamp}",
                 f"{name}.mat", "16+24", f"{GAIN}/mV", val, LEADS, comments)
    return path


def write_wfdb_archive(out: Path, people: list, owner: list[int], seed: int, layout: str) -> list[SynthRecord]:
    """The ``physionet2021`` or ``ptbxl`` archive of ``people`` (record i belongs to
    ``people[owner[i]]``) under ``out``; returns what was written, in record order."""
    written, table, per_source = [], [], Counter()
    for index, p, patient, plan, signal in records_of(people, owner, seed):
        val = quantise(signal)
        if layout == "physionet2021":
            per_source[patient.source.name] += 1
            path = _write_challenge(out, patient, plan, val, per_source[patient.source.name])
            codes, pid = plan.codes, f"P{p + 1:05d}"
        else:  # PTB-XL: 500 Hz original, 100 Hz by polyphase decimation
            ecg_id = index + 1
            folder = f"{ecg_id // 1000 * 1000:05d}"
            hr, lr = f"records500/{folder}/{ecg_id:05d}_hr", f"records100/{folder}/{ecg_id:05d}_lr"
            write_wfdb16(out / hr, val, plan.fs)
            low = scipy.signal.resample_poly(val.astype(np.float64) / GAIN, 1, 5, axis=1)
            write_wfdb16(out / lr, quantise(low), plan.fs // 5)
            # scp_codes: diagnostic statements carry a likelihood, form and rhythm ones 0
            scp = {CLASSES[c][1]: (100.0 if SCP_STATEMENTS[CLASSES[c][1]][1] else 0.0) for c in plan.codes}
            scp = {"NORM": 100.0, **scp} if set(plan.codes) <= {NSR} else scp
            codes = tuple(dict.fromkeys(SCP[s] for s in scp if s in SCP))
            path, pid = out / hr, str(p + 1)
            axis = "LAD" if LAD in plan.codes else "RAD" if RAD in plan.codes else "MID"
            sex = int(patient.sex == "Female")  # PTB-XL: 0 male, 1 female
            table.append((p, [ecg_id, f"{p + 1}.0", patient.age, sex, plan.stamp, repr(scp), axis], [lr, hr]))
        written.append(SynthRecord(path.name, path, pid, plan.fs, plan.num_samples, codes,
                                   patient.source.name, layout, seed, index, p))
    if layout == "physionet2021":
        write_csv(out / "patients.csv", ["record", "patient"], sorted([r.name, r.patient] for r in written))
        return written
    folds = np.empty(len(people), dtype=int)  # ptbxl_database.csv's strat_fold, 1-10 drawn per patient
    folds[np.random.default_rng([seed, 5]).permutation(len(people))] = np.arange(len(people)) % 10 + 1
    write_csv(out / "ptbxl_database.csv",
              ["ecg_id", "patient_id", "age", "sex", "recording_date", "scp_codes", "heart_axis", "strat_fold",
               "filename_lr", "filename_hr"], [head + [int(folds[p])] + tail for p, head, tail in table])
    write_csv(out / "scp_statements.csv", SCP_STATEMENT_COLUMNS,
              [[statement, *row] for statement, row in SCP_STATEMENTS.items()])
    return written
