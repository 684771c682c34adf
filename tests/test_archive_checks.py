"""Archives as they really are: CinC 2021 Georgia headers that name the record ``E00001.mat``,
recordings present twice (CinC's copy of PTB-XL, byte-identical copies within an archive), and
records outside plausible bounds of rate, duration and amplitude."""
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from fairseq_ecg.leads import LEADS
from fairseq_ecg.manifest import read_manifest
from fairseq_ecg.preparation import main
from fairseq_ecg.records import RecordRef, read_record
from fairseq_ecg.synth import synthesize_archive


def write_georgia_record(folder: Path, name: str, val: np.ndarray, record_name: str = "") -> Path:
    """A CinC 2021 record as the real Georgia headers write it: the record line names the record
    with its signal file's extension (``E00001.mat 12 500 5000 ...``); MATLAB v4 ``.mat``, 16+24."""
    folder.mkdir(parents=True, exist_ok=True)
    val = np.asarray(val, dtype=np.int16)
    scipy.io.savemat(folder / f"{name}.mat", {"val": val}, format="4")
    lines = [f"{record_name or name + '.mat'} 12 500 {val.shape[1]} 05-May-2020 14:50:55"]
    lines += [f"{name}.mat 16+24 1000/mV 16 0 {int(val[i, 0])} 0 0 {lead}" for i, lead in enumerate(LEADS)]
    lines += ["#Age: 60", "#Sex: Female", "#Dx: 426783006,164889003", "#Rx: Unknown"]
    (folder / f"{name}.hea").write_text("\n".join(lines) + "\n")
    return folder / name


def _val(seed: int, samples: int = 5000) -> np.ndarray:
    return (np.random.default_rng(seed).normal(0, 300, (12, samples))).astype(np.int16)


def test_georgia_record_line_naming_the_mat_file_is_read(tmp_path, capsys):
    group = tmp_path / "cinc" / "training" / "georgia" / "g1"
    vals = {f"E0000{i}": _val(i) for i in (1, 2)}
    for name, val in vals.items():
        write_georgia_record(group, name, val)
    write_georgia_record(group, "E00003", _val(3), record_name="E00009.mat")  # another record's name
    write_georgia_record(group, "E00004", _val(4), record_name="E00004.dat")  # not the .mat
    ecg = read_record(RecordRef(path=group / "E00001", name="E00001"))
    np.testing.assert_allclose(ecg.signal, vals["E00001"] / 1000.0, atol=1e-6)
    assert ecg.codes == ("426783006", "164889003") and ecg.sample_rate == 500

    assert main([str(tmp_path / "cinc"), "--dest", str(tmp_path / "out"), "--workers", "1",
                 "--valid-percent", "0", "--test-percent", "0"]) == 0
    rows = read_manifest(tmp_path / "out" / "pretrain" / "train.tsv").rows
    assert [r.record for r in rows] == ["E00001", "E00002"]
    skipped = dict(line.split("\t") for line in (tmp_path / "out" / "skipped.tsv").read_text().splitlines())
    assert set(skipped) == {"training/georgia/g1/E00003", "training/georgia/g1/E00004"}
    assert all("unreadable header" in reason for reason in skipped.values())
    summary = capsys.readouterr().out
    assert "4 records found, 2 written, 0 reused, 2 skipped (unreadable header: 2" in summary
    assert "2 record(s) have a header whose record line names the record NAME.mat" in summary
    assert "unknown lead names" not in summary
    # a re-run reuses both records from the journal and still counts them
    assert main([str(tmp_path / "cinc"), "--dest", str(tmp_path / "out"), "--workers", "1",
                 "--valid-percent", "0", "--test-percent", "0"]) == 0
    summary = capsys.readouterr().out
    assert "2 reused" in summary and "2 record(s) have a header whose record line names" in summary


# ---------------------------------------------------------------------------------------------
# the same recording twice (issue 19 item 3)

SPLIT_MANIFESTS = {"train": ["pretrain/train.tsv", "finetune/train.tsv", "identify/train.tsv"],
                   "valid": ["pretrain/valid.tsv", "finetune/valid.tsv", "identify/valid_gallery.tsv",
                             "identify/valid_probe.tsv"],
                   "test": ["finetune/test.tsv", "identify/test_gallery.tsv", "identify/test_probe.tsv"]}


def _cinc_copy(ptbxl_record: Path, folder: Path, name: str, change: bool = False) -> None:
    """PTB-XL's record as the CinC 2021 archive holds it: the same ADC values in a MATLAB v4
    ``.mat`` under another name (``change``: one sample differs, so only the name links them)."""
    import wfdb

    val = wfdb.rdrecord(str(ptbxl_record), physical=False).d_signal.T.astype(np.int16)
    if change:
        val[0, 100] += 7
    folder.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(folder / f"{name}.mat", {"val": val}, format="4")
    lines = [f"{name} 12 500 {val.shape[1]} 05-Feb-2020 11:39:16"]
    lines += [f"{name}.mat 16+24 1000/mV 16 0 {int(val[i, 0])} 0 0 {lead}" for i, lead in enumerate(LEADS)]
    (folder / f"{name}.hea").write_text("\n".join(lines + ["#Dx: 426783006"]) + "\n")


def _digests_by_split(dest: Path) -> dict[str, dict[str, str]]:
    """split -> {sha256 of the waveform file: record} over all manifests of that split."""
    import hashlib

    found: dict[str, dict[str, str]] = {}
    for split, names in SPLIT_MANIFESTS.items():
        for name in names:
            for row in read_manifest(dest / name).rows:
                wave = np.load(dest / row.relative_path)
                digest = hashlib.sha256(repr(wave.shape).encode() + wave.tobytes()).hexdigest()
                found.setdefault(split, {})[digest] = row.record
    return found


@pytest.fixture(scope="module")
def copies(tmp_path_factory):
    """A synthetic PTB-XL archive (30 records, 10 patients, its folds) and a CinC-layout archive
    holding all 30 again as HRnnnnn (HR00022 with one sample changed: found by name only), one of
    them once more as A9001 (found by waveform only), and two byte-identical Georgia records."""
    root = tmp_path_factory.mktemp("copies")
    written = synthesize_archive(root / "ptbxl", records=30, patients=10, seed=4, layout="ptbxl")
    cinc = root / "cinc" / "training"
    for number, record in enumerate(written, start=1):
        _cinc_copy(record.path, cinc / "ptb-xl" / "g1", f"HR{number:05d}", change=number == 22)
    _cinc_copy(written[8].path, cinc / "cpsc_2018" / "g1", "A9001")  # ecg_id 9, strat_fold 10 (test)
    for name in ("E00001", "E00002"):
        write_georgia_record(cinc / "georgia" / "g1", name, _val(7))
    dest = root / "out"
    args = [str(root / "ptbxl"), str(root / "cinc"), "--dest", str(dest), "--workers", "1", "--seed", "2"]
    return root, written, dest, args


def test_no_recording_is_on_both_sides_of_a_split(copies, capsys):
    root, written, dest, args = copies
    assert main(args) == 0
    summary = capsys.readouterr().out
    by_split = _digests_by_split(dest)
    for split, other in (("test", "train"), ("test", "valid"), ("valid", "train")):
        shared = set(by_split[split]) & set(by_split[other])
        assert not shared, [by_split[split][d] for d in shared]
    ids = {split: {r.record for n in names for r in read_manifest(dest / n).rows} for split, names in SPLIT_MANIFESTS.items()}
    assert not any(name.startswith("HR") for names in ids.values() for name in names)  # PTB-XL's copies kept

    lines = [line.split("\t") for line in (dest / "duplicates.tsv").read_text().splitlines()]
    kept = {f"ptbxl/{w.path.relative_to(root / 'ptbxl').as_posix()}" for w in written}
    expected = {f"cinc/training/ptb-xl/g1/HR{n:05d}": sorted(kept)[n - 1] for n in range(1, 31)}
    expected["cinc/training/cpsc_2018/g1/A9001"] = sorted(kept)[8]
    expected["cinc/training/georgia/g1/E00002"] = "cinc/training/georgia/g1/E00001"
    assert {copy: keeper for copy, keeper, _ in lines} == expected
    how = {copy: text for copy, _, text in lines}
    assert how["cinc/training/ptb-xl/g1/HR00022"] == "CinC 2021 HR00022 is PTB-XL ecg_id 22"
    assert how["cinc/training/ptb-xl/g1/HR00001"] == "identical waveform; CinC 2021 HR00001 is PTB-XL ecg_id 1"
    assert how["cinc/training/cpsc_2018/g1/A9001"] == how["cinc/training/georgia/g1/E00002"] == "identical waveform"
    assert "duplicates: 32 record(s) are copies of another record's recording (31 identical waveform(s), " \
           "30 CinC 2021 HRnnnnn = PTB-XL ecg_id nnnnn)" in summary
    assert "pretrain: train" in summary and "63 records found, 63 written" in summary
    # PTB-XL's labels and patient ids: the kept rows are the PTB-XL archive's own
    rows = [r for name in SPLIT_MANIFESTS["train"][1:2] + SPLIT_MANIFESTS["valid"][1:2] + SPLIT_MANIFESTS["test"][:1]
            for r in read_manifest(dest / name).rows]
    assert sorted(r.record for r in rows if r.record.endswith("_hr")) == sorted(w.name for w in written)
    assert {r.patient for r in rows if r.record.endswith("_hr")} == {f"ptbxl:{w.patient}" for w in written}


def test_duplicates_come_out_the_same_when_resumed_and_from_an_older_journal(copies, capsys):
    root, written, dest, args = copies
    if not (dest / "duplicates.tsv").is_file():
        assert main(args) == 0
    outputs = ["duplicates.tsv", "records.tsv", *(n for names in SPLIT_MANIFESTS.values() for n in names)]
    before = {name: (dest / name).read_bytes() for name in outputs}
    # a journal from before the sha256 column: the digests come from the waveform files, no record is read
    journal = dest / "records.tsv"
    lines = journal.read_text().splitlines()
    column = lines[1].split("\t").index("sha256")
    journal.write_text("".join("\t".join(f for i, f in enumerate(line.split("\t")) if i != column or n == 0) + "\n"
                               for n, line in enumerate(lines)))
    capsys.readouterr()
    assert main(args) == 0
    assert "63 records found, 0 written, 63 reused" in capsys.readouterr().out
    assert {name: (dest / name).read_bytes() for name in outputs} == before
    assert main(args) == 0  # and once more from the journal it wrote
    assert {name: (dest / name).read_bytes() for name in outputs} == before
