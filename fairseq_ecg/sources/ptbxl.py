"""PTB-XL (``--layout ptbxl``): ``ptbxl_database.csv`` lists the records (``filename_hr``: the 500 Hz
WFDB records under ``records500/``), their ``patient_id`` and ``scp_codes`` (SCP-ECG statements,
mapped to SNOMED CT with :data:`~fairseq_ecg.labels.PTBXL_SCP_TO_SNOMED`); ``--labels`` overrides
the CSV's location. With a ``strat_fold`` column, each record carries the recommended split.
:func:`ptbxl_task_refs` labels the records with one of the benchmark's tasks instead
(``--ptbxl-labels``), from the ``scp_statements.csv`` beside the database.
"""
from __future__ import annotations

import ast
from dataclasses import replace
from pathlib import Path
from typing import Iterator, Optional

from ..labels import PTBXL_SCP_TO_SNOMED, PTBXL_STATEMENTS, SNOMED_TASK, ptbxl_task_labels, read_scp_statements
from .base import LayoutError, RecordRef, read_table, register_source
from .wfdb_folder import WfdbFolder

PTBXL_DATABASE = "ptbxl_database.csv"


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


MAX_SCP_CODES_CHARS = 10_000  # longer is not a statement dict: never handed to the parser


def _ptbxl_refs(src: Path, database: Path, use_folds: bool = True, task: str = SNOMED_TASK) -> Iterator[RecordRef]:
    if task == SNOMED_TASK:
        label = lambda scp: tuple(dict.fromkeys(PTBXL_SCP_TO_SNOMED[s] for s in scp if s in PTBXL_SCP_TO_SNOMED))
    else:
        try:
            table = read_scp_statements(database.parent / PTBXL_STATEMENTS)
        except ValueError as error:
            raise LayoutError(str(error)) from None
        label = lambda scp: ptbxl_task_labels(scp, table, task)
    fields, rows = read_table(database, f"the ptbxl layout needs {PTBXL_DATABASE} in the source folder (or pass "
                              "it with --labels)", ("filename_hr", "patient_id", "scp_codes"),
                              "is this a PTB-XL ptbxl_database.csv?")
    folds = use_folds and PTBXL_FOLD_COLUMN in fields
    refs = []
    split_of_patient: dict[str, tuple[str, int]] = {}
    for line, row, problem in rows:
        if row is None or problem:  # unreadable: kept as a skipped record with the reason
            refs.append(RecordRef(path=database, name=f"line{line}", key=f"{PTBXL_DATABASE}:{line}", problem=problem))
            continue
        key = row["filename_hr"]
        if not key:
            key, problem = f"{PTBXL_DATABASE}:{line}", f"{PTBXL_DATABASE} line {line}: empty filename_hr"
        try:
            patient = str(int(float(row["patient_id"])))
        except (TypeError, ValueError):
            patient = row["patient_id"]
        split = ""
        if folds:
            split, fold_problem = _ptbxl_fold(row, line)
            problem = problem or fold_problem
            first = split_of_patient.setdefault(patient, (split, line))
            if split and first[0] and first[0] != split:
                raise LayoutError(f"{database} line {line}: patient {patient} is in strat_fold split {split} "
                                  f"here and {first[0]} on line {first[1]}; PTB-XL's folds are patient-disjoint, "
                                  "so fix the file or split by patient with --split-by patient-hash")
        text = row["scp_codes"] or "{}"
        try:
            if len(text) > MAX_SCP_CODES_CHARS:  # PTB-XL's longest is under 200: a damaged cell, not parsed
                raise ValueError
            scp = ast.literal_eval(text)
            if not isinstance(scp, dict):
                raise ValueError
            codes = label(scp)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            codes = ()
            shown = text if len(text) <= 60 else f"{text[:40]}... ({len(text)} characters)"
            problem = problem or f"{PTBXL_DATABASE} line {line}: scp_codes {shown!r} is not a dict"
        refs.append(RecordRef(path=src / key, name=Path(key).name, key=key, patient=patient,
                              codes=codes, problem=problem, split=split))
    yield from sorted(refs, key=lambda ref: ref.key)


def ptbxl_task_refs(src: Path, labels_csv: Optional[Path] = None, use_folds: bool = True,
                    task: str = SNOMED_TASK) -> Iterator[RecordRef]:
    """The records of a PTB-XL archive as :class:`PtbXl` discovers them, labelled with the
    benchmark ``task`` (:func:`~fairseq_ecg.labels.ptbxl_task_labels`; ``snomed``: the CinC
    classes); raises :class:`LayoutError` when ``scp_statements.csv`` is missing or not PTB-XL's."""
    for ref in _ptbxl_refs(src, labels_csv or src / PTBXL_DATABASE, use_folds, task):
        yield replace(ref, layout=PtbXl.name)


@register_source
class PtbXl(WfdbFolder):
    name = "ptbxl"
    summary = "PTB-XL: ptbxl_database.csv + records500/ (strat_fold gives the recommended split)"
    priority = 10

    def recognise(self, src: Path) -> bool:
        return (src / PTBXL_DATABASE).is_file()

    def discover(self, src: Path, labels_csv: Optional[Path] = None, use_folds: bool = True) -> Iterator[RecordRef]:
        yield from _ptbxl_refs(src, labels_csv or src / PTBXL_DATABASE, use_folds)
