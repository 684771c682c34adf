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


# --- item 6: CODE-15% exam ids must match their tracings --------------------------------------

def _code15(tmp_path: Path, trace_file: bool = True) -> tuple[Path, dict[str, list[int]]]:
    """A synthetic CODE-15% archive (two HDF5 parts, 4 exams each) and each part's exam ids by row."""
    import csv

    import h5py

    from fairseq_ecg.synth import synthesize_archive

    src = tmp_path / "code15"
    synthesize_archive(src, records=8, patients=4, seed=15, layout="code15")
    if not trace_file:
        with open(src / "exams.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        _write_exams(src, [{k: v for k, v in row.items() if k != "trace_file"} for row in rows])
    parts = {}
    for part in ("exams_part0", "exams_part1"):
        with h5py.File(src / f"{part}.hdf5", "r") as h5:
            parts[part] = [int(i) for i in h5["exam_id"][()]]
    return src, parts


def _write_exams(src: Path, rows: list[dict]) -> None:
    import csv

    with open(src / "exams.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _rewrite_part(path: Path, ids=None, tracings=None) -> None:
    import h5py

    with h5py.File(path, "r") as h5:
        old_ids, old_tracings = h5["exam_id"][()], h5["tracings"][()]
    with h5py.File(path, "w") as h5:
        h5.create_dataset("tracings", data=old_tracings if tracings is None else tracings)
        h5.create_dataset("exam_id", data=old_ids if ids is None else ids)


def _prepared_and_skipped(src: Path, dest: Path) -> tuple[set[str], dict[str, str]]:
    from test_sources import skipped

    assert main([str(src), "--dest", str(dest), "--workers", "1"]) == 0
    rows = {r.record for split in ("train", "valid") for r in read_manifest(dest / "pretrain" / f"{split}.tsv").rows}
    test = read_manifest(dest / "identify" / "test_gallery.tsv").rows + read_manifest(dest / "identify" / "test_probe.tsv").rows
    records = {line.split("\t")[0] for line in (dest / "records.tsv").read_text().splitlines()[1:]}
    return records | rows | {r.record for r in test}, skipped(dest)


def test_code15_exam_ids_one_longer_than_tracings_skip_that_file(tmp_path):
    src, parts = _code15(tmp_path)
    ids = parts["exams_part0"]
    _rewrite_part(src / "exams_part0.hdf5", ids=np.array([99, *ids], dtype=np.int64))  # every id one row late
    _, reasons = _prepared_and_skipped(src, tmp_path / "out")
    part0 = {f"exams_part0/{i}" for i in ids if i}
    assert set(reasons) == part0
    assert all("exam_id has 6 entries but tracings 5" in why for why in reasons.values())


def test_code15_exam_in_two_files_keeps_the_one_its_trace_file_names(tmp_path):
    import h5py

    src, parts = _code15(tmp_path)
    stolen = parts["exams_part0"][0]  # part1's first tracing now also claims part0's first exam id
    ids = np.array(parts["exams_part1"], dtype=np.int64)
    ids[-1] = stolen  # the padding row
    with h5py.File(src / "exams_part1.hdf5", "r") as h5:
        tracings = h5["tracings"][()]
    tracings[-1] = tracings[0]
    _rewrite_part(src / "exams_part1.hdf5", ids=ids, tracings=tracings)
    _, reasons = _prepared_and_skipped(src, tmp_path / "out")
    assert list(reasons) == [f"exams_part1/{stolen}_row4"]
    assert f"exam {stolen} is in exams_part1.hdf5, but exams.csv line" in reasons[f"exams_part1/{stolen}_row4"]
    assert "gives trace_file exams_part0.hdf5" in reasons[f"exams_part1/{stolen}_row4"]


def test_code15_exam_in_two_files_without_trace_file_is_skipped_in_both(tmp_path):
    src, parts = _code15(tmp_path, trace_file=False)
    stolen = parts["exams_part0"][0]
    ids = np.array(parts["exams_part1"], dtype=np.int64)
    ids[-1] = stolen
    _rewrite_part(src / "exams_part1.hdf5", ids=ids)
    _, reasons = _prepared_and_skipped(src, tmp_path / "out")
    assert set(reasons) == {f"exams_part0/{stolen}_row0", f"exams_part1/{stolen}_row4"}
    assert all(f"exam_id {stolen} is written 2 times (exams_part0.hdf5 row 0, exams_part1.hdf5 row 4)" in why
               for why in reasons.values())


def test_code15_bad_ids_and_table_rows_are_skipped_with_their_line(tmp_path):
    import csv

    src, parts = _code15(tmp_path)
    ids = np.array(parts["exams_part1"], dtype=np.float64)
    ids[1] = np.nan
    _rewrite_part(src / "exams_part1.hdf5", ids=ids)
    text_ids = np.array([str(i).encode() for i in parts["exams_part0"]], dtype="S12")  # ids stored as text
    _rewrite_part(src / "exams_part0.hdf5", ids=text_ids)
    with open(src / "exams.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    by_id = {int(r["exam_id"]): r for r in rows}
    duplicate = dict(by_id[parts["exams_part0"][1]])
    twin = dict(by_id[parts["exams_part0"][2]])
    duplicate["AF"] = "True" if duplicate["AF"] == "False" else "False"  # the same exam, other labels
    missing = dict(twin, exam_id="424242")  # an exam of a part not downloaded
    rows += [duplicate, twin, missing, dict(twin, exam_id="")]
    _write_exams(src, rows)
    records, reasons = _prepared_and_skipped(src, tmp_path / "out")
    nan_exam, conflicted = parts["exams_part1"][1], parts["exams_part0"][1]
    assert set(reasons) == {"exams_part1/row1", f"exams_part1/{nan_exam}", f"exams_part0/{conflicted}",
                            "exams_part0/424242", f"exams/line{len(rows) + 1}"}
    assert "exam_id of row 1 is 'nan', not an integer id" in reasons["exams_part1/row1"]
    assert "both give exam_id" in reasons[f"exams_part0/{conflicted}"] and "different values" in reasons[f"exams_part0/{conflicted}"]
    assert "is not in its trace_file exams_part1.hdf5" in reasons[f"exams_part1/{nan_exam}"]  # and said of the exam
    assert "exam 424242 is not in its trace_file exams_part0.hdf5" in reasons["exams_part0/424242"]
    assert "exam_id '' is not an integer id" in reasons[f"exams/line{len(rows) + 1}"]
    assert str(nan_exam) not in records  # the NaN row's exam is nowhere else: not prepared
    assert str(parts["exams_part0"][2]) in records  # an identical second line is the same exam
    assert str(parts["exams_part0"][0]) in records  # text ids read as the numbers they are


def test_code15_tracings_stored_as_a_group_stop_in_one_line(tmp_path, capsys):
    import h5py

    src, parts = _code15(tmp_path)
    with h5py.File(src / "exams_part0.hdf5", "w") as h5:
        h5.create_group("tracings")
        h5.create_dataset("exam_id", data=np.array(parts["exams_part0"]))
    assert main([str(src), "--dest", str(tmp_path / "out"), "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exams_part0.hdf5: not a CODE-15% HDF5 file" in err[0] and "tracings: Group" in err[0]


# --- item 12: a --dest prepared from another archive ------------------------------------------

def test_a_dest_holding_another_archive_is_refused_then_added_to_deliberately(tmp_path, capsys):
    from fairseq_ecg.synth import synthesize_archive

    first, second, dest = tmp_path / "first", tmp_path / "second", tmp_path / "out"
    synthesize_archive(first, records=6, patients=3, seed=1)
    synthesize_archive(second, records=6, patients=3, seed=2, layout="numpy")
    assert main([str(first), "--dest", str(dest), "--workers", "1"]) == 0
    journal = (dest / "records.tsv").read_bytes()
    waves = sorted(p.relative_to(dest) for p in (dest / "waves").rglob("*.npy"))
    capsys.readouterr()
    assert main([str(second), "--dest", str(dest), "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{dest} was prepared from {first.resolve()}, not from {second.resolve()}" in err[0]
    assert f"{first.resolve()} {second.resolve()} --dest {dest}" in err[0]  # the command that adds to it
    assert (dest / "records.tsv").read_bytes() == journal  # nothing rewritten
    assert sorted(p.relative_to(dest) for p in (dest / "waves").rglob("*.npy")) == waves
    assert main([str(first), str(second), "--dest", str(dest), "--workers", "1"]) == 0  # deliberately both
    assert "layout=physionet2021,numpy " in (dest / "records.tsv").read_text().splitlines()[0]
    assert main([str(first), str(second), "--dest", str(dest), "--workers", "1"]) == 0  # and again: the same
    assert main([str(first), "--dest", str(dest), "--workers", "1"]) == 2  # dropping one is refused too


# --- item 13: a folder holding two layouts is read whole ---------------------------------------

def _mixed_exports(folder: Path) -> None:
    """Three DICOM exports beside one GE MUSE XML, as a hospital's export folder holds them."""
    import shutil

    from fairseq_ecg.synth import synthesize_archive

    synthesize_archive(folder.parent / "muse", records=1, patients=1, seed=21, layout="muse_xml")
    synthesize_archive(folder.parent / "dicom", records=3, patients=2, seed=22, layout="dicom")
    folder.mkdir()
    for path in [*(folder.parent / "muse").rglob("*.xml"), *(folder.parent / "dicom").rglob("*.dcm")]:
        shutil.copy(path, folder / path.name)


def test_a_folder_of_muse_and_dicom_exports_is_read_whole(tmp_path, capsys):
    src, dest = tmp_path / "exports", tmp_path / "out"
    _mixed_exports(src)
    assert main([str(src), "--dest", str(dest), "--workers", "1", "--valid-percent", "0", "--test-percent", "0"]) == 0
    keys = [line.split("\t")[0] for line in (dest / "records.tsv").read_text().splitlines()[2:]]
    assert sorted(k.split("/")[0] for k in keys) == ["dicom", "dicom", "dicom", "muse"]
    assert "layout=muse_xml+dicom " in (dest / "records.tsv").read_text().splitlines()[0]
    assert "4 records found, 4 written" in capsys.readouterr().out


def test_layout_named_on_a_mixed_folder_counts_the_files_it_leaves_unread(tmp_path, capsys):
    src, dest = tmp_path / "exports", tmp_path / "out"
    _mixed_exports(src)
    assert main([str(src), "--dest", str(dest), "--workers", "1", "--layout", "muse_xml"]) == 0
    out = capsys.readouterr().out
    assert "1 records found" in out and "also holds files that --layout muse_xml does not read (dicom: 3 .dcm)" in out


def test_an_archive_beside_files_of_another_layout_stops_in_one_line(tmp_path, capsys):
    import shutil

    from fairseq_ecg.synth import synthesize_archive

    src = tmp_path / "cinc"
    synthesize_archive(src, records=4, patients=2, seed=23)
    _mixed_exports(tmp_path / "exports")
    for path in list((tmp_path / "exports").glob("*.dcm"))[:2]:
        shutil.copy(path, src / path.name)
    assert main([str(src), "--dest", str(tmp_path / "out"), "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds files of several layouts (" in err[0]
    assert "physionet2021: 4 .hea" in err[0] and "dicom: 2 .dcm" in err[0]
    assert not (tmp_path / "out" / "records.tsv").exists()
