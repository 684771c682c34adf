"""The PhysioNet/CinC Challenge 2021 archive (``--layout physionet2021``): a tree of WFDB headers
with MATLAB v4 ``.mat`` signals (``training/<source>/g<k>/<NAME>.hea``), labels in each header's
``#Dx`` line as SNOMED CT codes. The Challenge data carry no patient ids: the patient is the
record name unless a CSV (``--labels``, else ``patients.csv`` at the archive root; columns
``record,patient``) gives it.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator, Optional

from .base import PATIENTS_CSV, RecordRef, read_record_table, register_source, walk_files
from .wfdb_folder import WfdbFolder, wfdb_refs


def ptbxl_ecg_id(ref: RecordRef) -> Optional[tuple[str, int]]:
    """``("ptbxl", n)`` for PTB-XL's record of ecg_id n (``records500/.../NNNNN_hr``), ``("cinc", n)``
    for CinC 2021's copy of it (``HRNNNNN``: the Challenge holds PTB-XL under those names), None
    for any other record: the name map by which preparation finds the same recording twice."""
    patterns = {"ptbxl": r"0*([0-9]+)_hr", "physionet2021": r"HR0*([0-9]+)"}
    match = re.fullmatch(patterns.get(ref.layout, "(?!)"), ref.name)
    return (("ptbxl" if ref.layout == "ptbxl" else "cinc"), int(match[1])) if match else None


@register_source
class PhysioNet2021(WfdbFolder):
    name = "physionet2021"
    summary = "PhysioNet/CinC 2021: tree of .hea + .mat (patients.csv at the root is used)"
    priority = 80

    def recognise(self, src: Path) -> bool:
        """A WFDB tree whose first header points at a ``.mat`` signal file."""
        header = next(walk_files(src, (".hea",), limit=1), None)
        if header is None:
            return False
        try:
            lines = header.read_bytes().splitlines()
        except OSError:
            return False
        signals = [line.split() for line in lines[1:] if line.strip() and not line.startswith(b"#")]
        return bool(signals) and signals[0][0].lower().endswith(b".mat")

    def discover(self, src: Path, labels_csv: Optional[Path] = None, use_folds: bool = True) -> Iterator[RecordRef]:
        if labels_csv is None and (src / PATIENTS_CSV).is_file():
            labels_csv = src / PATIENTS_CSV
        table = read_record_table(labels_csv) if labels_csv else {}
        yield from wfdb_refs(src, table, patient_is_name=True)
