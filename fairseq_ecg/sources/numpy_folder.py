"""A folder of NumPy arrays (``--layout numpy``), for data that is already in arrays.

``records.csv`` at the folder's root lists the records, one row each::

    record,sample_rate,leads,axis,patient,codes[,units]
    a/0001.npy,500,"I,II,III,aVR,aVL,aVF,V1,V2,V3,V4,V5,V6",leads-first,P1,426783006
    b/0002.npz,250,"[II, V1]",samples-first,P2,

``record`` is a ``.npy`` file or a ``.npz`` holding one array (or one named ``signal``), relative to
the folder; ``leads`` names the array's channels in its order (any lead name
:mod:`fairseq_ecg.leads` knows; brackets optional); ``axis`` says which axis is which
(``leads-first``: (leads, samples); ``samples-first``: (samples, leads)); ``codes`` are SNOMED CT
codes (``;`` or ``,`` separated, optional); ``units`` mV (default) or uV. Arrays are read with
``allow_pickle=False`` and memory-mapped where possible.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from .base import LayoutError, RawRecord, RecordError, RecordRef, Source, read_table, register_source, split_codes
from .base import check_plausible

RECORDS_CSV = "records.csv"
REQUIRED = ("record", "sample_rate", "leads", "axis")
AXES = ("leads-first", "samples-first")


def _lead_list(text: str) -> list[str]:
    text = text.strip().strip("[]()")
    return [name.strip().strip("'\"") for name in text.replace(";", ",").split(",") if name.strip()]


def _row_problem(row: dict, line: int) -> str:
    where = f"{RECORDS_CSV} line {line}"
    try:
        rate = float(row["sample_rate"])
    except ValueError:
        rate = 0.0
    if not rate > 0 or rate == float("inf"):
        return f"{where}: sample_rate {row['sample_rate']!r} is not a positive number"
    if row["axis"] not in AXES:
        return f"{where}: axis {row['axis']!r} must be {' or '.join(AXES)}"
    if not _lead_list(row["leads"]):
        return f"{where}: no lead names in leads"
    if not row["record"].lower().endswith((".npy", ".npz")):
        return f"{where}: record {row['record']!r} is not a .npy or .npz file"
    return ""


def _load_array(path: Path) -> np.ndarray:
    if path.suffix.lower() == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            names = list(archive.files)
            if len(names) != 1 and "signal" not in names:
                raise RecordError(f"{path.name} holds arrays {names}; keep one, or name the signal 'signal'",
                                  "unreadable signal file")
            return np.asarray(archive["signal" if "signal" in names else names[0]])
    return np.load(path, mmap_mode="r", allow_pickle=False)


@register_source
class NumpyFolder(Source):
    name = "numpy"
    summary = "NumPy arrays (.npy/.npz) listed in records.csv: record,sample_rate,leads,axis,patient,codes"
    priority = 40
    files = (".npy",)

    def recognise(self, src: Path) -> bool:
        try:
            columns, _ = read_table(src / RECORDS_CSV, "")
        except LayoutError:
            return False
        return set(REQUIRED) <= set(columns)

    def discover(self, src: Path, labels_csv: Optional[Path] = None, use_folds: bool = True) -> Iterator[RecordRef]:
        table = Path(labels_csv) if labels_csv else src / RECORDS_CSV
        fields, rows = read_table(table, f"the numpy layout needs {RECORDS_CSV} (columns {', '.join(REQUIRED)}, "
                                  "patient, codes)", REQUIRED, f"needs {', '.join(REQUIRED)}")
        refs = []
        for line, row, problem in rows:
            if row is None or problem:  # unreadable: kept as a skipped record with the reason
                refs.append(RecordRef(path=table, name=f"line{line}", key=f"{RECORDS_CSV}:{line}", problem=problem))
                continue
            if not row.get("record"):
                continue
            key = row["record"].rsplit(".", 1)[0]
            codes = split_codes(row["codes"]) if "codes" in fields else None
            refs.append(RecordRef(path=src / row["record"], name=Path(key).name, key=key,
                                  patient=row.get("patient", ""), codes=codes, problem=_row_problem(row, line),
                                  meta=(row["sample_rate"], row["leads"], row["axis"], row.get("units", ""))))
        yield from sorted(refs, key=lambda ref: ref.key)

    def read(self, ref: RecordRef) -> RawRecord:
        rate, leads, axis, units = ref.meta
        try:
            array = _load_array(Path(ref.path))
        except FileNotFoundError:
            raise RecordError(f"array file {Path(ref.path).name} is missing", "missing signal file") from None
        except RecordError:
            raise
        except (OSError, ValueError) as error:  # truncated, pickled objects, not an array
            raise RecordError(f"unreadable array {Path(ref.path).name} ({type(error).__name__}: {error})",
                              "unreadable signal file") from None
        names = _lead_list(leads)
        if array.ndim != 2 or not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
            raise RecordError(f"{Path(ref.path).name} is a {array.ndim}-D {array.dtype} array; expected 2-D numbers",
                              "unreadable signal file")
        signal = array if axis == "leads-first" else array.T
        if signal.shape[0] != len(names):
            raise RecordError(f"{Path(ref.path).name} has {signal.shape[0]} channels along the {axis} axis, "
                              f"{RECORDS_CSV} names {len(names)} leads; check axis and leads", "lead count mismatch")
        check_plausible(float(rate), signal.shape[1])  # before a memory-mapped array is read whole
        return RawRecord(signal=np.asarray(signal, dtype=np.float64), names=names, units=[units] * len(names),
                         sample_rate=float(rate))
