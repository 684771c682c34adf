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
  of zeros, exam id 0) and are not listed. The HDF5 is read one exam at a time (h5py; the file
  is never loaded whole), with one file kept open per worker.
* Labels: the six columns map to SNOMED CT codes of CinC 2021 scored classes
  (:data:`CODE15_TO_SNOMED`); only these six classes are known, the other 20 are marked unknown
  in the label files (not negatives). Patient: ``patient_id``.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from ..leads import LEADS
from .base import LayoutError, RawRecord, RecordError, RecordRef, Source, register_source, walk_files

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

    def recognise(self, src: Path) -> bool:
        return (src / EXAMS_CSV).is_file() and next(walk_files(src, (".hdf5", ".h5"), limit=1), None) is not None

    def discover(self, src: Path, labels_csv: Optional[Path] = None, use_folds: bool = True) -> Iterator[RecordRef]:
        import h5py

        table = Path(labels_csv) if labels_csv else src / EXAMS_CSV
        try:
            handle = open(table, newline="")
        except OSError as error:
            raise LayoutError(f"{table}: cannot read ({error.strerror}); the code15 layout needs {EXAMS_CSV}") from None
        exams: dict[int, tuple[int, dict]] = {}
        with handle:
            reader = csv.DictReader(handle)
            missing = {"exam_id", "patient_id", *CODE15_TO_SNOMED} - set(reader.fieldnames or [])
            if missing:
                raise LayoutError(f"{table}: missing column(s) {', '.join(sorted(missing))}; is this CODE-15%'s exams.csv?")
            for line, row in enumerate(reader, start=2):
                exam = _int_id((row.get("exam_id") or "").strip())
                if exam is not None:
                    exams[exam] = (line, row)
        known = tuple(CODE15_TO_SNOMED.values())
        refs = []
        for path in walk_files(src, (".hdf5", ".h5")):
            try:
                with h5py.File(path, "r") as h5:
                    ids = np.asarray(h5["exam_id"][()]).astype(np.int64).ravel()
                    shape = h5["tracings"].shape
            except (OSError, KeyError) as error:
                raise LayoutError(f"{path}: not a CODE-15% HDF5 file with tracings and exam_id ({error})") from None
            for index, exam in enumerate(ids.tolist()):
                if exam not in exams:
                    continue  # not an exam (the padding row at the end of each file)
                line, row = exams[exam]
                problem = ""
                if len(shape) != 3 or shape[2] != 12 or index >= shape[0] or shape[1] != CODE15_SAMPLES:
                    problem = (f"{path.name}: tracings has shape {shape}, expected [exams, {CODE15_SAMPLES}, 12] "
                               f"covering exam_id (CODE-15% tracings are {CODE15_SAMPLES} samples, 10.24 s at 400 Hz)")
                codes = []
                for column, code in CODE15_TO_SNOMED.items():
                    value = (row.get(column) or "").strip().lower()
                    if value in _TRUE:
                        codes.append(code)
                    elif value not in _FALSE:
                        problem = problem or f"{EXAMS_CSV} line {line}: {column} {row.get(column)!r} is not True/False"
                patient = _int_id((row.get("patient_id") or "").strip())
                refs.append(RecordRef(path=path, name=str(exam), key=f"{path.stem}/{exam}",
                                      patient="" if patient is None else str(patient), codes=tuple(codes),
                                      problem=problem, item=index, known=known))
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
