"""Reading ECG archives into records: discovery per layout, one record at a time, resampling.

This is the only place that knows the on-disk archive formats (``/work/shared/DATA_FORMATS.md``):
the PhysioNet/CinC 2021 tree of ``.hea`` + ``.mat`` files, PTB-XL with its ``ptbxl_database.csv``,
and any folder of WFDB records. Everything downstream sees an :class:`EcgRecord`: a float32
(12, T) signal in mV in the canonical lead order of :mod:`fairseq_ecg.leads`, a lead-presence mask,
the sampling rate, SNOMED CT codes and a patient id.

Every way a record can be unusable raises :class:`RecordError` with a one-line reason, so that the
preparation step can skip that record, say why, and carry on with the others.
"""
from __future__ import annotations

import ast
import csv
import math
import re
import threading
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import scipy.signal

from .labels import PTBXL_SCP_TO_SNOMED
from .leads import LEADS, NUM_LEADS, UnknownLeadError, canonical_lead

LAYOUTS = ("physionet2021", "ptbxl", "wfdb")
PATIENTS_CSV = "patients.csv"
PTBXL_DATABASE = "ptbxl_database.csv"
DEFAULT_MIN_SECONDS = 5.0

# Bytes per sample of the WFDB formats whose file size follows from the header (to tell a
# truncated signal file from another read error). Compressed formats (FLAC 508/516/524) are absent.
_BYTES_PER_SAMPLE = {"8": 1, "80": 1, "16": 2, "61": 2, "160": 2, "212": 1.5, "24": 3, "32": 4}
# Physical units accepted for ECG channels and their factor to mV. An empty unit is WFDB's default (mV).
_UNIT_TO_MV = {"": 1.0, "mv": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "v": 1e3}


class RecordError(ValueError):
    """A record that cannot be used; ``reason`` is one line that says what is wrong, ``kind`` a
    short category for the preparation summary (``too short``, ``NaN/Inf``, ...)."""

    def __init__(self, reason: str, kind: str = "unreadable") -> None:
        reason = " ".join(str(reason).split())  # one line, whatever the underlying message was
        super().__init__(reason)
        self.reason = reason
        self.kind = kind


class LayoutError(ValueError):
    """An archive that cannot be listed at all (missing database CSV, CSV without the needed
    columns); the message names the file and the fix."""


@dataclass(frozen=True)
class RecordRef:
    """What to read: a WFDB record ``path`` (without extension), its ``name`` (the header's record
    name), ``key`` (unique relative name within the archive, used for output files), ``patient``
    ("" when unknown) and ``codes`` (``None``: take the ``#Dx`` line of the header). ``problem``
    is set when discovery already knows that the record is unusable (e.g. a bad CSV row)."""

    path: Path
    name: str
    key: str = ""
    patient: str = ""
    codes: Optional[tuple[str, ...]] = None
    problem: str = ""
    split: str = ""  # the archive's own recommended split (PTB-XL strat_fold); "" = by patient hash

    def __post_init__(self) -> None:
        if not self.key:
            object.__setattr__(self, "key", self.name)


@dataclass
class EcgRecord:
    """A record as read: ``signal`` float32 (12, T) in mV at ``sample_rate``, canonical lead order,
    zeros where ``present`` is False; ``codes`` are the labels in effect (table or header),
    ``header_codes`` those of the header's ``#Dx`` line; ``notes`` say what was dropped."""

    name: str
    signal: np.ndarray
    present: np.ndarray
    sample_rate: float
    codes: tuple[str, ...] = ()
    patient: str = ""
    key: str = ""
    header_codes: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def num_samples(self) -> int:
        return int(self.signal.shape[1])

    @property
    def seconds(self) -> float:
        return self.num_samples / self.sample_rate


# ---------------------------------------------------------------------------------------------
# discovery


def split_codes(text: str) -> tuple[str, ...]:
    """Codes from a ``#Dx`` value or a CSV cell: separated by commas, semicolons, ``|`` or spaces."""
    for sep in ";| ":
        text = text.replace(sep, ",")
    return tuple(dict.fromkeys(code.strip() for code in text.split(",") if code.strip()))


def read_record_table(path: Path) -> dict[str, tuple[str, Optional[tuple[str, ...]]]]:
    """A CSV with a ``record`` column and optional ``patient`` and ``codes`` columns, as
    ``record -> (patient, codes or None)``; ``record`` is a record name or a relative path
    without extension (both are looked up)."""
    try:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            fields = [f.strip() for f in (reader.fieldnames or [])]
            if "record" not in fields:
                raise LayoutError(f"{path}: needs a 'record' column (and 'patient' and/or 'codes'); "
                                  f"found columns {fields}")
            table = {}
            for row in reader:
                row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
                if not row.get("record"):
                    continue
                codes = split_codes(row["codes"]) if "codes" in fields else None
                table[row["record"].removesuffix(".hea")] = (row.get("patient", ""), codes)
            return table
    except OSError as error:
        raise LayoutError(f"{path}: cannot read ({error.strerror}); pass an existing CSV with --labels") from None
    except (csv.Error, UnicodeDecodeError) as error:
        raise LayoutError(f"{path}: not a readable CSV ({error})") from None


def _wfdb_refs(src: Path, table: dict, patient_is_name: bool) -> Iterator[RecordRef]:
    found = []
    for header in src.rglob("*.hea"):
        if header.name.startswith(".") or not header.is_file():
            continue
        key = header.relative_to(src).with_suffix("").as_posix()
        found.append((key, header.with_suffix("")))
    for key, path in sorted(found):
        name = path.name
        patient, codes = table.get(key) or table.get(name) or ("", None)
        if not patient and patient_is_name:
            patient = name
        yield RecordRef(path=path, name=name, key=key, patient=patient, codes=codes)


# PTB-XL's recommended split: stratified folds 1-10, patient-disjoint; 9 and 10 hold the
# records a cardiologist validated (PTB-XL paper, Wagner et al. 2020, "Usage Notes").
PTBXL_FOLD_SPLITS = {**{fold: "train" for fold in range(1, 9)}, 9: "valid", 10: "test"}
PTBXL_FOLD_COLUMN = "strat_fold"


def _ptbxl_fold(row: dict, line: int) -> tuple[str, str]:
    """(split, problem) of a ``ptbxl_database.csv`` row from its ``strat_fold``."""
    text = (row.get(PTBXL_FOLD_COLUMN) or "").strip()
    try:
        fold = float(text)
    except ValueError:
        fold = 0.0
    if fold not in PTBXL_FOLD_SPLITS:
        return "", (f"{PTBXL_DATABASE} line {line}: strat_fold {text!r} is not a fold 1-10 "
                    "(fix the row, or split by patient with --split-by patient-hash)")
    return PTBXL_FOLD_SPLITS[int(fold)], ""


def _ptbxl_refs(src: Path, database: Path, use_folds: bool = True) -> Iterator[RecordRef]:
    try:
        handle = open(database, newline="")
    except OSError as error:
        raise LayoutError(f"{database}: cannot read ({error.strerror}); the ptbxl layout needs "
                          f"{PTBXL_DATABASE} in the source folder (or pass it with --labels)") from None
    with handle:
        reader = csv.DictReader(handle)
        missing = {"patient_id", "filename_hr", "scp_codes"} - set(reader.fieldnames or [])
        if missing:
            raise LayoutError(f"{database}: missing column(s) {', '.join(sorted(missing))}; "
                              "is this a PTB-XL ptbxl_database.csv?")
        folds = use_folds and PTBXL_FOLD_COLUMN in (reader.fieldnames or [])
        refs = []
        split_of_patient: dict[str, tuple[str, int]] = {}
        for line, row in enumerate(reader, start=2):
            key = (row.get("filename_hr") or "").strip()
            problem = ""
            if not key:
                key, problem = f"{PTBXL_DATABASE}:{line}", f"{PTBXL_DATABASE} line {line}: empty filename_hr"
            try:
                patient = str(int(float(row["patient_id"])))
            except (TypeError, ValueError):
                patient = (row.get("patient_id") or "").strip()
            split = ""
            if folds:
                split, fold_problem = _ptbxl_fold(row, line)
                problem = problem or fold_problem
                first = split_of_patient.setdefault(patient, (split, line))
                if split and first[0] and first[0] != split:
                    raise LayoutError(f"{database} line {line}: patient {patient} is in strat_fold split {split} "
                                      f"here and {first[0]} on line {first[1]}; PTB-XL's folds are patient-disjoint, "
                                      "so fix the file or split by patient with --split-by patient-hash")
            try:
                scp = ast.literal_eval(row["scp_codes"] or "{}")
                if not isinstance(scp, dict):
                    raise ValueError
                codes = tuple(dict.fromkeys(PTBXL_SCP_TO_SNOMED[s] for s in scp if s in PTBXL_SCP_TO_SNOMED))
            except (ValueError, SyntaxError):
                codes = ()
                problem = problem or f"{PTBXL_DATABASE} line {line}: scp_codes {row['scp_codes']!r} is not a dict"
            refs.append(RecordRef(path=src / key, name=Path(key).name, key=key, patient=patient,
                                  codes=codes, problem=problem, split=split))
    yield from sorted(refs, key=lambda ref: ref.key)


def discover(src: Path, layout: str, labels_csv: Optional[Path] = None,
             use_folds: bool = True) -> Iterator[RecordRef]:
    """The records of an archive, sorted by ``key`` so that every run sees them in the same order.

    - ``physionet2021``: every ``*.hea`` below ``src``; the patient is the record name unless a
      CSV (``labels_csv``, else ``src/patients.csv``) gives it (columns ``record,patient``);
    - ``ptbxl``: the rows of ``ptbxl_database.csv`` (``labels_csv`` overrides its location),
      ``filename_hr`` records, ``patient_id``, ``scp_codes`` mapped through
      :data:`~fairseq_ecg.labels.PTBXL_SCP_TO_SNOMED`; with ``use_folds`` and a ``strat_fold``
      column, ``split`` is the recommended one (:data:`PTBXL_FOLD_SPLITS`);
    - ``wfdb``: every ``*.hea`` below ``src``; an optional CSV (columns ``record`` and any of
      ``patient``, ``codes``) gives patients and labels; a record it does not list has patient ""
      (the preparation then makes it its own patient under its relative path: names may repeat
      across folders in such collections).
    """
    src = Path(src)
    if layout not in LAYOUTS:
        raise LayoutError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if layout == "ptbxl":
        yield from _ptbxl_refs(src, Path(labels_csv) if labels_csv else src / PTBXL_DATABASE, use_folds)
        return
    if labels_csv is None and layout == "physionet2021" and (src / PATIENTS_CSV).is_file():
        labels_csv = src / PATIENTS_CSV
    table = read_record_table(Path(labels_csv)) if labels_csv else {}
    yield from _wfdb_refs(src, table, patient_is_name=layout == "physionet2021")


# ---------------------------------------------------------------------------------------------
# reading


def _header_codes(comments: Sequence[str]) -> tuple[str, ...]:
    for comment in comments or ():
        label, _, value = comment.partition(":")
        if label.strip().lower() == "dx":
            return split_codes(value)
    return ()


def _nth(values: Optional[Sequence], index: int, default: int) -> int:
    value = values[index] if values and index < len(values) else None
    return int(value) if value else default


def _truncation(path: Path, info) -> Optional[RecordError]:
    """A signal file smaller than the header's samples need (frames of every channel in the file,
    each ``samps_per_frame`` samples, for ``sig_len`` plus the largest skew)."""
    files = list(dict.fromkeys(info.file_name or []))
    for file_name in files:
        channels = [i for i, f in enumerate(info.file_name) if f == file_name]
        sizes = [_BYTES_PER_SAMPLE.get(str(info.fmt[i]).split("+")[0]) for i in channels]
        if None in sizes or not info.sig_len or not (path.parent / file_name).is_file():
            continue
        offsets = [int(info.byte_offset[i] or 0) for i in channels] if info.byte_offset else [0]
        if file_name.endswith(".mat") and not any(offsets):
            offsets = [24]  # MATLAB v4 header of a variable called 'val'
        per_frame = sum(size * _nth(info.samps_per_frame, i, 1) for size, i in zip(sizes, channels))
        skew = max(_nth(info.skew, i, 0) for i in channels)
        needed = int(math.ceil(max(offsets) + per_frame * (info.sig_len + skew)))
        actual = (path.parent / file_name).stat().st_size
        if actual < needed:
            return RecordError(f"signal file {file_name} is truncated ({actual} bytes, the header needs {needed})",
                               "truncated signal file")
    return None


def _checked_header(path: Path):
    """The parsed header of ``path`` once checked for what wfdb would misread silently or spend
    unbounded memory on, before the signal is read: bytes outside ASCII in a line that is not a
    comment (wfdb drops them: a unit ``1000/µV`` would be read as volts), more signals than it
    describes, signal files smaller than the claimed samples need; raises :class:`RecordError`
    for those. None when wfdb cannot parse it (left to ``wfdb.rdrecord`` and
    :func:`_diagnose_read_failure`) or for a multi-segment record."""
    import wfdb

    header = path.with_name(path.name + ".hea")
    try:
        lines = header.read_bytes().removeprefix(b"\xef\xbb\xbf").splitlines()  # a BOM is dropped harmlessly
    except OSError:
        return None
    for number, line in enumerate(lines, start=1):
        if not line.isascii() and not line.lstrip().startswith(b"#"):
            raise RecordError(f"header {header.name} line {number} holds bytes outside ASCII, which wfdb drops "
                              "(a file or lead name changes, a unit µV becomes V); write it in ASCII (e.g. uV)",
                              "non-ASCII header")
    problem = _header_field_problem(lines, header.name)
    if problem:
        raise RecordError(problem, "bad header field")
    try:
        info = wfdb.rdheader(str(path))
    except Exception:  # wfdb raises many types for a bad header
        return None
    if getattr(info, "n_seg", None):  # multi-segment: each segment has its own header
        return None
    described = len(info.file_name or [])
    if info.n_sig != described:
        raise RecordError(f"header {header.name} claims {info.n_sig} signals but describes {described}",
                          "unreadable header")
    problem = _truncation(path, info)
    if problem is not None:
        raise problem
    return info


# The header fields as the WFDB specification writes them (wfdb.io header grammar, "header(5)").
_NUMBER = r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"
_FS_FIELD = re.compile(rf"(?P<fs>{_NUMBER})(?:/{_NUMBER}(?:\({_NUMBER}\))?)?")
_FORMAT_FIELD = re.compile(r"(?P<fmt>[0-9]+)(?:x(?P<spf>[0-9]+))?(?::(?P<skew>[0-9]+))?(?:\+(?P<offset>[0-9]+))?")
_GAIN_FIELD = re.compile(rf"(?P<gain>{_NUMBER})(?:\((?P<baseline>[-+]?[0-9]+)\))?(?:/(?P<units>\S+))?")
_INTEGER = re.compile(r"[-+]?[0-9]+")
_WFDB_FORMATS = {"8", "16", "24", "32", "61", "80", "160", "212", "310", "311", "508", "516", "524"}
_SIGNAL_INTEGER_FIELDS = ("ADC resolution", "ADC zero", "initial value", "checksum", "block size")


def _header_field_problem(lines: Sequence[bytes], header_name: str) -> str:
    """What is missing or malformed in the record line and the signal lines as written, "" if
    nothing. wfdb fills a missing sampling frequency (250 Hz), number of samples (the file's
    length) or gain (200 per mV) with defaults, so a record could be played at the wrong speed or
    scale without a word; here each must be written and well formed. An absent baseline is fine:
    the WFDB specification makes it the ADC zero. A multi-segment record is left to wfdb."""
    rows = [(number, line.decode("ascii", "replace").split())
            for number, line in enumerate(lines, start=1) if line.strip() and not line.lstrip().startswith(b"#")]
    if not rows:
        return f"unreadable header {header_name}: no record line"
    number, fields = rows[0]
    where = f"header {header_name} line {number}"
    if "/" in fields[0]:  # name/segments: a multi-segment record, each segment has its own header
        return ""
    if len(fields) < 2 or not fields[1].isdigit():
        return f"unreadable {where}: the record line needs the number of signals after the record name"
    if len(fields) < 3:
        return f"{where}: no sampling frequency (wfdb would assume 250 Hz); write it after the number of signals"
    match = _FS_FIELD.fullmatch(fields[2])
    if not match or not 0 < float(match["fs"]) < math.inf:
        return f"{where}: sampling frequency {fields[2]!r} is not a positive number"
    if len(fields) < 4:
        return f"{where}: no number of samples per signal; write it after the sampling frequency"
    if not fields[3].isdigit() or int(fields[3]) == 0:
        return f"{where}: number of samples {fields[3]!r} is not a positive integer"
    count = int(fields[1])
    for number, fields in rows[1:1 + count]:
        where = f"header {header_name} line {number}"
        if len(fields) < 2:
            return f"{where}: the signal line needs a file name and a format"
        fmt = _FORMAT_FIELD.fullmatch(fields[1])
        if not fmt or fmt["fmt"] not in _WFDB_FORMATS:
            return f"{where}: format {fields[1]!r} is not a WFDB storage format ({', '.join(sorted(_WFDB_FORMATS, key=int))})"
        if len(fields) < 3:
            return f"{where}: no ADC gain (wfdb would assume 200 per physical unit); write it after the format"
        gain = _GAIN_FIELD.fullmatch(fields[2])
        if not gain:
            return f"{where}: ADC gain {fields[2]!r} is not gain[(baseline)][/units]"
        if not (math.isfinite(float(gain["gain"])) and float(gain["gain"]) != 0):
            return f"{where}: ADC gain {gain['gain']!r} is zero or not finite (uncalibrated: WFDB would assume 200)"
        for name, value in zip(_SIGNAL_INTEGER_FIELDS, fields[3:8]):
            if not _INTEGER.fullmatch(value):
                return f"{where}: {name} {value!r} is not an integer"
    return ""


_WFDB_PATCH_LOCK = threading.Lock()


def _rdrecord(path: Path, header=None):
    """``wfdb.rdrecord(path)``, given the header that :func:`_checked_header` parsed already.

    wfdb parses a header slowly (about 6 ms of the 7 that reading a 12-lead record takes) and
    ``rdrecord`` cannot be handed one, so its header reader answers with ``header`` for the
    duration of the call. Should wfdb stop looking ``rdheader`` up in ``wfdb.io.record``, this
    parses twice, as before: slower, never wrong.
    """
    import wfdb
    import wfdb.io.record as wfdb_record

    if header is None:
        return wfdb.rdrecord(str(path))
    with _WFDB_PATCH_LOCK:
        parse = wfdb_record.rdheader
        wfdb_record.rdheader = lambda *args, **kwargs: header
        try:
            return wfdb.rdrecord(str(path))
        finally:
            wfdb_record.rdheader = parse


def _diagnose_read_failure(path: Path, error: Exception) -> RecordError:
    """Why ``wfdb.rdrecord`` failed: header, missing file, truncated file or something else."""
    import wfdb

    header = path.with_name(path.name + ".hea")
    if not header.is_file():
        return RecordError(f"header {header.name} not found", "unreadable header")
    try:
        info = wfdb.rdheader(str(path))
    except Exception as header_error:  # wfdb raises many types for a bad header
        return RecordError(f"unreadable header {header.name} ({type(header_error).__name__}: {header_error})",
                           "unreadable header")
    files = list(dict.fromkeys(info.file_name or []))
    for file_name in files:
        if not (path.parent / file_name).is_file():
            return RecordError(f"signal file {file_name} is missing", "missing signal file")
    return _truncation(path, info) or RecordError(f"unreadable signal ({type(error).__name__}: {error})",
                                                  "unreadable signal file")


def read_record(ref: RecordRef, min_seconds: float = DEFAULT_MIN_SECONDS) -> EcgRecord:
    """Read one record into the canonical 12-lead layout, or raise :class:`RecordError`.

    Lead names go through :func:`fairseq_ecg.leads.canonical_lead` (any case, ``AVR``/``avr``,
    ``D1``...). A channel with an unknown name (``MLII`` is not lead II, a respiration channel,
    ...) is dropped and noted in ``notes``; the record is skipped only when no known lead is left.
    Two channels naming the same lead make the record ambiguous: skipped. A lead missing from the
    record, or present but exactly zero throughout, is all zeros with ``present`` False, so that
    the mask says which leads carry signal. Units must be mV or uV (converted to mV). Skipped
    too: an unreadable header, or one with bytes outside ASCII outside its comments (wfdb would
    drop them), a missing or truncated signal file, any NaN/Inf sample in a kept lead or a value
    beyond float32, an all-zero record, and records shorter than ``min_seconds``.
    """
    if ref.problem:
        raise RecordError(ref.problem, "bad table row")
    path = Path(ref.path)
    header = _checked_header(path)
    try:
        record = _rdrecord(path, header)
    except Exception as error:  # wfdb raises ValueError, IndexError, FileNotFoundError, ...
        raise _diagnose_read_failure(path, error) from None
    fs = float(record.fs or 0)
    if not fs > 0:
        raise RecordError(f"sampling frequency {record.fs!r} in the header is not positive", "unreadable header")
    signal = record.p_signal
    if signal is None or signal.ndim != 2 or signal.shape[0] == 0:
        raise RecordError("no samples in the record", "too short")
    if record.sig_len and signal.shape[0] != record.sig_len:
        raise RecordError(f"signal holds {signal.shape[0]} samples, the header says {record.sig_len}",
                          "truncated signal file")
    seconds = signal.shape[0] / fs
    if seconds < min_seconds:
        raise RecordError(f"too short: {seconds:.3g} s < {min_seconds:g} s minimum", "too short")

    names = list(record.sig_name or [])
    names += [""] * (signal.shape[1] - len(names))
    units = list(record.units or [])
    units += [""] * (signal.shape[1] - len(units))
    channel_of: dict[int, int] = {}
    unknown: list[str] = []
    for channel, raw in enumerate(names):
        try:
            lead = LEADS.index(canonical_lead(raw or ""))
        except UnknownLeadError:
            unknown.append(raw or "")
            continue
        if lead in channel_of:
            raise RecordError(f"duplicate lead name {LEADS[lead]!r} (channels {channel_of[lead] + 1} and "
                              f"{channel + 1})", "duplicate lead")
        channel_of[lead] = channel
    if not channel_of:
        listed = ", ".join(repr(n) for n in unknown) or "none"
        plural = "s" if len(unknown) > 1 else ""
        raise RecordError(f"unknown lead name{plural} {listed} (no known lead left)", "unknown lead names")

    out = np.zeros((NUM_LEADS, signal.shape[0]), dtype=np.float32)
    for lead, channel in channel_of.items():
        unit = str(units[channel] or "").strip().lower()
        if unit not in _UNIT_TO_MV:
            raise RecordError(f"lead {LEADS[lead]} is in unit {units[channel]!r}; expected mV or uV", "unknown unit")
        column = signal[:, channel]
        if not np.isfinite(column).all():
            bad = int((~np.isfinite(column)).sum())
            raise RecordError(f"{bad} NaN/Inf sample(s) in lead {LEADS[lead]}", "NaN/Inf")
        with np.errstate(over="ignore"):
            out[lead] = column * _UNIT_TO_MV[unit]
        if not np.isfinite(out[lead]).all():  # finite in float64, beyond float32 (e.g. a wrong ADC gain)
            raise RecordError(f"lead {LEADS[lead]} reaches {np.abs(column).max() * _UNIT_TO_MV[unit]:.3g} mV, beyond "
                              "float32; check the ADC gain in the header", "out of range")
    present = np.any(out != 0, axis=1)
    if not present.any():
        raise RecordError("all-zero signal (every lead is 0 mV throughout)", "all-zero")
    header_codes = _header_codes(record.comments)
    return EcgRecord(
        name=ref.name, signal=out, present=present, sample_rate=fs,
        codes=ref.codes if ref.codes is not None else header_codes, patient=ref.patient, key=ref.key,
        header_codes=header_codes, notes=tuple(f"dropped unknown lead {n!r}" for n in unknown),
    )


# ---------------------------------------------------------------------------------------------
# resampling


def resample_factors(source_rate: float, target_rate: float) -> tuple[int, int]:
    """(up, down) with up/down = target/source, reduced, denominator at most 1000 (257 -> 500 Hz
    is exactly 500/257)."""
    if not (source_rate > 0 and target_rate > 0):
        raise ValueError(f"sampling rates must be positive, got {source_rate} -> {target_rate}")
    ratio = (Fraction(str(target_rate)) / Fraction(str(source_rate))).limit_denominator(1000)
    return ratio.numerator, ratio.denominator


def resampled_length(num_samples: int, source_rate: float, target_rate: float) -> int:
    """Number of samples :func:`resample` returns for ``num_samples`` input samples."""
    up, down = resample_factors(source_rate, target_rate)
    return -(-num_samples * up // down)


def resample(signal: np.ndarray, source_rate: float, target_rate: float) -> np.ndarray:
    """Resample along the last axis with a polyphase anti-aliasing filter (``resample_poly``):
    content below both Nyquist frequencies keeps its amplitude, content above the target's
    Nyquist is removed instead of folding back. Edges are padded with the local linear trend, so
    a baseline offset does not ring at the start and end. Returns float32."""
    up, down = resample_factors(source_rate, target_rate)
    if up == down:
        return np.asarray(signal, dtype=np.float32)
    out = scipy.signal.resample_poly(np.asarray(signal, dtype=np.float64), up, down, axis=-1, padtype="line")
    return out.astype(np.float32)


__all__ = [
    "DEFAULT_MIN_SECONDS", "EcgRecord", "LAYOUTS", "LayoutError", "RecordError", "RecordRef", "discover",
    "read_record", "read_record_table", "resample", "resample_factors", "resampled_length", "split_codes",
]
