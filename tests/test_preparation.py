"""The fairseq-ecg-manifest program: synthetic archive -> waveforms + manifests -> read back, patient
disjoint splits, label equivalences, bad records skipped with their reason, bad command lines,
and a run killed with SIGKILL that a re-run completes to the same bytes as an uninterrupted run."""
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from fairseq_ecg.labels import scored_labels
from fairseq_ecg.manifest import read_classes, read_labels, read_manifest
from fairseq_ecg.preparation import main, split_of
from fairseq_ecg.sources import resample
from fairseq_ecg.synth import synthesize_archive, synthesize_signal

from test_records import _bad_records, write_mat_record

REPO = Path(__file__).resolve().parents[1]
PROG = Path(sys.executable).parent / "fairseq-ecg-manifest"
MANIFESTS = ["pretrain/train.tsv", "pretrain/valid.tsv", "finetune/train.tsv", "finetune/valid.tsv",
             "finetune/test.tsv", "identify/train.tsv", "identify/valid_gallery.tsv", "identify/valid_probe.tsv",
             "identify/test_gallery.tsv", "identify/test_probe.tsv"]


def tree_hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def our_lines(stderr: str) -> list[str]:
    """stderr lines the program wrote (importing fairseq logs a tensorboardX notice of its own)."""
    return [line for line in stderr.splitlines() if line.startswith("fairseq-ecg-manifest")]


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """60 records of 20 patients at 500, 257 and 1000 Hz (the rates of the Challenge sources)."""
    out = tmp_path_factory.mktemp("archive") / "physionet"
    written = synthesize_archive(out, records=60, patients=20, seed=11)
    assert {r.sample_rate for r in written} == {257, 500, 1000}
    return out, written


@pytest.fixture(scope="module")
def prepared(archive, tmp_path_factory):
    src, written = archive
    dest = tmp_path_factory.mktemp("prepared") / "out"
    assert main([str(src), "--dest", str(dest), "--workers", "2", "--valid-percent", "20",
                 "--test-percent", "20", "--seed", "3"]) == 0
    return dest, written


def test_round_trip_signals_rates_masks_and_labels(prepared):
    dest, written = prepared
    rows = {}
    for split in ("train", "valid", "test"):
        manifest = read_manifest(dest / "finetune" / f"{split}.tsv")
        assert manifest.root == dest.resolve()
        for row, codes in zip(manifest.rows, read_labels(manifest)):
            rows[row.record] = (manifest.root / row.relative_path, row, codes)
    assert set(rows) == {r.name for r in written}
    labels = scored_labels()
    for record in written:
        path, row, codes = rows[record.name]
        wave = np.load(path, mmap_mode="r")
        assert wave.dtype == np.float32 and wave.shape == (12, row.num_samples)
        assert row.source_rate == record.sample_rate and row.lead_mask == "1" * 12
        assert row.patient == record.patient and codes == labels.canonical_codes(record.codes)
        if record.sample_rate == 500:  # nothing to resample: int16 quantisation only
            assert row.num_samples == record.num_samples
            np.testing.assert_allclose(wave, synthesize_signal(record), atol=0.5e-3 + 1e-6)
        else:  # the same filter applied to the stored samples
            val = scipy.io.loadmat(record.path.with_suffix(".mat"))["val"] / 1000.0
            np.testing.assert_allclose(wave, resample(val, record.sample_rate, 500), atol=1e-5)
            assert row.num_samples == int(np.ceil(record.num_samples * 500 / record.sample_rate))
    assert read_classes(dest / "finetune") == labels.names
    assert (dest / "skipped.tsv").read_text() == ""


def test_splits_are_patient_disjoint_and_complete(prepared):
    dest, written = prepared
    patients = {split: {r.patient for r in read_manifest(dest / "finetune" / f"{split}.tsv").rows}
                for split in ("train", "valid", "test")}
    assert not patients["train"] & patients["valid"] and not patients["train"] & patients["test"]
    assert not patients["valid"] & patients["test"]
    assert set().union(*patients.values()) == {r.patient for r in written}
    assert all(patients.values())  # 20 patients, 20 % each: every split has some
    pretrain = {split: read_manifest(dest / "pretrain" / f"{split}.tsv").rows for split in ("train", "valid")}
    assert {r.patient for r in pretrain["train"]} == patients["train"]
    assert {r.patient for r in pretrain["valid"]} == patients["valid"]  # test patients kept out
    # identification: patients with >= 2 records; held-out patients give one gallery record each
    count = {p: sum(r.patient == p for r in written) for p in {r.patient for r in written}}
    ident = {name: read_manifest(dest / "identify" / f"{name}.tsv").rows
             for name in ("train", "valid_gallery", "valid_probe", "test_gallery", "test_probe")}
    assert {r.patient for r in ident["train"]} == {p for p in patients["train"] if count[p] >= 2}
    # valid patients choose the checkpoint, the test patients (others) are reported
    for split in ("valid", "test"):
        held_out = {p for p in patients[split] if count[p] >= 2}
        assert held_out  # 20 patients of 3 records, 20 % each
        gallery = [r.patient for r in ident[f"{split}_gallery"]]
        assert sorted(gallery) == sorted(held_out) and {r.patient for r in ident[f"{split}_probe"]} == held_out
        assert len(ident[f"{split}_gallery"]) + len(ident[f"{split}_probe"]) == sum(count[p] for p in held_out)
        for row in ident[f"{split}_gallery"]:  # the first record (sorted) of its patient
            probes = [r.relative_path for r in ident[f"{split}_probe"] if r.patient == row.patient]
            assert row.relative_path < min(probes)
    valid = {r.patient for name in ("valid_gallery", "valid_probe") for r in ident[name]}
    test = {r.patient for name in ("test_gallery", "test_probe") for r in ident[name]}
    assert not valid & test


def test_split_of_is_deterministic_and_follows_the_percentages():
    splits = [split_of(f"patient{i}", 7, 10, 20) for i in range(20000)]
    assert splits == [split_of(f"patient{i}", 7, 10, 20) for i in range(20000)]
    share = {s: splits.count(s) / len(splits) for s in ("train", "valid", "test")}
    assert abs(share["valid"] - 0.1) < 0.01 and abs(share["test"] - 0.2) < 0.01
    assert splits != [split_of(f"patient{i}", 8, 10, 20) for i in range(20000)]


def test_equivalent_codes_get_the_same_class_and_unscored_records_stay(tmp_path):
    src = tmp_path / "src"
    wave = np.full((12, 5000), 300)  # three recordings (identical ones would be one, see duplicates.tsv)
    write_mat_record(src / "g1", "R1", wave, dx="59118001")
    write_mat_record(src / "g1", "R2", wave + 1, dx="713427006,426783006")
    write_mat_record(src / "g1", "R3", wave + 2, dx="164951009")  # abnormal QRS: not scored, still a fine-tuning record
    assert main([str(src), "--dest", str(tmp_path / "out"), "--workers", "1",
                 "--valid-percent", "0", "--test-percent", "0"]) == 0
    manifest = read_manifest(tmp_path / "out" / "finetune" / "train.tsv")
    labels = dict(zip([r.record for r in manifest.rows], read_labels(manifest)))
    crbbb = scored_labels().index_of("59118001")
    assert scored_labels().index_of("713427006") == crbbb
    representative = scored_labels().classes[crbbb][0]
    assert labels["R1"] == [representative] and representative in labels["R2"] and labels["R3"] == []
    assert (tmp_path / "out" / "finetune" / "train.lbl").read_text().splitlines()[2] == ""


def test_bad_records_are_skipped_with_reasons_and_good_ones_come_through(tmp_path, capsys):
    src = tmp_path / "src"
    cases = _bad_records(src / "bad")
    good = [write_mat_record(src / "good", f"G{i}", np.full((12, 5000), 100 + i)) for i in range(3)]
    assert main([str(src), "--dest", str(tmp_path / "out"), "--workers", "2",
                 "--valid-percent", "0", "--test-percent", "0"]) == 0
    skipped = dict(line.split("\t") for line in (tmp_path / "out" / "skipped.tsv").read_text().splitlines())
    assert set(skipped) == {f"bad/{name}" for name in cases}
    for name, (_, words) in cases.items():
        assert words in skipped[f"bad/{name}"]
    rows = read_manifest(tmp_path / "out" / "pretrain" / "train.tsv").rows
    assert [r.record for r in rows] == [p.name for p in good]
    summary = capsys.readouterr().out
    assert f"{len(cases) + 3} records found, 3 written, 0 reused, {len(cases)} skipped" in summary
    assert "too short: 1" in summary and "NaN/Inf: 1" in summary


def test_nothing_usable_exits_1_with_the_reasons_on_file(tmp_path):
    write_mat_record(tmp_path / "src", "Z", np.zeros((12, 5000)))
    assert main([str(tmp_path / "src"), "--dest", str(tmp_path / "out")]) == 1
    assert "all-zero" in (tmp_path / "out" / "skipped.tsv").read_text()


def test_ptbxl_layout_end_to_end(tmp_path):
    written = synthesize_archive(tmp_path / "ptbxl", records=24, patients=8, seed=4, layout="ptbxl")
    assert main([str(tmp_path / "ptbxl"), "--dest", str(tmp_path / "out"), "--layout", "ptbxl",
                 "--workers", "1"]) == 0
    rows = [r for split in ("train", "valid", "test")
            for r in read_manifest(tmp_path / "out" / "finetune" / f"{split}.tsv").rows]
    assert sorted((r.record, r.patient) for r in rows) == sorted((w.name, w.patient) for w in written)


def _database(csv_path: Path) -> list[dict]:
    import csv

    with open(csv_path, newline="") as handle:
        return list(csv.DictReader(handle))


def _write_database(csv_path: Path, rows: list[dict]) -> None:
    import csv

    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def test_ptbxl_uses_the_recommended_strat_fold_split_unless_told_otherwise(tmp_path, capsys):
    """PTB-XL's folds 1-8 train, 9 valid, 10 test (as the literature reports); --split-by
    patient-hash keeps the hash split; a fold that is not 1-10 skips its record with the reason."""
    src = tmp_path / "ptbxl"
    synthesize_archive(src, records=40, patients=20, seed=4, layout="ptbxl")
    database = src / "ptbxl_database.csv"
    rows = _database(database)
    fold = {Path(row["filename_hr"]).name: int(row["strat_fold"]) for row in rows}
    rows[0]["strat_fold"] = "11"
    _write_database(database, rows)
    bad_name = Path(rows[0]["filename_hr"]).name
    expected = {**{f: "train" for f in range(1, 9)}, 9: "valid", 10: "test"}

    def splits(dest: Path) -> dict[str, str]:
        return {r.record: split for split in ("train", "valid", "test")
                for r in read_manifest(dest / "finetune" / f"{split}.tsv").rows}

    assert main([str(src), "--dest", str(tmp_path / "folds"), "--layout", "ptbxl", "--workers", "1"]) == 0
    assert "splits: PTB-XL's strat_fold" in capsys.readouterr().out
    by_fold = splits(tmp_path / "folds")
    assert by_fold == {name: expected[f] for name, f in fold.items() if name != bad_name}
    assert set(by_fold.values()) == {"train", "valid", "test"}
    skipped = (tmp_path / "folds" / "skipped.tsv").read_text()
    assert skipped.count("\n") == 1 and "strat_fold '11' is not a fold 1-10" in skipped
    assert main([str(src), "--dest", str(tmp_path / "strict"), "--layout", "ptbxl", "--split-by", "strat-fold",
                 "--workers", "1"]) == 0
    assert splits(tmp_path / "strict") == by_fold
    assert main([str(src), "--dest", str(tmp_path / "hash"), "--layout", "ptbxl", "--split-by", "patient-hash",
                 "--seed", "5", "--workers", "1"]) == 0
    rows = [r for split in ("train", "valid", "test") for r in read_manifest(tmp_path / "hash" / "finetune" / f"{split}.tsv").rows]
    assert len(rows) == 40 and (tmp_path / "hash" / "skipped.tsv").read_text() == ""
    assert splits(tmp_path / "hash") == {r.record: split_of(r.patient, 5, 10, 10) for r in rows}


def test_strat_fold_split_needs_an_archive_that_has_one(tmp_path, capsys):
    write_mat_record(tmp_path / "src", "R1", np.full((12, 5000), 300))
    assert main([str(tmp_path / "src"), "--dest", str(tmp_path / "out"), "--split-by", "strat-fold"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--split-by strat-fold" in err and "use --split-by patient-hash" in err and "\n" not in err


def test_ptbxl_folds_that_mix_a_patient_are_refused(tmp_path, capsys):
    src = tmp_path / "ptbxl"
    synthesize_archive(src, records=6, patients=2, seed=4, layout="ptbxl")
    database = src / "ptbxl_database.csv"
    rows = _database(database)
    other = next(row for row in rows[1:] if row["patient_id"] == rows[0]["patient_id"])
    other["strat_fold"] = "10" if rows[0]["strat_fold"] != "10" else "1"  # one patient in two splits
    _write_database(database, rows)
    assert main([str(src), "--dest", str(tmp_path / "out"), "--layout", "ptbxl"]) == 2
    err = capsys.readouterr().err
    assert "folds are patient-disjoint" in err and "--split-by patient-hash" in err
    assert main([str(src), "--dest", str(tmp_path / "out"), "--layout", "ptbxl", "--split-by", "patient-hash"]) == 0


@pytest.mark.parametrize("case", ["missing", "layout", "empty", "ptbxl", "labels"])
def test_bad_command_lines_exit_2_with_one_line_naming_the_folder(tmp_path, capsys, case):
    empty = tmp_path / "empty_archive"
    empty.mkdir()
    argv = {
        "missing": [str(tmp_path / "no_such_archive")],
        "layout": [str(empty), "--layout", "mitbih"],
        "empty": [str(empty)],
        "ptbxl": [str(empty), "--layout", "ptbxl"],
        "labels": [str(empty), "--labels", str(tmp_path / "none.csv")],
    }[case] + ["--dest", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("fairseq-ecg-manifest: error:")
    assert {"labels": "none.csv"}.get(case, "archive") in err


def test_console_script_reports_a_missing_folder_in_one_line(tmp_path):
    result = subprocess.run([str(PROG), str(tmp_path / "no_such_archive"), "--dest", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    (line,) = our_lines(result.stderr)
    assert "no_such_archive" in line and "does not exist" in line and "pass the folder" in line


def test_resume_after_sigkill_gives_the_same_bytes(archive, tmp_path):
    src, written = archive
    dest = tmp_path / "out"
    args = [str(src), "--dest", str(dest), "--workers", "2", "--seed", "9"]
    assert main(args) == 0
    reference = tree_hashes(dest)
    shutil.rmtree(dest)

    waves = dest / "waves"
    count = lambda: sum(1 for _ in waves.rglob("*.npy")) if waves.is_dir() else 0  # noqa: E731
    for _ in range(5):  # a kill must land before the manifests are written; on a busy machine retry
        shutil.rmtree(dest, ignore_errors=True)
        process = subprocess.Popen([str(PROG), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   start_new_session=True, cwd=REPO)
        deadline = time.monotonic() + 120  # a safety net: the wait is on the files written
        while time.monotonic() < deadline and process.poll() is None and count() < 8:
            time.sleep(0.002)
        os.killpg(process.pid, signal.SIGKILL)  # the program and its pool workers
        process.wait(timeout=30)
        if process.returncode == -signal.SIGKILL and not (dest / "pretrain" / "train.tsv").exists():
            break
    else:
        pytest.fail("fairseq-ecg-manifest finished before each of 5 kills")
    done = count()
    assert 8 <= done <= len(written), done
    with open(dest / "records.tsv", "a") as journal:  # as if killed in the middle of a line
        journal.write("training/cpsc_2018/g1/A0001\tok\t75")
    (waves / ".left_by_a_killed_writer.npy.tmp").write_bytes(b"partial")

    assert main(args) == 0
    assert tree_hashes(dest) == reference


def test_labeled_subset_keeps_whole_patients_within_the_limit():
    from fairseq_ecg.manifest import ManifestRow
    from fairseq_ecg.preparation import Good, labeled_subset

    goods = [Good(ManifestRow(f"w/{i}.npy", 5000, patient=f"p{i // 3}"), (), "train") for i in range(30)]
    chosen = labeled_subset(goods, 10, seed=1)
    patients = {g.row.patient for g in chosen}
    assert 7 <= len(chosen) <= 10
    assert all(sum(g.row.patient == p for g in goods) == sum(g.row.patient == p for g in chosen) for p in patients)
    assert chosen == labeled_subset(goods, 10, seed=1) and labeled_subset(goods, None, seed=1) == goods


def test_physionet_without_patients_csv_gets_a_notice(tmp_path, capsys):
    src = tmp_path / "physionet"
    synthesize_archive(src, records=4, patients=2, seed=5)
    assert main([str(src), "--dest", str(tmp_path / "with"), "--workers", "1"]) == 0
    assert "notice:" not in capsys.readouterr().out
    (src / "patients.csv").unlink()
    assert main([str(src), "--dest", str(tmp_path / "without"), "--workers", "1"]) == 0
    (notice,) = [line for line in capsys.readouterr().out.splitlines() if "notice:" in line]
    assert f"no patients.csv in {src}" in notice and "each record is treated as its own patient" in notice
    assert "identify manifests are empty" in notice and "splits are per record" in notice


def test_ptbxl_archive_without_ptbxl_layout_is_refused(tmp_path, capsys):
    synthesize_archive(tmp_path / "ptbxl", records=4, patients=2, seed=4, layout="ptbxl")
    for layout in (["--layout", "wfdb"], ["--layout", "physionet2021"]):
        assert main([str(tmp_path / "ptbxl"), "--dest", str(tmp_path / "out"), *layout]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and err.startswith("fairseq-ecg-manifest: error:")
        assert f"{tmp_path / 'ptbxl'} holds ptbxl_database.csv" in err and "pass --layout ptbxl" in err
    assert not (tmp_path / "out").exists()
    # --layout auto (the default) recognises it
    assert main([str(tmp_path / "ptbxl"), "--dest", str(tmp_path / "out"), "--workers", "1"]) == 0
    assert "layout=ptbxl " in (tmp_path / "out" / "records.tsv").read_text().splitlines()[0]


def test_a_folder_of_no_known_layout_is_refused_listing_the_layouts(tmp_path, capsys):
    from fairseq_ecg.sources import layouts

    (tmp_path / "mystery").mkdir()
    (tmp_path / "mystery" / "notes.txt").write_text("not an ECG archive\n")
    assert main([str(tmp_path / "mystery"), "--dest", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no known archive layout recognised" in err
    assert all(name in err for name in layouts())
