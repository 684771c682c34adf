"""CODE-15% (``--layout code15``): 345,779 exams of 233,770 patients (Ribeiro et al., Zenodo 4916206).

On disk: ``exams.csv`` (columns ``exam_id, age, is_male, nn_predicted_age, 1dAVb, RBBB, LBBB, SB,
ST, AF, patient_id, death, timey, normal_ecg, trace_file``) and HDF5 files ``exams_partN.hdf5``,
each with ``tracings`` [exams, 4096, 12] float32 at 400 Hz and ``exam_id`` [exams].

* Leads: the HDF5 holds no names; the dataset's documentation gives the order DI, DII, DIII, AVR,
  AVL, AVF, V1-V6, i.e. the canonical order :data:`CODE15_LEADS`.
* Amplitude: taken as mV. The documentation's "scale 1e-4 V" sentence goes on to say a signal in
  V is multiplied by 1000 (i.e. mV) for its model, and the PhysioNet/CinC Challenge 2024
  conversion of CODE-15% writes the values as mV; the tests check that synthetic exams written
  this way read back with QRS amplitudes of about 0.5-3 mV.
* Length: recordings of 7 s (2,800 samples) or 10 s (4,000) are zero-padded symmetrically to
  4,096. A record is cut by the length, not by stripping zeros: the shortest of 2,800, 4,000 and
  4,096 samples whose symmetric padding is zero in every lead (a signal that happens to start
  at 0 mV keeps its samples).
* Rows whose ``exam_id`` is not in ``exams.csv`` are not exams (the files end with a padding row
  of zeros, exam id 0) and are not listed.
* Which tracing is which exam is checked, never assumed: a file whose ``exam_id`` and ``tracings``
  differ in length, an exam found in another file than its ``trace_file`` column names, an id
  written twice where the table cannot tell which row is the exam, two ``exams.csv`` lines of one
  exam that disagree, an id that is not an integer (NaN, text) and an exam of ``exams.csv`` found
  in no file are each skipped with the reason in ``skipped.tsv``: a wrong match would put one
  exam's labels on another's ECG. The HDF5 is read one exam at a time (h5py; the file
  is never loaded whole), with one file kept open per worker.
* Labels: the six columns map to SNOMED CT codes of CinC 2021 scored classes
  (:data:`CODE15_TO_SNOMED`); only these six classes are known, the other 20 are marked unknown
  in the label files (not negatives). Patient: ``patient_id``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from ..leads import LEADS
from .base import LayoutError, RawRecord, RecordError, RecordRef, Source, read_table, register_source, walk_files

EXAMS_CSV = "exams.csv"
CODE15_RATE = 400.0
CODE15_SAMPLES = 4096
CODE15_LENGTHS = (2800, 4000, 4096)  # 7 s, 10 s and the full 10.24 s, at 400 Hz
CODE15_LEADS = LEADS  # DI, DII, DIII, AVR, AVL, AVF, V1-V6 as documented
CODE15_TO_SNOMED = {
    "1dAVb": "270492004",  # first degree AV block
    "RBBB": "59118001",  # right bundle branch block (scored with complete RBBB 713427006)
    "LBBB": "164909002",  # left bundle branch block (scored with complete LBBB 733534002)
    "SB": "426177001",  # sinus bradycardia
    "ST": "427084000",  # sinus tachycardia
    "AF": "164889003",  # atrial fibrillation
}
_TRUE, _FALSE = {"true", "1", "1.0", "yes"}, {"false", "0", "0.0", "no"}


def _int_id(text: str) -> Optional[int]:
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value.is_integer() else None


def exam_length(tracing: np.ndarray) -> int:
    """Samples of a recording inside its symmetric zero padding (see the module docstring)."""
    total = tracing.shape[0]
    for length in CODE15_LENGTHS:
        if length > total:
            break
        pad = (total - length) // 2
        if not np.any(tracing[:pad]) and not np.any(tracing[pad + length:]):
            return length
    return total


def _exam_rows(table: Path) -> tuple[dict[int, tuple[int, dict, str]], list[RecordRef]]:
    """``exams.csv`` as exam -> (line, row, problem) and a skipped ref for each row without a usable
    ``exam_id``. An exam on two lines that disagree is a problem (which labels are its?); two
    identical lines are one exam."""
    columns = sorted({"exam_id", "patient_id", *CODE15_TO_SNOMED})
    _, rows = read_table(table, f"the code15 layout needs {EXAMS_CSV}", columns, "is this CODE-15%'s exams.csv?")
    exams: dict[int, tuple[int, dict, str]] = {}
    bad: list[RecordRef] = []
    for line, row, problem in rows:
        text = "" if row is None else row.get("exam_id", "")
        exam = None if problem else _int_id(text)
        if exam is None:
            bad.append(RecordRef(path=table, name=f"line{line}", key=f"{table.stem}/line{line}",
                                 problem=problem or f"{EXAMS_CSV} line {line}: exam_id {text!r} is not an integer id"))
        elif exam not in exams:
            exams[exam] = (line, row, "")
        elif exams[exam][1] != row:
            first = exams[exam][0]
            exams[exam] = (first, row, f"{EXAMS_CSV} lines {first} and {line} both give exam_id {exam}, with "
                                       "different values: which are its labels is unknown")
    return exams, bad


def _exam_ids(path: Path) -> tuple[list[Optional[int]], str, list[RecordRef]]:
    """An HDF5 file's exam ids by row, why its rows cannot be trusted ("" if they can), and a skipped
    ref for each row whose id is not an integer (NaN, text)."""
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            tracings, exam_id = h5.get("tracings"), h5.get("exam_id")
            if not isinstance(tracings, h5py.Dataset) or not isinstance(exam_id, h5py.Dataset):
                kinds = {n: type(d).__name__ if d is not None else "missing" for n, d in
                         (("tracings", tracings), ("exam_id", exam_id))}
                raise LayoutError(f"{path}: not a CODE-15% HDF5 file: tracings and exam_id must be datasets "
                                  f"(found {', '.join(f'{n}: {k}' for n, k in kinds.items())})")
            raw, shape = np.asarray(exam_id[()]).ravel(), tracings.shape
    except OSError as error:
        raise LayoutError(f"{path}: not a CODE-15% HDF5 file with tracings and exam_id ({error})") from None
    ids: list[Optional[int]] = []
    bad: list[RecordRef] = []
    for index, value in enumerate(raw.tolist()):
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        ids.append(_int_id(text.strip()))
        if ids[-1] is None:
            bad.append(RecordRef(path=path, name=f"row{index}", key=f"{path.stem}/row{index}", item=index,
                                 problem=f"{path.name}: exam_id of row {index} is {text[:40]!r}, not an integer id"))
    why = ""
    if len(shape) != 3 or shape[2] != 12 or shape[1] != CODE15_SAMPLES:
        why = (f"{path.name}: tracings has shape {shape}, expected [exams, {CODE15_SAMPLES}, 12] "
               f"(CODE-15% tracings are {CODE15_SAMPLES} samples, 10.24 s at 400 Hz)")
    elif shape[0] != len(ids):
        why = (f"{path.name}: exam_id has {len(ids)} entries but tracings {shape[0]}: which tracing is "
               "which exam cannot be told")
    return ids, why, bad


def _placement_problem(exam: int, line: int, trace_file: str, path: Path, places: list[tuple[Path, int]]) -> str:
    """Why the tracing at ``path`` may not be this exam's: ``exams.csv`` names another file, or the id
    is written more than once where the table cannot tell which row is the exam."""
    if trace_file and path.name != trace_file:
        return f"exam {exam} is in {path.name}, but {EXAMS_CSV} line {line} gives trace_file {trace_file}"
    rivals = [(p, i) for p, i in places if not trace_file or p.name == trace_file]
    if len(rivals) > 1:
        where = ", ".join(f"{p.name} row {i}" for p, i in rivals)
        return f"exam_id {exam} is written {len(rivals)} times ({where}): which tracing is its is unknown"
    return ""


_OPEN: dict = {}


def _tracings(path: Path):
    """The ``tracings`` and ``exam_id`` datasets of an HDF5 file, kept open per process (one file)."""
    import h5py

    key = str(path)
    if key not in _OPEN:
        for handle in _OPEN.values():
            handle.close()
        _OPEN.clear()
        _OPEN[key] = h5py.File(key, "r")
    return _OPEN[key]


@register_source
class Code15(Source):
    name = "code15"
    summary = "CODE-15%: exams.csv + exams_partN.hdf5 (tracings, exam_id); 6 labels, the rest unknown"
    priority = 20
    files = (".hdf5", ".h5")

    def recognise(self, src: Path) -> bool:
        return (src / EXAMS_CSV).is_file() and next(walk_files(src, (".hdf5", ".h5"), limit=1), None) is not None

    def discover(self, src: Path, labels_csv: Optional[Path] = None, use_folds: bool = True) -> Iterator[RecordRef]:
        table = Path(labels_csv) if labels_csv else src / EXAMS_CSV
        exams, refs = _exam_rows(table)
        found: dict[int, list[tuple[Path, int]]] = {}  # exam -> where its id is written: (file, row)
        shapes: dict[Path, str] = {}  # file -> why none of its rows can be trusted ("" if they can)
        for path in walk_files(src, (".hdf5", ".h5")):
            ids, shapes[path], unreadable = _exam_ids(path)
            refs += unreadable
            for index, exam in enumerate(ids):
                if exam in exams:
                    found.setdefault(exam, []).append((path, index))
        known = tuple(CODE15_TO_SNOMED.values())
        for exam, (line, row, problem) in exams.items():
            places = found.get(exam, [])
            trace_file = (row.get("trace_file") or "").strip()
            codes = []
            for column, code in CODE15_TO_SNOMED.items():
                value = (row.get(column) or "").strip().lower()
                if value in _TRUE:
                    codes.append(code)
                elif value not in _FALSE:
                    problem = problem or f"{EXAMS_CSV} line {line}: {column} {row.get(column)!r} is not True/False"
            patient = _int_id((row.get("patient_id") or "").strip())
            if not places:
                where = f"its trace_file {trace_file}" if trace_file else "any HDF5 file of the folder"
                places, problem = [(src / (trace_file or EXAMS_CSV), -1)], (
                    problem or f"{EXAMS_CSV} line {line}: exam {exam} is not in {where} (a part not downloaded?)")
            for path, index in places:
                why = problem or shapes[path] or _placement_problem(exam, line, trace_file, path, places)
                key = f"{path.stem}/{exam}" if len(places) == 1 else f"{path.stem}/{exam}_row{index}"
                refs.append(RecordRef(path=path, name=str(exam), key=key,
                                      patient="" if patient is None else str(patient), codes=tuple(codes),
                                      problem=why, item=index, known=known))
        yield from sorted(refs, key=lambda ref: ref.key)

    def read(self, ref: RecordRef) -> RawRecord:
        try:
            tracing = np.asarray(_tracings(Path(ref.path))["tracings"][ref.item], dtype=np.float64)
        except (OSError, KeyError, ValueError, IndexError) as error:
            raise RecordError(f"unreadable exam {ref.item} of {Path(ref.path).name} ({type(error).__name__}: {error})",
                              "unreadable signal file") from None
        length = exam_length(tracing)
        pad = (tracing.shape[0] - length) // 2
        return RawRecord(signal=tracing[pad:pad + length].T, names=list(CODE15_LEADS), units=["mV"] * 12,
                         sample_rate=CODE15_RATE)
