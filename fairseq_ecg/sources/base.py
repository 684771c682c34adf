"""What every source shares: the record types, the registry of layouts, and the steps that turn
what a reader found into a usable record (lead mapping to the canonical order, presence mask,
unit and value checks, minimum length) and resample it.

A source module (one per archive layout) registers a :class:`Source` with :func:`register_source`:
``recognise`` says whether a folder is of its layout (for ``--layout auto``), ``discover`` lists
the records of a folder as :class:`RecordRef` (sorted by key, with patient ids and codes), and
``read`` returns one record as a :class:`RawRecord` in physical units with its channel names.
:func:`read_record` then applies the shared checks, so a new source touches no other module.
Every way a record can be unusable raises :class:`RecordError` with a one-line reason, so that
the preparation can skip that record, say why, and carry on with the others.
"""
from __future__ import annotations

import csv
import hashlib
import os
import secrets
import tempfile
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import numpy as np
import scipy.signal

from ..errors import EcgError
from ..leads import LEADS, NUM_LEADS, UnknownLeadError, canonical_lead

PATIENTS_CSV = "patients.csv"
DEFAULT_MIN_SECONDS = 5.0
AUTO = "auto"
MIXED_LAYOUTS = "+"  # a folder of exports read by several layouts, one per file: "muse_xml+dicom"
# Physical units accepted for ECG channels and their factor to mV. An empty unit is WFDB's default (mV).
UNIT_TO_MV = {"": 1.0, "mv": 1.0, "millivolt": 1.0, "millivolts": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3,
              "microvolt": 1e-3, "microvolts": 1e-3, "v": 1e3}
# Salt of the patient-id hashes of hospital exports: an id from a PACS or MUSE export never reaches
# a manifest, side file or log as written. FAIRSEQ_ECG_PATIENT_SALT, else a random salt kept in a
# salt file (see patient_salt_from).
PATIENT_SALT_ENV = "FAIRSEQ_ECG_PATIENT_SALT"
UNKNOWN_LEAD_NOTE = "dropped unknown lead"  # a record's note for each channel left out (see read_record)


class RecordError(ValueError):
    """A record that cannot be used; ``reason`` is one line that says what is wrong, ``kind`` a
    short category for the preparation summary (``too short``, ``NaN/Inf``, ...)."""

    def __init__(self, reason: str, kind: str = "unreadable") -> None:
        reason = " ".join(str(reason).split())  # one line, whatever the underlying message was
        super().__init__(reason)
        self.reason = reason
        self.kind = kind


@dataclass(frozen=True)
class Bounds:
    """What a plausible ECG record is: a sampling rate in [``min_rate``, ``max_rate``] Hz, at most
    ``max_seconds`` long, no kept sample beyond ``max_mv`` in magnitude. The defaults pass every
    archive the project reads (PTB-XL's 100 Hz files, CinC 2021's 257-1000 Hz, INCART's 30 min;
    an int16 signal at 1000 per mV reaches 32.8 mV at most); outside them a header or table is
    wrong (a rate of 0.5 Hz, a gain off by 10**18), and such a record would become a huge or
    meaningless array. Saturated leads of an ADC at 200 per mV (up to 164 mV) exceed ``max_mv``:
    raise it to keep them."""

    min_rate: float = 50.0
    max_rate: float = 10_000.0
    max_seconds: float = 7200.0
    max_mv: float = 50.0

    def check(self, rate: float, samples: int = 0) -> None:
        """:class:`RecordError` (kind ``implausible``) for a rate or a length outside the bounds,
        before a reader allocates the samples (``samples``: as the file states them; 0: unknown)."""
        if not self.min_rate <= rate <= self.max_rate:
            side, bound, flag = (("below", self.min_rate, "--min-rate") if not rate >= self.min_rate
                                 else ("above", self.max_rate, "--max-rate"))
            raise RecordError(f"sampling rate {rate:g} Hz is {side} the plausible bound of {bound:g} Hz ({flag})",
                              "implausible")
        if samples / rate > self.max_seconds:
            raise RecordError(f"{samples} samples at {rate:g} Hz last {samples / rate:.6g} s, beyond the plausible "
                              f"bound of {self.max_seconds:g} s ({self.max_seconds / 3600:g} h; --max-seconds)",
                              "implausible")

    def describe(self) -> str:
        return f"{self.min_rate:g}-{self.max_rate:g}Hz,{self.max_seconds:g}s,{self.max_mv:g}mV"


DEFAULT_BOUNDS = Bounds()
_BOUNDS: ContextVar[Bounds] = ContextVar("fairseq_ecg_bounds", default=DEFAULT_BOUNDS)


def check_plausible(rate: float, samples: int = 0) -> None:
    """For a reader, as soon as it knows the rate (and the stated length): refuse a record outside
    the bounds that :func:`read_record` was given, before its samples are decoded or allocated."""
    _BOUNDS.get().check(float(rate), int(samples))


class LayoutError(EcgError):
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
    layout: str = ""  # the source that reads it ("" = wfdb)
    item: int = -1  # position inside a multi-record file (CODE-15% HDF5 row), else -1
    known: Optional[tuple[str, ...]] = None  # codes whose presence is known; None = every class
    statement: str = ""  # free text kept per record in statements.tsv (machine report), not mapped
    meta: tuple[str, ...] = ()  # what the source's discovery found for its reader (rate, leads, ...)

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
    statement: str = ""
    derived: tuple[str, ...] = ()  # leads computed from others by the source (not recorded)

    @property
    def num_samples(self) -> int:
        return int(self.signal.shape[1])


@dataclass
class RawRecord:
    """What a reader found, before the shared checks: ``signal`` (channels, T) in the physical
    ``units`` of each channel (``""`` = mV), channel ``names`` as written, ``sample_rate``, the
    codes the file itself carries, notes (e.g. derived leads) and a free-text ``statement``."""

    signal: np.ndarray
    names: Sequence[str]
    units: Sequence[str]
    sample_rate: float
    header_codes: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    statement: str = ""
    expected_samples: int = 0  # what the file says it holds (0: not stated)
    derived: tuple[str, ...] = ()  # canonical names of leads the reader computed from others


class Source:
    """One archive layout. Subclasses set ``name`` and ``summary`` and implement the three methods."""

    name = ""
    summary = ""  # one line for --help
    priority = 50  # --layout auto tries lower numbers first (specific layouts before generic ones)
    private = False  # hospital exports: names and ids are salted hashes, and no reason names the file
    files: tuple[str, ...] = ()  # suffixes of the files it reads records from (which files are its)
    one_file_one_record = False  # each file is a whole record: it can be read beside another layout's

    def recognise(self, src: Path) -> bool:
        """Whether ``src`` is a folder of this layout (cheap: looks at a few files only)."""
        raise NotImplementedError

    def discover(self, src: Path, labels_csv: Optional[Path] = None, use_folds: bool = True) -> Iterator[RecordRef]:
        """The records of ``src``, sorted by key; raises :class:`LayoutError` when it cannot list them."""
        raise NotImplementedError

    def read(self, ref: RecordRef) -> RawRecord:
        """One record, or :class:`RecordError` with the reason."""
        raise NotImplementedError


SOURCES: dict[str, Source] = {}


def register_source(cls: type) -> type:
    """Class decorator: make a :class:`Source` available as ``--layout NAME``."""
    if not cls.name or cls.name in SOURCES or cls.name == AUTO:
        raise ValueError(f"source name {cls.name!r} is empty, taken or reserved")
    SOURCES[cls.name] = cls()
    return cls


def layouts() -> tuple[str, ...]:
    """Registered layout names, in --layout auto's order of trying."""
    return tuple(sorted(SOURCES, key=lambda n: (SOURCES[n].priority, n)))


def get_source(name: str) -> Source:
    if name not in SOURCES:
        raise LayoutError(f"unknown layout {name!r}; choose one of {', '.join(layouts())} or {AUTO}")
    return SOURCES[name]


def detect_layout(src: Path) -> str:
    """The layout of ``src`` (``--layout auto``); :class:`LayoutError` listing the known ones if none
    fits. A folder holding files of several layouts is read whole or not at all: exports of one file
    per record (MUSE XML beside DICOM) are read each by its own layout (``muse_xml+dicom``); other
    mixtures stop with one line naming what would be left unread."""
    found = [name for name in layouts() if SOURCES[name].recognise(Path(src))]
    if not found:
        raise LayoutError(f"{src}: no known archive layout recognised (known: {', '.join(layouts())}); "
                          "pass --layout NAME or check the folder")
    chosen = _one_per_kind_of_file(found)
    if len(chosen) > 1 and not all(SOURCES[name].one_file_one_record for name in chosen):
        raise LayoutError(f"{src}: holds files of several layouts ({_file_counts(Path(src), chosen)}); one "
                          "folder is read as one archive: put each in a folder of its own and pass the "
                          f"folders as sources, or pass --layout NAME (the others' files are then left out, counted)")
    return MIXED_LAYOUTS.join(chosen)


def unread_files(src: Path, layout: str) -> str:
    """The files of other recognised layouts in ``src`` that ``layout`` does not read, counted by
    layout (``"dicom: 3 .dcm"``); "" when there are none."""
    names = layout.split(MIXED_LAYOUTS)
    mine = {suffix for name in names for suffix in SOURCES[name].files}
    others = [n for n in layouts() if n not in names and SOURCES[n].files and not set(SOURCES[n].files) & mine
              and SOURCES[n].recognise(Path(src))]
    kinds = _one_per_kind_of_file(others)
    return _file_counts(Path(src), kinds) if kinds else ""


def _one_per_kind_of_file(names: Sequence[str]) -> list[str]:
    """The first of ``names`` for each kind of file: physionet2021, not also wfdb, for the same .hea."""
    chosen: list[str] = []
    for name in names:
        if not any(set(SOURCES[name].files) & set(SOURCES[other].files) for other in chosen):
            chosen.append(name)
    return chosen


def _file_counts(src: Path, names: Sequence[str]) -> str:
    return ", ".join(f"{name}: {sum(1 for _ in walk_files(src, SOURCES[name].files))} {'/'.join(SOURCES[name].files)}"
                     for name in names)


def discover(src: Path, layout: str, labels_csv: Optional[Path] = None,
             use_folds: bool = True) -> Iterator[RecordRef]:
    """The records of an archive, sorted by ``key`` so that every run sees them in the same order;
    ``layout`` may be ``auto``. Each ref names its layout, so :func:`read_record` finds its reader."""
    names = (detect_layout(Path(src)) if layout == AUTO else layout).split(MIXED_LAYOUTS)
    refs = []
    for name in names:
        source = get_source(name)
        for ref in source.discover(Path(src), Path(labels_csv) if labels_csv else None, use_folds):
            refs.append(ref if ref.layout else replace(ref, layout=name))
    yield from (refs if len(names) == 1 else sorted(refs, key=lambda ref: ref.key))


class SaltError(LayoutError):
    """A salt file that does not fit the salt in effect (hashes would change in silence); one line."""


_SALT_HEADER = (f"# fairseq_ecg patient salt ({PATIENT_SALT_ENV}): keep this file private; whoever holds it can "
                "test guessed patient ids and file names against the hashes written with it")
_salt_file: Optional[Path] = None  # the salt file of the command running (patient_salt_from)
_salt_create = True
_salt_in_effect: Optional[str] = None
_process_salt = secrets.token_hex(32)  # library use outside any command: stable within the process only


def salt_fingerprint(salt: str) -> str:
    """What a salt file keeps of an explicit salt: enough to tell it from another, not the salt."""
    return hashlib.sha256(f"fairseq_ecg salt fingerprint\0{salt}".encode()).hexdigest()[:16]


def _read_salt_file(path: Path) -> Optional[tuple[str, str]]:
    """("random", salt) or ("explicit", fingerprint) from a salt file; None when there is none."""
    try:
        lines = [line.split() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        raise SaltError(f"{path}: cannot read the patient salt file ({error})") from None
    if len(lines) != 1 or len(lines[0]) != 2 or lines[0][0] not in ("random", "explicit"):
        raise SaltError(f"{path}: not a patient salt file (one line 'random SALT' or 'explicit FINGERPRINT'); "
                        "restore it from a copy, or write into a new folder")
    return lines[0][0], lines[0][1]


def _write_salt_file(path: Path, kind: str, value: str) -> tuple[str, str]:
    """Create the salt file (mode 0600) unless another process just did; returns what it holds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # 0600
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{_SALT_HEADER}\n{kind} {value}\n")
            handle.flush()
            os.fsync(handle.fileno())
        with suppress(FileExistsError):
            os.link(tmp, path)  # never replaces a salt file another run wrote meanwhile
    finally:
        os.unlink(tmp)
    return _read_salt_file(path) or (kind, value)


def resolve_salt(path: Optional[Path], create: bool = True) -> str:
    """The salt of the patient hashes written beside ``path`` (a salt file).

    ``FAIRSEQ_ECG_PATIENT_SALT`` when set (the file then keeps only its fingerprint, so that a run
    with another salt or none is refused), else the random salt the file keeps, else (``create``)
    a new random salt saved there. Hashes never change in silence: a salt that does not fit the
    file is a :class:`SaltError`. Without a file: the variable, else a salt of this process."""
    explicit = os.environ.get(PATIENT_SALT_ENV, "")
    if path is None:
        return explicit or _process_salt
    kept = _read_salt_file(path)
    if kept is None:
        if not create:
            raise SaltError(f"{path}: no patient salt file there (is it a folder prepared by fairseq-ecg-manifest "
                            f"from MUSE or DICOM exports?); give that folder, or set {PATIENT_SALT_ENV}")
        kept = _write_salt_file(path, "explicit", salt_fingerprint(explicit)) if explicit else \
            _write_salt_file(path, "random", secrets.token_hex(32))
    kind, value = kept
    if kind == "random":
        if explicit and explicit != value:
            raise SaltError(f"{path.parent}: its patient ids were hashed with its own random salt ({path}), but "
                            f"{PATIENT_SALT_ENV} is set to another; unset it, or write into a new folder")
        return value
    if not explicit:
        raise SaltError(f"{path.parent}: its patient ids were hashed with an explicit {PATIENT_SALT_ENV} "
                        f"(fingerprint in {path}); set it again to the same value")
    if salt_fingerprint(explicit) != value:
        raise SaltError(f"{path.parent}: its patient ids were hashed with another {PATIENT_SALT_ENV} "
                        f"(fingerprint in {path}); set the same value, or write into a new folder")
    return explicit


@contextmanager
def patient_salt_from(path: Union[Path, str, None], create: bool = True) -> Iterator[None]:
    """Within the block, :func:`salted_patient` hashes with the salt of the salt file ``path``
    (see :func:`resolve_salt`), read or created only when a hash is first needed: a folder of
    WFDB records, which hashes nothing, gets no salt file."""
    global _salt_file, _salt_create, _salt_in_effect
    before = (_salt_file, _salt_create, _salt_in_effect)
    _salt_file, _salt_create, _salt_in_effect = (Path(path) if path is not None else None), create, None
    try:
        yield
    finally:
        _salt_file, _salt_create, _salt_in_effect = before


def salted_patient(value: str) -> str:
    """A patient id (or an export's file name) from a hospital export as a salted hash (16 hex
    digits): stable for a salt, the same patient in every export, and not the id itself. "" stays
    "" (unknown). The salt is never a public constant (see :func:`resolve_salt`)."""
    global _salt_in_effect
    value = str(value).strip()
    if not value:
        return ""
    if _salt_file is not None and _salt_in_effect is None:
        _salt_in_effect = resolve_salt(_salt_file, _salt_create)
    salt = resolve_salt(None) if _salt_file is None else _salt_in_effect
    encoded = f"{salt}\0{value}".encode("utf-8", "surrogateescape")
    return hashlib.sha256(encoded).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# tables


def split_codes(text: str) -> tuple[str, ...]:
    """Codes from a ``#Dx`` value or a CSV cell: separated by commas, semicolons, ``|`` or spaces."""
    for sep in ";| ":
        text = text.replace(sep, ",")
    return tuple(dict.fromkeys(code.strip() for code in text.split(",") if code.strip()))


def _not_utf8(text: str) -> bool:
    """Whether ``text`` holds bytes that were not UTF-8 (decoded with ``surrogateescape``)."""
    return any("\udc80" <= ch <= "\udcff" for ch in text)


TableRow = tuple[int, Optional[dict[str, str]], str]  # (line, stripped cells by column or None, problem)


def read_table(path: Path, needs: str, required: Sequence[str] = (),
               hint: str = "") -> tuple[list[str], list[TableRow]]:
    """A source's CSV table, read the way real exports need: UTF-8 with or without a byte-order
    mark (Excel writes one), each row kept with its line and its problem instead of a traceback:
    bytes that are not UTF-8 (``FILE line N: not valid UTF-8``), a field beyond the csv module's
    limit of 131,072 characters or a NUL byte (that row only: ``None``); blank lines are left out.
    Returns the header's column names (stripped) and the rows. ``needs``: what the layout needs,
    for the message when the file cannot be opened. Raises LayoutError when the header itself is
    unreadable or lacks a ``required`` column (the message ends with ``hint``)."""
    try:
        handle = open(path, newline="", encoding="utf-8-sig", errors="surrogateescape")
    except OSError as error:
        raise LayoutError(f"{path}: cannot read ({error.strerror}); {needs}") from None
    rows: list[TableRow] = []
    with handle:
        reader = csv.reader(handle)
        try:
            header = next(reader, [])
        except csv.Error as error:
            raise LayoutError(f"{path} line 1: not a readable CSV header ({error})") from None
        if any(_not_utf8(cell) for cell in header):
            raise LayoutError(f"{path} line 1: the header is not valid UTF-8; re-save the file as UTF-8")
        columns = [cell.strip() for cell in header]
        if missing := [name for name in required if name not in columns]:
            raise LayoutError(f"{path}: missing column(s) {', '.join(missing)}; {hint}")
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                break
            except csv.Error as error:
                rows.append((reader.line_num, None, f"{path.name} line {reader.line_num}: {error}; row skipped"))
                continue
            if not any(cell.strip() for cell in cells):
                continue
            problem = (f"{path.name} line {reader.line_num}: not valid UTF-8; re-save the file as UTF-8"
                       if any(_not_utf8(cell) for cell in cells) else "")
            row = {name: (cells[i].strip() if i < len(cells) else "") for i, name in enumerate(columns) if name}
            rows.append((reader.line_num, row, problem))
    return columns, rows


def read_record_table(path: Path) -> dict[str, tuple[str, Optional[tuple[str, ...]]]]:
    """A CSV with a ``record`` column and optional ``patient`` and ``codes`` columns, as
    ``record -> (patient, codes or None)``; ``record`` is a record name or a relative path
    without extension (both are looked up). The user's own table: a row that cannot be read stops
    the run in one line naming the file and line (a wrong label is worse than none)."""
    fields, rows = read_table(path, "pass an existing CSV with --labels")
    if "record" not in fields:
        raise LayoutError(f"{path}: needs a 'record' column (and 'patient' and/or 'codes'); found columns {fields}")
    table = {}
    for line, row, problem in rows:
        if problem:
            raise LayoutError(f"{path.parent / problem}")
        if not row.get("record"):
            continue
        codes = split_codes(row["codes"]) if "codes" in fields else None
        table[row["record"].removesuffix(".hea")] = (row.get("patient", ""), codes)
    return table


# ---------------------------------------------------------------------------------------------
# the shared checks


def read_record(ref: RecordRef, min_seconds: float = DEFAULT_MIN_SECONDS, bounds: Bounds = DEFAULT_BOUNDS) -> EcgRecord:
    """Read one record through its source, then into the canonical 12-lead layout, or raise
    :class:`RecordError`.

    Lead names go through :func:`fairseq_ecg.leads.canonical_lead` (any case, ``AVR``/``avr``,
    ``D1``...). A channel with an unknown name (``MLII`` is not lead II, a respiration channel,
    ...) is dropped and noted in ``notes``; the record is skipped only when no known lead is left.
    Two channels naming the same lead make the record ambiguous: skipped. A lead missing from the
    record, or present but exactly zero throughout, is all zeros with ``present`` False, so that
    the mask says which leads carry signal. Units must be mV or uV (converted to mV). Skipped
    too: whatever the source refuses (each reader says why), any NaN/Inf sample in a kept lead or
    a value beyond float32, an all-zero record, records shorter than ``min_seconds``, and records
    outside the plausible ``bounds`` (readers check rate and length before decoding the samples).
    """
    if ref.problem:
        raise RecordError(ref.problem, "bad table row")
    source = get_source(ref.layout or "wfdb")
    token = _BOUNDS.set(bounds)
    try:
        raw = source.read(ref)
    except Exception as error:  # a hospital export's reason (an OSError's text too) must not name its path
        if not source.private:
            raise
        reason, kind = ((error.reason, error.kind) if isinstance(error, RecordError)
                        else (f"unexpected error ({type(error).__name__}: {error})", "unexpected error"))
        raise RecordError(_unnamed(reason, ref), kind) from None
    finally:
        _BOUNDS.reset(token)
    return canonical_record(raw, ref, min_seconds, bounds)


def _unnamed(reason: str, ref: RecordRef) -> str:
    """``reason`` with the export's path and file name (which carry MRNs) replaced by the key."""
    for text in sorted({str(ref.path), ref.path.as_posix(), ref.path.name}, key=len, reverse=True):
        if text:
            reason = reason.replace(text, ref.key)
    return reason


def canonical_record(raw: RawRecord, ref: RecordRef, min_seconds: float = DEFAULT_MIN_SECONDS,
                     bounds: Bounds = DEFAULT_BOUNDS) -> EcgRecord:
    """The shared steps after a reader: rate, length, lead mapping, units, values, presence."""
    fs = float(raw.sample_rate or 0)
    if not fs > 0:
        raise RecordError(f"sampling frequency {raw.sample_rate!r} is not positive", "unreadable header")
    bounds.check(fs, raw.signal.shape[-1] if raw.signal is not None and raw.signal.ndim == 2 else 0)
    signal = raw.signal
    if signal is None or signal.ndim != 2 or signal.shape[1] == 0:
        raise RecordError("no samples in the record", "too short")
    if raw.expected_samples and signal.shape[1] != raw.expected_samples:
        raise RecordError(f"signal holds {signal.shape[1]} samples, the header says {raw.expected_samples}",
                          "truncated signal file")
    seconds = signal.shape[1] / fs
    if seconds < min_seconds:
        raise RecordError(f"too short: {seconds:.3g} s < {min_seconds:g} s minimum", "too short")

    channels = signal.shape[0]  # names and units: one per channel, "" where the reader has none
    names = (list(raw.names or []) + [""] * channels)[:channels]
    units = (list(raw.units or []) + [""] * channels)[:channels]
    channel_of: dict[int, int] = {}
    unknown: list[str] = []
    for channel, name in enumerate(names):
        try:
            lead = LEADS.index(canonical_lead(name or ""))
        except UnknownLeadError:
            unknown.append(name or "")
            continue
        if lead in channel_of:
            raise RecordError(f"duplicate lead name {LEADS[lead]!r} (channels {channel_of[lead] + 1} and "
                              f"{channel + 1})", "duplicate lead")
        channel_of[lead] = channel
    if not channel_of:
        listed = ", ".join(repr(n) for n in unknown) or "none"
        plural = "s" if len(unknown) > 1 else ""
        raise RecordError(f"unknown lead name{plural} {listed} (no known lead left)", "unknown lead names")

    out = np.zeros((NUM_LEADS, signal.shape[1]), dtype=np.float32)
    for lead, channel in channel_of.items():
        unit = str(units[channel] or "").strip().lower()
        if unit not in UNIT_TO_MV:
            raise RecordError(f"lead {LEADS[lead]} is in unit {units[channel]!r}; expected mV or uV", "unknown unit")
        column = np.asarray(signal[channel], dtype=np.float64)
        if not np.isfinite(column).all():
            bad = int((~np.isfinite(column)).sum())
            raise RecordError(f"{bad} NaN/Inf sample(s) in lead {LEADS[lead]}", "NaN/Inf")
        with np.errstate(over="ignore"):
            out[lead] = column * UNIT_TO_MV[unit]
        if not np.isfinite(out[lead]).all():  # finite in float64, beyond float32 (e.g. a wrong ADC gain)
            raise RecordError(f"lead {LEADS[lead]} reaches {np.abs(column).max() * UNIT_TO_MV[unit]:.3g} mV, beyond "
                              "float32; check the ADC gain in the header", "out of range")
        peak = float(np.abs(out[lead]).max())
        if peak > bounds.max_mv:
            raise RecordError(f"lead {LEADS[lead]} reaches {peak:.3g} mV, beyond the plausible bound of "
                              f"{bounds.max_mv:g} mV (--max-mv); check the gain or unit", "implausible")
    present = np.any(out != 0, axis=1)
    if not present.any():
        raise RecordError("all-zero signal (every lead is 0 mV throughout)", "all-zero")
    return EcgRecord(name=ref.name, signal=out, present=present, sample_rate=fs, patient=ref.patient, key=ref.key,
                     codes=ref.codes if ref.codes is not None else raw.header_codes, header_codes=raw.header_codes,
                     notes=tuple(raw.notes) + tuple(f"{UNKNOWN_LEAD_NOTE} {n!r}" for n in unknown),
                     statement=ref.statement or raw.statement, derived=tuple(raw.derived))


def file_head(path: Path, size: int) -> bytes:
    """The first ``size`` bytes of ``path``, b"" when it cannot be read (for cheap recognition)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(size)
    except OSError:
        return b""


def walk_files(src: Path, suffixes: Sequence[str], limit: int = 0) -> Iterator[Path]:
    """Files below ``src`` whose names end with one of ``suffixes`` (case-insensitive), hidden
    ones left out, without following folder links (an archive may link to itself); stops after
    ``limit`` files when given (for cheap recognition)."""
    found = 0
    suffixes = tuple(s.lower() for s in suffixes)
    for folder, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or not name.lower().endswith(suffixes):
                continue
            path = Path(folder) / name
            if path.is_file():
                yield path
                found += 1
                if limit and found >= limit:
                    return


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


