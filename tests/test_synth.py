"""The synthetic archives: readable by wfdb like the real ones, physiologically consistent,
deterministic, and varied enough to train and test on."""
import ast
import csv
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import wfdb

from fairseq_ecg import synth
from fairseq_ecg.synth import signals
from fairseq_ecg.labels import PTBXL_SCP_TO_SNOMED, scored_codes
from fairseq_ecg.leads import LEADS

REPO = Path(__file__).resolve().parents[1]


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def challenge(tmp_path_factory):
    out = tmp_path_factory.mktemp("challenge") / "archive"
    return out, synth.synthesize_archive(out, 200, 60, seed=7)


@pytest.fixture(scope="module")
def ptbxl(tmp_path_factory):
    out = tmp_path_factory.mktemp("ptbxl") / "archive"
    return out, synth.synthesize_archive(out, 40, 15, seed=3, layout="ptbxl")


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        synth.synthesize_archive(tmp_path / name, 12, 5, seed=seed)
    first, again, other = (_tree(tmp_path / name) for name in "abc")
    assert first == again
    assert first != other
    assert "patients.csv" in first


def test_wfdb_reads_challenge_records(challenge):
    out, records = challenge
    for record in records[:25]:
        read = wfdb.rdrecord(str(record.path))
        assert read.fs == record.sample_rate and read.n_sig == 12 and read.sig_len == record.num_samples
        assert read.sig_name == list(LEADS)
        assert f"Dx: {','.join(record.codes)}" in read.comments
        assert {"Rx: Unknown", "Hx: Unknown", "Sx: Unknown"} <= set(read.comments)
        val = scipy.io.loadmat(str(record.path) + ".mat")["val"]
        assert val.dtype == np.int16 and val.shape == (12, record.num_samples)
        assert record.path.with_suffix(".mat").read_bytes()[20:24] == b"val\x00"  # 24-byte header
        np.testing.assert_array_equal(read.p_signal.T, val / 1000.0)
        np.testing.assert_array_equal(val, signals.quantise(signals.synthesize_signal(record)))
        assert record.path.parent.parent.name in {s.name for s in signals.SOURCES}


def test_written_signal_obeys_einthoven_and_goldberger(challenge):
    _, records = challenge
    for record in records[:10]:
        d = wfdb.rdrecord(str(record.path), physical=False).d_signal.T.astype(float)
        i, ii, iii, avr, avl, avf = d[:6]
        assert np.abs(iii - (ii - i)).max() <= 1.5  # quantisation of three leads, in ADC units
        assert np.abs(avr + (i + ii) / 2).max() <= 1.5
        assert np.abs(avl - (i - ii / 2)).max() <= 1.5
        assert np.abs(avf - (ii - i / 2)).max() <= 1.5
        clean = signals.synthesize_signal(record, noise=False)
        np.testing.assert_allclose(clean[2], clean[1] - clean[0], atol=1e-12)
        assert 0.2 < np.ptp(clean, axis=1).max() < 6.0  # millivolts, not volts or microvolts


def test_dower_projection():
    vcg = np.random.default_rng(0).normal(size=(3, 50))
    leads = signals.vcg_to_leads(vcg)
    np.testing.assert_allclose(leads[LEADS.index("V2")], 0.044 * vcg[0] + 0.164 * vcg[1] - 1.387 * vcg[2])
    np.testing.assert_allclose(leads[LEADS.index("aVF")], leads[1] - leads[0] / 2)


def test_classes_rates_and_lengths_vary(challenge):
    _, records = challenge
    counts = Counter(code for r in records for code in r.codes)
    assert len(counts) >= 8
    assert set(counts) <= set(scored_codes())
    assert counts.most_common(1)[0][0] == signals.NSR
    assert all(r.codes for r in records)
    rates = Counter(r.sample_rate for r in records)
    assert {257, 500, 1000} <= set(rates) and rates[500] > len(records) / 2
    seconds = [r.num_samples / r.sample_rate for r in records]
    assert Counter(seconds).most_common(1)[0][0] == 10 and max(seconds) > 10


def test_patients_csv_and_persistent_morphology(challenge):
    out, records = challenge
    with open(out / "patients.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted((row["record"], row["patient"]) for row in rows) == sorted((r.name, r.patient) for r in records)
    per_patient = defaultdict(list)
    for record in records:
        per_patient[record.patient].append(record)
    assert len(per_patient) == 60 and all(len(v) >= 2 for v in per_patient.values())
    morphology = {signals.CRBBB, signals.CLBBB, signals.LAD, signals.RAD, signals.TINV, signals.LQRSV}
    for group in per_patient.values():
        assert len({frozenset(morphology & set(r.codes)) for r in group}) == 1
        assert len({r.sample_rate for r in group}) == 1


def test_fewer_records_than_twice_the_patients(tmp_path):
    records = synth.synthesize_archive(tmp_path / "x", 7, 5, seed=1)
    assert Counter(r.patient for r in records).keys() == {f"P{k:05d}" for k in range(1, 6)}


def test_axis_classes_show_in_the_limb_leads():
    for index in range(120):
        patient = signals.make_patient(11, index)
        qrs = patient.kinds == 1
        axis = signals._frontal_axis((patient.vectors[qrs] * patient.widths[qrs, None]).sum(0))
        assert (signals.LAD in patient.codes) == (axis < -30)
        assert (signals.RAD in patient.codes) == (axis > 90)


def test_ptbxl_layout(ptbxl):
    out, records = ptbxl
    with open(out / "ptbxl_database.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {"ecg_id", "patient_id", "filename_lr", "filename_hr", "scp_codes", "strat_fold", "age",
            "sex"} <= set(rows[0])
    with open(out / "scp_statements.csv", newline="") as handle:
        statements = {row[""] for row in csv.DictReader(handle)}
    folds = {}
    for row, record in zip(rows, records):
        scp = ast.literal_eval(row["scp_codes"])
        assert set(scp) <= statements
        assert record.codes == tuple(dict.fromkeys(PTBXL_SCP_TO_SNOMED[s] for s in scp if s in PTBXL_SCP_TO_SNOMED))
        assert 1 <= int(row["strat_fold"]) <= 10
        assert folds.setdefault(row["patient_id"], row["strat_fold"]) == row["strat_fold"]
        assert str(int(float(row["patient_id"]))) == record.patient
        high = wfdb.rdrecord(str(out / row["filename_hr"]))
        low = wfdb.rdrecord(str(out / row["filename_lr"]))
        assert (high.fs, high.sig_len, low.fs, low.sig_len) == (500, 5000, 100, 1000)
        assert high.sig_name == [lead.upper() for lead in LEADS] == low.sig_name
        assert out / row["filename_hr"] == record.path
        np.testing.assert_allclose(high.p_signal.T, signals.quantise(signals.synthesize_signal(record)) / 1000)
    assert len(set(folds.values())) == 10


def test_refuses_a_folder_with_files(tmp_path):
    (tmp_path / "old.txt").write_text("x")
    with pytest.raises(FileExistsError):
        synth.synthesize_archive(tmp_path, 3, 1)
    assert synth.main([str(tmp_path), "--records", "3"]) == 1


def test_cli_summary(tmp_path, capsys):
    assert synth.main([str(tmp_path / "o"), "--records", "6", "--patients", "2", "--seed", "5"]) == 0
    out = capsys.readouterr().out.strip()
    assert len(out.splitlines()) == 1 and out.startswith("wrote 6 records of 2 patients")


def test_cli_bad_argument_in_a_subprocess(tmp_path):
    result = subprocess.run([sys.executable, "-m", "fairseq_ecg.synth", str(tmp_path / "o"), "--records", "0"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "--records must be at least 1" in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args", [["--records", "3", "--patients", "5"], ["--records", "3", "--layout", "mitbih"],
                                  ["--records", "two"], ["--records", "3", "--seed", "-1"], []])
def test_cli_bad_arguments(tmp_path, args, capsys):
    with pytest.raises(SystemExit) as stop:
        synth.main([str(tmp_path / "o"), *args])
    assert stop.value.code != 0
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("fairseq-ecg-synth: error:")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("layout", ["code15", "ptbxl", "numpy"])
def test_the_command_names_the_classes_of_every_layout(tmp_path, capsys, layout):
    """CODE-15% writes codes equivalent to a scored class (59118001 for RBBB): the summary names the
    class instead of failing after the archive is written (issue 20 item 16)."""
    from fairseq_ecg.synth import main

    assert main([str(tmp_path / "out"), "--records", "30", "--seed", "2", "--layout", layout]) == 0
    out = capsys.readouterr().out
    assert "wrote 30 records" in out and "classes " in out and "=" in out.split("classes ", 1)[1]
