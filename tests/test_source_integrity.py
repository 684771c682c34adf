"""What a source says must agree with itself before a record is used (issue 20 items 10-13, 6):
records whose source gives no labels are unlabeled, not negatives; a header that disagrees with
its signal file is skipped; CODE-15% exam ids must match their tracings; a --dest prepared from
another archive is not rewritten in silence; a folder holding two layouts is read whole."""
from pathlib import Path

import numpy as np
import wfdb

from fairseq_ecg.manifest import read_labels, read_manifest
from fairseq_ecg.preparation import main

from test_records import write_mat_record


def _wfdb_without_dx(folder: Path, name: str, seed: int, fs: int = 200) -> None:
    """A CPSC 2021-like record: WFDB format 16 (.dat), no #Dx line (its labels are in .atr files)."""
    folder.mkdir(parents=True, exist_ok=True)
    signal = np.random.default_rng(seed).normal(0, 0.3, (fs * 10, 2))
    wfdb.wrsamp(name, fs=fs, units=["mV", "mV"], sig_name=["I", "II"], p_signal=signal, fmt=["16", "16"],
                adc_gain=[1000, 1000], baseline=[0, 0], write_dir=str(folder))


def _labels_of(dest: Path) -> dict[str, list[str]]:
    found = {}
    for split in ("train", "valid", "test"):
        manifest = read_manifest(dest / "finetune" / f"{split}.tsv")
        found.update(zip([r.record for r in manifest.rows], read_labels(manifest)))
    return found


# --- item 10: records without labels are unlabeled --------------------------------------------

def test_wfdb_records_without_dx_are_unlabeled_not_negatives(tmp_path, capsys):
    src = tmp_path / "cpsc2021"
    for i in range(3):
        _wfdb_without_dx(src, f"data_{i}_1", i)
    assert main([str(src), "--dest", str(tmp_path / "out"), "--workers", "1",
                 "--valid-percent", "0", "--test-percent", "0"]) == 0
    assert _labels_of(tmp_path / "out") == {}  # none of them trains as a negative for all 26 classes
    pretrain = sum(len(read_manifest(tmp_path / "out" / "pretrain" / f"{s}.tsv").rows) for s in ("train", "valid"))
    assert pretrain == 3  # they still pretrain (and identify)
    out = capsys.readouterr().out
    assert "3 record(s) without labels" in out and "no scored class" in out


def test_a_cinc_header_without_dx_is_unlabeled_beside_labelled_ones(tmp_path, capsys):
    src = tmp_path / "cinc"
    wave = np.full((12, 5000), 300)
    write_mat_record(src / "g1", "A1", wave, dx="164889003")
    write_mat_record(src / "g1", "A2", wave + 1, dx="164951009")  # known, none scored: a negative
    write_mat_record(src / "g1", "A3", wave + 2, dx="426783006")
    header = src / "g1" / "A3.hea"
    header.write_text("".join(line + "\n" for line in header.read_text().splitlines() if not line.startswith("#Dx")))
    assert main([str(src), "--dest", str(tmp_path / "out"), "--workers", "1",
                 "--valid-percent", "0", "--test-percent", "0"]) == 0
    labels = _labels_of(tmp_path / "out")
    assert labels == {"A1": ["164889003"], "A2": []}
    assert len(read_manifest(tmp_path / "out" / "pretrain" / "train.tsv").rows) == 3
    out = capsys.readouterr().out
    assert "1 record(s) with no scored class" in out and "1 record(s) without labels" in out
