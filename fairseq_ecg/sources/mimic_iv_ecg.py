"""MIMIC-IV-ECG (``--layout mimic_iv_ecg``): about 800,000 ten-second 12-lead ECGs of about 160,000
patients, WFDB records under ``files/pNNNN/pNNNNNNNN/sNNNNNNNN/NNNNNNNN`` listed in
``record_list.csv`` (``subject_id, study_id, file_name, ecg_time, path``).

The patient is ``subject_id`` (already a pseudonym of the MIMIC de-identification), so the
identification manifests get many patients with repeated ECGs. There are no diagnostic labels:
the records go to pretraining and identification only (``known`` is empty, so they stay out of
``finetune/``). The machine's free-text report (``report_0`` ... in ``machine_measurements.csv``)
is kept per record in ``statements.tsv``, joined with `` | ``, not mapped to codes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

from .base import RecordRef, read_table, register_source
from .wfdb_folder import WfdbFolder

RECORD_LIST = "record_list.csv"
MEASUREMENTS = "machine_measurements.csv"


def _reports(path: Path) -> dict[str, str]:
    """study_id -> the report lines of machine_measurements.csv joined with " | " ({} if absent)."""
    if not path.is_file():
        return {}
    fields, rows = read_table(path, "")
    columns = sorted((c for c in fields if c.startswith("report_")),
                     key=lambda c: int(c.split("_")[1]) if c.split("_")[1].isdigit() else 0)
    # a report kept as free text only (never mapped to labels): an unreadable row just has none
    return {row.get("study_id", ""): " | ".join(row[c] for c in columns if row.get(c))
            for _, row, problem in rows if row is not None and not problem}


@register_source
class MimicIvEcg(WfdbFolder):
    name = "mimic_iv_ecg"
    summary = "MIMIC-IV-ECG: record_list.csv + files/pNNNN/... WFDB; no labels (pretrain/identify), reports kept"
    priority = 15

    def recognise(self, src: Path) -> bool:
        return (src / RECORD_LIST).is_file() and (src / "files").is_dir()

    def discover(self, src: Path, labels_csv: Optional[Path] = None, use_folds: bool = True) -> Iterator[RecordRef]:
        table = Path(labels_csv) if labels_csv else src / RECORD_LIST
        reports = _reports(src / MEASUREMENTS)
        _, rows = read_table(table, f"the mimic_iv_ecg layout needs {RECORD_LIST}", ("path", "study_id", "subject_id"),
                             f"is this MIMIC-IV-ECG's {RECORD_LIST}?")
        refs = []
        for line, row, problem in rows:
            if row is None or problem:  # unreadable: kept as a skipped record with the reason
                refs.append(RecordRef(path=table, name=f"line{line}", key=f"{RECORD_LIST}:{line}", codes=(), known=(),
                                      problem=problem))
                continue
            key = row["path"].strip("/")
            if not key:
                key, problem = f"{RECORD_LIST}:{line}", f"{RECORD_LIST} line {line}: empty path"
            refs.append(RecordRef(path=src / key, name=Path(key).name, key=key, patient=row["subject_id"],
                                  codes=(), known=(), problem=problem, statement=reports.get(row["study_id"], "")))
        yield from sorted(refs, key=lambda ref: ref.key)
