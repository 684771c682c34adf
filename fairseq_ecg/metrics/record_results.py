"""Per-record results of an evaluation (``fairseq-validate ... --per-record-results DIR``): what a
subset's figures were computed from, one row per record, so that a paired comparison of two models,
calibration or a check of ``fairseq-ecg-predict`` can start from the same numbers.

* classification: ``DIR/SUBSET.results.csv``: ``record``, ``patient``, then one probability column
  per class (named as in predict's CSV; calibrated where the checkpoint's calibration applies),
  then one ``LABEL (label)`` column per class: 1, 0, or empty where the record's source does not
  record that class, and, where a calibration applies, one ``LABEL (uncalibrated)`` column per
  class: the probability before it;
* identification: ``DIR/SUBSET.results.csv`` (``record``, ``patient``, ``role``: gallery or probe)
  and ``DIR/SUBSET.embeddings.npy`` [records, dim], the L2-normalised record embeddings (float64,
  as scored), in the CSV's order.

Records and patients are named as in the manifests (hashed for hospital exports).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..manifest import atomic_output, atomic_save_npy
from ..spreadsheet import csv_writer

LABEL_SUFFIX = " (label)"
UNCALIBRATED_SUFFIX = " (uncalibrated)"
ROLES = ("gallery", "probe")


def results_file(folder: Path | str, subset: str) -> Path:
    return Path(folder) / f"{subset}.results.csv"


def embeddings_file(folder: Path | str, subset: str) -> Path:
    return Path(folder) / f"{subset}.embeddings.npy"


@dataclass
class ClassificationResults:
    """One subset's records: ``probs`` [records, classes] as scored, ``targets`` and ``known``
    [records, classes] bool, ``uncalibrated`` [records, classes] the probabilities before the
    calibration (None where none applied)."""

    records: list[str]
    patients: list[str]
    columns: list[str]
    probs: np.ndarray
    targets: np.ndarray
    known: np.ndarray
    uncalibrated: Optional[np.ndarray] = None


def write_classification_results(path: Path, results: ClassificationResults) -> None:
    with atomic_output(path, newline="") as handle:
        writer = csv_writer(handle)
        before = results.uncalibrated
        writer.writerow(["record", "patient", *results.columns, *(c + LABEL_SUFFIX for c in results.columns),
                         *(c + UNCALIBRATED_SUFFIX for c in (results.columns if before is not None else ()))])
        for i, record in enumerate(results.records):
            labels = ["" if not k else int(t) for t, k in zip(results.targets[i], results.known[i])]
            writer.writerow([record, results.patients[i], *(f"{p:.17g}" for p in results.probs[i]), *labels,
                             *(f"{p:.17g}" for p in (before[i] if before is not None else ()))])


def read_classification_results(path: Path) -> ClassificationResults:
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    header, body = rows[0], rows[1:]
    classes = sum(1 for name in header if name.endswith(LABEL_SUFFIX))
    columns = header[2:2 + classes]

    def block(start: int, dtype) -> np.ndarray:
        return np.array([row[start:start + classes] for row in body], dtype=dtype).reshape(len(body), classes)

    labels = block(2 + classes, object)
    return ClassificationResults(
        records=[row[0] for row in body], patients=[row[1] for row in body], columns=columns,
        probs=block(2, np.float64), targets=labels == "1", known=labels != "",
        uncalibrated=block(2 + 2 * classes, np.float64) if len(header) == 2 + 3 * classes else None,
    )


@dataclass
class IdentificationResults:
    """One subset's records: ``embeddings`` [records, dim], ``probe`` [records] bool."""

    records: list[str]
    patients: list[str]
    probe: np.ndarray
    embeddings: np.ndarray


def write_identification_results(folder: Path, subset: str, results: IdentificationResults) -> None:
    atomic_save_npy(embeddings_file(folder, subset), results.embeddings.astype(np.float64))
    with atomic_output(results_file(folder, subset), newline="") as handle:
        writer = csv_writer(handle)
        writer.writerow(["record", "patient", "role"])
        for record, patient, probe in zip(results.records, results.patients, results.probe):
            writer.writerow([record, patient, ROLES[int(probe)]])


def read_identification_results(folder: Path, subset: str) -> IdentificationResults:
    with open(results_file(folder, subset), newline="") as handle:
        body = list(csv.reader(handle))[1:]
    return IdentificationResults(records=[r[0] for r in body], patients=[r[1] for r in body],
                                 probe=np.array([r[2] == "probe" for r in body], dtype=bool),
                                 embeddings=np.load(embeddings_file(folder, subset)).astype(np.float64))


def row_names(rows: Sequence, manifest) -> tuple[list[str], list[str]]:
    """Record and patient names of manifest rows ``rows`` (a record without a name: its file)."""
    records = [manifest.rows[r].record or manifest.rows[r].relative_path for r in rows]
    return records, [manifest.rows[r].patient for r in rows]

