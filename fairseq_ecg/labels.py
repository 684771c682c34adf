"""The label tables: the PhysioNet/CinC Challenge 2021 scored classes, equivalent codes and weights;
PTB-XL's statements mapped to them, and PTB-XL's own benchmark tasks (:func:`ptbxl_task_labels`).

The tables ship inside the package (``fairseq_ecg/tables``, BSD-2-Clause, see LICENSE.txt there).
A class is one column of ``weights.csv``; a column may hold equivalent codes joined by ``|``
(e.g. ``713427006|59118001``, both scored as complete right bundle branch block).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from .errors import EcgError

TABLES_DIR = Path(__file__).resolve().parent / "tables"
WEIGHTS_CSV = TABLES_DIR / "weights.csv"
SINUS_RHYTHM = "426783006"


# A class whose presence the source does not record: ``?CODE`` in a label file, -1 in a target
# vector; the loss and every metric leave such entries out (manifests/README.md).
UNKNOWN_MARK = "?"
UNKNOWN = -1.0

@dataclass(frozen=True)
class LabelSet:
    """An ordered set of classes, each a group of equivalent SNOMED CT codes."""

    classes: tuple[tuple[str, ...], ...]
    weights: Optional[np.ndarray] = None  # class x class reward matrix, when known
    abbreviations: tuple[str, ...] = ()

    @property
    def names(self) -> list[str]:
        """Column names as ``weights.csv`` writes them (``a|b`` for equivalent codes)."""
        return ["|".join(codes) for codes in self.classes]

    def __len__(self) -> int:
        return len(self.classes)

    @property
    def code_to_index(self) -> dict[str, int]:
        return {code: i for i, codes in enumerate(self.classes) for code in codes}

    def index_of(self, code: str) -> int:
        return self.code_to_index[code]

    def encode(self, codes: Iterable[str]) -> np.ndarray:
        """Multi-hot vector for a record's codes; codes outside the set are ignored. A code written
        ``?CODE`` marks its class unknown (:data:`UNKNOWN`, -1) unless another code makes it positive."""
        lookup = self.code_to_index
        target = np.zeros(len(self), dtype=np.float32)
        unknown = []
        for code in codes:
            code = str(code).strip()
            if code.startswith(UNKNOWN_MARK) and code[1:] in lookup:
                unknown.append(lookup[code[1:]])
            elif code in lookup:
                target[lookup[code]] = 1.0
        for index in unknown:
            if target[index] == 0:
                target[index] = UNKNOWN
        return target

    def label_tokens(self, codes: Iterable[str], known: Optional[Iterable[str]] = None) -> list[str]:
        """A label line's tokens: the representative code of each class present, then ``?CODE``
        for each class the source does not label (``known``: the codes it does; None: all)."""
        target = self.encode(codes)
        tokens = [self.classes[i][0] for i in np.flatnonzero(target > 0)]
        if known is not None:
            labelled = self.encode(known) > 0
            tokens += [UNKNOWN_MARK + self.classes[i][0] for i in np.flatnonzero(~labelled & (target <= 0))]
        return tokens

    def canonical_codes(self, codes: Iterable[str]) -> list[str]:
        """The representative (first) code of each scored class present in ``codes``."""
        return [self.classes[i][0] for i in np.flatnonzero(self.encode(codes) > 0)]


def read_weights_csv(path: Path | str = WEIGHTS_CSV) -> LabelSet:
    """Read a Challenge ``weights.csv`` (first row and column: class codes, ``|`` for equivalents)."""
    path = Path(path)
    try:
        with open(path, newline="") as handle:
            rows = [row for row in csv.reader(handle) if row]
    except OSError as error:
        raise EcgError(f"{path}: cannot read weights table ({error.strerror})") from None
    if len(rows) < 2:
        raise EcgError(f"{path}: a weights table needs a header row and one row per class")
    header = [cell.strip() for cell in rows[0][1:]]
    classes = tuple(tuple(code.strip() for code in cell.split("|")) for cell in header)
    try:
        weights = np.array([[float(x) for x in row[1:]] for row in rows[1:]], dtype=np.float64)
    except ValueError as error:
        raise EcgError(f"{path}: non-numeric weight ({error})") from None
    if weights.shape != (len(classes), len(classes)):
        raise EcgError(
            f"{path}: weights must be {len(classes)}x{len(classes)} to match the header, "
            f"found {weights.shape[0]}x{weights.shape[1] if weights.ndim == 2 else 0}"
        )
    return LabelSet(classes=classes, weights=weights)


@lru_cache(maxsize=None)
def scored_labels() -> LabelSet:
    """The 26 scored classes of the 2021 Challenge, in the column order of ``weights.csv``."""
    base = read_weights_csv(WEIGHTS_CSV)
    abbreviations = {}
    with open(TABLES_DIR / "weights_abbreviations.csv", newline="") as handle:
        header = next(csv.reader(handle))[1:]
    for codes, abbr in zip(base.classes, header):
        abbreviations[codes] = abbr.strip()
    return LabelSet(base.classes, base.weights, tuple(abbreviations[c] for c in base.classes))


def scored_codes() -> list[str]:
    """Every SNOMED CT code that is scored (equivalent codes listed separately)."""
    return [code for codes in scored_labels().classes for code in codes]


SCORED_CLASSES: list[str] = scored_labels().names


def label_set_from_names(names: Sequence[str]) -> LabelSet:
    """A label set declared by a manifest (``classes.tsv``): the Challenge weights are attached
    when the names are exactly the scored classes."""
    scored = scored_labels()
    if list(names) == scored.names:
        return scored
    return LabelSet(tuple(tuple(n.split("|")) for n in names))


# PTB-XL writes SCP-ECG statements (``scp_codes``), not SNOMED CT codes. This table maps the
# statements that have a SNOMED CT code in the Challenge tables (``tables/dx_mapping_*.csv``), so
# a PTB-XL archive read directly gets the same labels as its Challenge 2021 copy. Statements
# without a one-to-one code (NORM, the myocardial infarction and ischaemia sites, ...) are left
# out on purpose: a wrong label is worse than a missing one.
PTBXL_SCP_TO_SNOMED: dict[str, str] = {
    # rhythm statements
    "SR": "426783006",      # sinus rhythm
    "AFIB": "164889003",    # atrial fibrillation
    "AFLT": "164890007",    # atrial flutter
    "STACH": "427084000",   # sinus tachycardia
    "SBRAD": "426177001",   # sinus bradycardia
    "SARRH": "427393009",   # sinus arrhythmia
    "SVTAC": "426761007",   # supraventricular tachycardia
    "PSVT": "67198005",     # paroxysmal supraventricular tachycardia
    "PACE": "10370003",     # pacing rhythm
    # conduction
    "1AVB": "270492004",    # first degree AV block
    "2AVB": "195042002",    # second degree AV block
    "3AVB": "27885002",     # complete heart block
    "CRBBB": "713427006",   # complete right bundle branch block
    "CLBBB": "733534002",   # complete left bundle branch block
    "IRBBB": "713426002",   # incomplete right bundle branch block
    "ILBBB": "251120003",   # incomplete left bundle branch block
    "IVCD": "698252002",    # nonspecific intraventricular conduction disorder
    "LAFB": "445118002",    # left anterior fascicular block
    "LPFB": "445211001",    # left posterior fascicular block
    "WPW": "74390002",      # Wolff-Parkinson-White pattern
    # beats and form
    "PVC": "427172004",     # premature ventricular contractions
    "PAC": "284470004",     # premature atrial contraction
    "LPR": "164947007",     # prolonged PR interval
    "LNGQT": "111975006",   # prolonged QT interval
    "INVT": "59931005",     # T wave inversion
    "TAB_": "164934002",    # T wave abnormal
    "LVOLT": "251146004",   # low QRS voltages
    "QWAVE": "164917005",   # Q wave abnormal
    "ABQRS": "164951009",   # abnormal QRS
    "STD_": "429622005",    # ST depression
    "STE_": "164931005",    # ST elevation
    # hypertrophy and atrial overload
    "LVH": "164873001",     # left ventricular hypertrophy
    "RVH": "89792004",      # right ventricular hypertrophy
    "LAO/LAE": "67741000119109",  # left atrial enlargement
}


# ---------------------------------------------------------------------------------------------
# PTB-XL's own label tasks (the benchmark of Strodthoff et al., IEEE JBHI 2021)

PTBXL_STATEMENTS = "scp_statements.csv"  # PTB-XL's statement table, beside ptbxl_database.csv
SNOMED_TASK = "snomed"  # PTB-XL's statements mapped to the CinC classes (PTBXL_SCP_TO_SNOMED)
PTBXL_TASKS = (SNOMED_TASK, "all", "diagnostic", "subdiagnostic", "superdiagnostic", "form", "rhythm")
_STATEMENT_COLUMNS = ("diagnostic", "form", "rhythm", "diagnostic_class", "diagnostic_subclass")


@dataclass(frozen=True)
class ScpStatement:
    """One row of ``scp_statements.csv``: which kinds the statement is of, and (diagnostic ones)
    its superclass (``diagnostic_class``) and subclass (``diagnostic_subclass``); "" when empty."""

    diagnostic: bool
    form: bool
    rhythm: bool
    diagnostic_class: str = ""
    diagnostic_subclass: str = ""


def _flag(text: str) -> bool:
    """A kind column of ``scp_statements.csv``: 1.0 or empty (the benchmark keeps rows == 1.0)."""
    try:
        return float(text) == 1.0
    except ValueError:
        return False


def read_scp_statements(path: Path | str) -> dict[str, ScpStatement]:
    """PTB-XL's ``scp_statements.csv``: statement (the first, unnamed column) -> its row."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except OSError as error:
        raise EcgError(f"{path}: cannot read ({error.strerror}); the PTB-XL label tasks need PTB-XL's "
                         f"{PTBXL_STATEMENTS} beside ptbxl_database.csv (it ships with the archive)") from None
    except (UnicodeDecodeError, csv.Error) as error:  # the task's classes: one bad line stops the task
        raise EcgError(f"{path}: not a readable UTF-8 CSV ({error}); re-save it as UTF-8 or restore PTB-XL's "
                         "own file") from None
    header = [cell.strip() for cell in rows[0]] if rows else []
    missing = [c for c in _STATEMENT_COLUMNS if c not in header]
    if missing:
        raise EcgError(f"{path}: missing column(s) {', '.join(missing)}; is this PTB-XL's {PTBXL_STATEMENTS}? "
                         "(use --ptbxl-labels snomed to map the statements to the CinC classes instead)")
    column = {name: header.index(name) for name in _STATEMENT_COLUMNS}
    table = {}
    for line, row in enumerate(rows[1:], start=2):
        if not row or not row[0].strip():
            continue
        row = row + [""] * (len(header) - len(row))
        cell = {name: row[i].strip() for name, i in column.items()}
        table[row[0].strip()] = ScpStatement(_flag(cell["diagnostic"]), _flag(cell["form"]), _flag(cell["rhythm"]),
                                             cell["diagnostic_class"], cell["diagnostic_subclass"])
    return table


def ptbxl_task_labels(statements: Iterable[str], table: dict[str, ScpStatement], task: str) -> tuple[str, ...]:
    """The labels of one record in a PTB-XL benchmark ``task``, from the keys of its ``scp_codes``
    (every key, whatever its likelihood, as ``compute_label_aggregations`` of ecg_ptbxl_benchmarking
    does): ``all`` every statement; ``diagnostic``/``form``/``rhythm`` the statements of that kind;
    ``subdiagnostic``/``superdiagnostic`` the ``diagnostic_subclass``/``diagnostic_class`` of the
    diagnostic statements. Sorted, each once. The reference's ``select_data`` then keeps the
    classes seen more than ``min_samples`` times, and its experiments use ``min_samples=0``: every
    class present in the archive, which is what the preparation writes to ``classes.tsv``."""
    if task not in PTBXL_TASKS or task == SNOMED_TASK:
        raise EcgError(f"unknown PTB-XL label task {task!r}; choose one of {', '.join(PTBXL_TASKS[1:])}")
    found = set()
    for key in statements:
        row = table.get(key)
        if task == "all":
            found.add(key)
        elif row is None:
            continue
        elif task in ("form", "rhythm"):
            if getattr(row, task):
                found.add(key)
        elif row.diagnostic:
            value = {"diagnostic": key, "subdiagnostic": row.diagnostic_subclass,
                     "superdiagnostic": row.diagnostic_class}[task]
            if value:
                found.add(value)
    return tuple(sorted(found))


def column_names(names: Sequence[str]) -> list[str]:
    """CSV column per class: a CinC 2021 scored class as ``code abbreviation`` (``426783006 SNR``),
    anything else (imported text names, unscored codes) as it is named."""
    scored = scored_labels()
    abbreviation = {"|".join(c): a for c, a in zip(scored.classes, scored.abbreviations)}
    return [f"{name} {abbreviation[name]}" if abbreviation.get(name) else name for name in names]
