"""Any folder of WFDB records (``--layout wfdb``), and the WFDB reading that the PhysioNet/CinC
2021, PTB-XL and MIMIC-IV-ECG layouts share.

A record is a ``.hea`` header with its signal files. Before wfdb reads a record, its header is
checked as written: wfdb fills a missing sampling frequency, number of samples or gain with
defaults, drops bytes outside ASCII, and allocates whatever the header claims; each of those is
a :class:`RecordError` here instead. Patients and labels may come from a CSV (``--labels``,
columns ``record`` and any of ``patient``, ``codes``); a record it does not list has patient ""
(the preparation then makes it its own patient under its relative path: names may repeat across
folders in such collections) and the codes of its header's ``#Dx`` line.
"""
from __future__ import annotations

import math
import re
import struct
import threading
from pathlib import Path
from typing import Iterator, Optional, Sequence

from .base import (
    RawRecord, RecordError, RecordRef, Source, check_plausible, read_record_table, register_source, split_codes,
    file_head, walk_files,
)

# Bytes per sample of the WFDB formats whose file size follows from the header (to tell a
# truncated signal file from another read error). Compressed formats (FLAC 508/516/524) are absent.
_BYTES_PER_SAMPLE = {"8": 1, "80": 1, "16": 2, "61": 2, "160": 2, "212": 1.5, "24": 3, "32": 4}


def wfdb_refs(src: Path, table: dict, patient_is_name: bool) -> Iterator[RecordRef]:
    found = [(header.relative_to(src).with_suffix("").as_posix(), header.with_suffix(""))
             for header in src.rglob("*.hea") if not header.name.startswith(".") and header.is_file()]
    for key, path in sorted(found):
        name = path.name
        patient, codes = table.get(key) or table.get(name) or ("", None)
        if not patient and patient_is_name:
            patient = name
        yield RecordRef(path=path, name=name, key=key, patient=patient, codes=codes)


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
    for file_name in dict.fromkeys(info.file_name or []):
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


def _mat_shape_problem(path: Path, info) -> Optional[RecordError]:
    """A MATLAB v4 ``.mat`` signal file (PhysioNet/CinC's ``16+24``) whose array is not the
    header's signals x samples. wfdb reads the first frames the header describes whatever the file
    holds, so an 11-signal header over a 12-channel file is read with every lead shifted (about
    0.9 mV off in a real case) and no error; the file's own header (type, rows, columns, imaginary
    flag, name length: five int32) says what it holds."""
    for file_name in dict.fromkeys(info.file_name or []):
        if not file_name.endswith(".mat") or not (path.parent / file_name).is_file():
            continue
        channels = sum(1 for f in info.file_name if f == file_name)
        head = file_head(path.parent / file_name, 20)
        if len(head) < 20:
            continue  # unreadable (wfdb's read reports it) or truncated (_truncation says so)
        for order in "<>":
            kind, rows, columns, imaginary, _ = struct.unpack(f"{order}5i", head)
            if 0 <= kind < 5000 and rows >= 0 and columns >= 0 and imaginary in (0, 1):
                break
        else:
            continue  # not a MATLAB v4 header: nothing to compare
        if (int(rows), int(columns)) != (channels, int(info.sig_len or 0)):
            return RecordError(f"signal file {file_name} holds {int(rows)} signals x {int(columns)} samples, the "
                               f"header describes {channels} x {int(info.sig_len or 0)}; re-export the record so "
                               "that they agree", "header disagrees with signal file")
    return None


def _checked_header(path: Path):
    """The parsed header of ``path`` once checked for what wfdb would misread silently or spend
    unbounded memory on, before the signal is read: bytes outside ASCII in a line that is not a
    comment (wfdb drops them: a unit ``1000/µV`` would be read as volts), more signals than it
    describes, signal files smaller than the claimed samples need; raises :class:`RecordError`
    for those. None when wfdb cannot parse it (left to ``wfdb.rdrecord`` and
    :func:`_diagnose_read_failure`) or for a multi-segment record."""
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
    if problem := _header_field_problem(lines, header.name):
        raise RecordError(problem, "bad header field")
    if written := _written_rate_and_length(lines):  # before wfdb allocates what the header claims
        check_plausible(*written)
    try:
        info = _rdheader(path, lines)
    except Exception:  # wfdb raises many types for a bad header
        return None
    if getattr(info, "n_seg", None):  # multi-segment: each segment has its own header
        return None
    if written and not math.isclose(float(info.fs or 0), written[0], rel_tol=1e-9):
        raise RecordError(f"header {header.name}: sampling frequency written {written[0]:g} Hz, wfdb reads "
                          f"{info.fs:g} Hz (it takes no exponent); write it as a plain decimal number", "bad header field")
    described = len(info.file_name or [])
    if info.n_sig != described:
        raise RecordError(f"header {header.name} claims {info.n_sig} signals but describes {described}",
                          "unreadable header")
    if problem := _truncation(path, info) or _mat_shape_problem(path, info):
        raise problem
    return info


# The note a record read through a CinC record line ``NAME.mat ...`` carries (counted in the summary).
MAT_NAMED_NOTE = "record line names the record NAME.mat (CinC 2021 Georgia headers); read as NAME"


def _mat_named(lines: Sequence[bytes], name: str) -> Optional[list[bytes]]:
    """The header's lines with its record line's name ``NAME.mat`` written ``NAME``, when the
    record line names the record that way (the real CinC 2021 Georgia headers: ``E00001.mat 12
    500 5000 ...`` in ``E00001.hea``, which wfdb refuses); None otherwise. Only the header's own
    name plus ``.mat`` is read so: any other name wfdb refuses stays refused."""
    for index, line in enumerate(lines):
        if not line.strip() or line.lstrip().startswith(b"#"):
            continue
        first, *rest = line.split(None, 1)
        if first != f"{name}.mat".encode():
            return None
        return [*lines[:index], b" ".join([name.encode(), *rest]), *lines[index + 1:]]
    return None


def _rdheader(path: Path, lines: Sequence[bytes]):
    """``wfdb.rdheader(path)``; a record line naming the record ``NAME.mat`` (see
    :func:`_mat_named`) is parsed as ``NAME`` from a corrected copy, and the header object gets
    ``mat_named = True``. wfdb only parses header files, so the copy goes to a temporary folder."""
    import tempfile

    import wfdb

    fixed = _mat_named(lines, path.name)
    if fixed is None:
        return wfdb.rdheader(str(path))
    with tempfile.TemporaryDirectory(prefix="fairseq_ecg_hea.") as folder:
        copy = Path(folder) / path.name
        copy.with_name(path.name + ".hea").write_bytes(b"\n".join(fixed) + b"\n")
        info = wfdb.rdheader(str(copy))
    info.mat_named = True
    return info


# The header fields as the WFDB specification writes them (wfdb.io header grammar, "header(5)").
_NUMBER = r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"
_FS_FIELD = re.compile(rf"(?P<fs>{_NUMBER})(?:/{_NUMBER}(?:\({_NUMBER}\))?)?")
_FORMAT_FIELD = re.compile(r"(?P<fmt>[0-9]+)(?:x(?P<spf>[0-9]+))?(?::(?P<skew>[0-9]+))?(?:\+(?P<offset>[0-9]+))?")
_GAIN_FIELD = re.compile(rf"(?P<gain>{_NUMBER})(?:\((?P<baseline>[-+]?[0-9]+)\))?(?:/(?P<units>\S+))?")
_INTEGER = re.compile(r"[-+]?[0-9]+")
_WFDB_FORMATS = {"8", "16", "24", "32", "61", "80", "160", "212", "310", "311", "508", "516", "524"}
_SIGNAL_INTEGER_FIELDS = ("ADC resolution", "ADC zero", "initial value", "checksum", "block size")


def _header_rows(lines: Sequence[bytes]) -> list[tuple[int, list[str]]]:
    """(line number, fields) of each line that is neither blank nor a comment: the record line first."""
    return [(number, line.decode("ascii", "replace").split()) for number, line in enumerate(lines, start=1)
            if line.strip() and not line.lstrip().startswith(b"#")]


def _written_rate_and_length(lines: Sequence[bytes]) -> Optional[tuple[float, int]]:
    """The sampling frequency and number of samples as the record line writes them (wfdb reads
    ``1e-300`` as 1 Hz), for a header that :func:`_header_field_problem` passed; None for a
    multi-segment record."""
    rows = _header_rows(lines)
    fields = rows[0][1] if rows else []
    if len(fields) < 4 or "/" in fields[0]:
        return None
    return float(_FS_FIELD.fullmatch(fields[2])["fs"]), int(fields[3])


def _header_field_problem(lines: Sequence[bytes], header_name: str) -> str:
    """What is missing or malformed in the record line and the signal lines as written, "" if
    nothing. wfdb fills a missing sampling frequency (250 Hz), number of samples (the file's
    length) or gain (200 per mV) with defaults, so a record could be played at the wrong speed or
    scale without a word; here each must be written and well formed. An absent baseline is fine:
    the WFDB specification makes it the ADC zero. A multi-segment record is left to wfdb."""
    rows = _header_rows(lines)
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


def _diagnose_read_failure(path: Path, error: Exception, info=None) -> RecordError:
    """Why ``wfdb.rdrecord`` failed: header, missing file, truncated file or something else
    (``info``: the header as :func:`_checked_header` parsed it, if it could)."""
    import wfdb

    header = path.with_name(path.name + ".hea")
    if not header.is_file():
        return RecordError(f"header {header.name} not found", "unreadable header")
    try:
        info = info or wfdb.rdheader(str(path))
    except Exception as header_error:  # wfdb raises many types for a bad header
        return RecordError(f"unreadable header {header.name} ({type(header_error).__name__}: {header_error})",
                           "unreadable header")
    for file_name in dict.fromkeys(info.file_name or []):
        if not (path.parent / file_name).is_file():
            return RecordError(f"signal file {file_name} is missing", "missing signal file")
    return _truncation(path, info) or RecordError(f"unreadable signal ({type(error).__name__}: {error})",
                                                  "unreadable signal file")


def read_wfdb(path: Path) -> RawRecord:
    """One WFDB record (``path`` without extension) in physical units, channels first."""
    path = Path(path)
    header = _checked_header(path)
    try:
        record = _rdrecord(path, header)
    except Exception as error:  # wfdb raises ValueError, IndexError, FileNotFoundError, ...
        raise _diagnose_read_failure(path, error, header) from None
    fs = float(record.fs or 0)
    if not fs > 0:
        raise RecordError(f"sampling frequency {record.fs!r} in the header is not positive", "unreadable header")
    signal = record.p_signal
    if signal is None or signal.ndim != 2 or signal.shape[0] == 0:
        raise RecordError("no samples in the record", "too short")
    return RawRecord(signal=signal.T, names=list(record.sig_name or []), units=list(record.units or []),
                     sample_rate=fs, header_codes=_header_codes(record.comments),
                     expected_samples=int(record.sig_len or 0),
                     notes=(MAT_NAMED_NOTE,) if getattr(header, "mat_named", False) else ())


@register_source
class WfdbFolder(Source):
    """Any folder of WFDB records; the archives of WFDB records (PTB-XL, ...) inherit its files and reader."""

    name = "wfdb"
    summary = "any folder of WFDB records (.hea + signal files); --labels CSV: record[,patient][,codes]"
    priority = 90
    files = (".hea",)

    def recognise(self, src: Path) -> bool:
        return next(walk_files(src, (".hea",), limit=1), None) is not None

    def discover(self, src: Path, labels_csv: Optional[Path] = None, use_folds: bool = True) -> Iterator[RecordRef]:
        table = read_record_table(labels_csv) if labels_csv else {}
        yield from wfdb_refs(src, table, patient_is_name=False)

    def read(self, ref: RecordRef) -> RawRecord:
        return read_wfdb(ref.path)
