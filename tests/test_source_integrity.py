"""What a source says must agree with itself before a record is used (issue 20 items 10-13, 6):
records whose source gives no labels are unlabeled, not negatives; a header that disagrees with
its signal file is skipped; CODE-15% exam ids must match their tracings; a --dest prepared from
another archive is not rewritten in silence; a folder holding two layouts is read whole."""
from pathlib import Path

import numpy as np
import pytest
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


# --- item 11: a header that disagrees with its signal file ------------------------------------

def _rewrite_header(record: Path, signals: int, samples: int) -> None:
    """Keep the first ``signals`` signal lines and state ``signals`` x ``samples`` on the record line."""
    header = record.with_suffix(".hea")
    lines = header.read_text().splitlines()
    name, _, fs, _ = lines[0].split()[:4]
    signal_lines = [line for line in lines[1:] if not line.startswith("#")][:signals]
    comments = [line for line in lines[1:] if line.startswith("#")]
    header.write_text("\n".join([f"{name} {signals} {fs} {samples}", *signal_lines, *comments]) + "\n")


def test_a_mat_file_with_other_signals_or_samples_than_its_header_is_skipped(tmp_path, capsys):
    """An 11-signal header over a 12-channel .mat was read with every lead shifted; a header of
    fewer samples than the file was read short. Both skipped with both shapes; the good one stays."""
    from fairseq_ecg.sources import RecordError, read_record
    from test_records import ref_of

    src = tmp_path / "cinc" / "g1"
    wave = np.tile(np.arange(12, dtype=np.int16)[:, None] * 100, (1, 5000))
    good = write_mat_record(src, "A1", wave)
    assert read_record(ref_of(good)).signal.shape == (12, 5000)
    _rewrite_header(write_mat_record(src, "A2", wave), 11, 5000)
    _rewrite_header(write_mat_record(src, "A3", wave), 12, 4000)
    for name, stated in (("A2", "11 x 5000"), ("A3", "12 x 4000")):
        with pytest.raises(RecordError, match=f"holds 12 signals x 5000 samples, the header describes {stated}"):
            read_record(ref_of(src / name))
    assert main([str(tmp_path / "cinc"), "--dest", str(tmp_path / "out"), "--workers", "1"]) == 0
    skipped = (tmp_path / "out" / "skipped.tsv").read_text()
    assert "g1/A2\t" in skipped and "g1/A3\t" in skipped and "A1" not in skipped
    assert "header disagrees with signal file: 2" in capsys.readouterr().out
