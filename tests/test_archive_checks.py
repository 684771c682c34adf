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
from fairseq_ecg.sources import RecordRef, read_record
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


def test_duplicates_come_out_the_same_when_resumed(copies, capsys):
    root, written, dest, args = copies
    if not (dest / "duplicates.tsv").is_file():
        assert main(args) == 0
    outputs = ["duplicates.tsv", "records.tsv", *(n for names in SPLIT_MANIFESTS.values() for n in names)]
    before = {name: (dest / name).read_bytes() for name in outputs}
    capsys.readouterr()
    assert main(args) == 0  # the digests come from the journal: no record is read again
    assert "63 records found, 0 written, 63 reused" in capsys.readouterr().out
    assert {name: (dest / name).read_bytes() for name in outputs} == before
    # a journal line without its digest is not trusted: that record is read again, with the same result
    journal = dest / "records.tsv"
    lines = journal.read_text().splitlines()
    column = lines[1].split("\t").index("sha256")
    fields = lines[2].split("\t")
    fields[column] = ""
    journal.write_text("\n".join(lines[:2] + ["\t".join(fields)] + lines[3:]) + "\n")
    assert main(args) == 0
    assert "63 records found, 1 written, 62 reused" in capsys.readouterr().out
    assert {name: (dest / name).read_bytes() for name in outputs} == before


# ---------------------------------------------------------------------------------------------
# records outside plausible bounds (issue 20 item 7)

SINE = np.sin(np.arange(5000) / 30.0)[None].repeat(12, 0) * 0.5  # 10 s at 500 Hz, 0.5 mV


def _wfdb_case(folder: Path, fs_text: str, samples: int = 5000, keep_signal: bool = True) -> None:
    path = write_georgia_record(folder, "R1", SINE * 1000, record_name="R1")
    lines = (folder / "R1.hea").read_text().splitlines()
    lines[0] = f"R1 12 {fs_text} {samples} 05-May-2020 14:50:55"
    (folder / "R1.hea").write_text("\n".join(lines) + "\n")
    if not keep_signal:  # judged from the header alone, before the signal file is read
        path.with_suffix(".mat").unlink()


def _numpy_case(folder: Path, scale: float) -> None:
    folder.mkdir(parents=True)
    signal = SINE.copy()
    signal[4, 2000] = scale
    np.save(folder / "r1.npy", signal)
    (folder / "records.csv").write_text(f'record,sample_rate,leads,axis\nr1.npy,500,"{",".join(LEADS)}",leads-first\n')


def _muse_case(folder: Path) -> None:
    from fairseq_ecg.synth.layouts import muse_document

    folder.mkdir(parents=True)
    document = muse_document(SINE, 500, "MRN1", ("Doe", "Jane"), "01-01-1950", ["Sinus rhythm"])
    assert b"<SampleBase>500</SampleBase>" in document
    (folder / "r1.xml").write_bytes(document.replace(b"<SampleBase>500</SampleBase>", b"<SampleBase>1</SampleBase>"))


def _dicom_case(folder: Path) -> None:
    from fairseq_ecg.synth.layouts import dicom_dataset

    folder.mkdir(parents=True)
    ds = dicom_dataset(SINE, 500, "MRN1", "Doe^Jane", "19500101")
    ds.WaveformSequence[1].SamplingFrequency = "1"
    ds.save_as(folder / "r1.dcm", enforce_file_format=True)


def _code15_case(folder: Path) -> None:
    """One exam of a tracings dataset 400,000 samples long (chunked: the unwritten chunks take no space)."""
    import h5py

    from fairseq_ecg.synth.layouts import CODE15_COLUMNS

    folder.mkdir(parents=True)
    with h5py.File(folder / "exams_part0.hdf5", "w") as h5:
        tracings = h5.create_dataset("tracings", (2, 400_000, 12), dtype="float32", chunks=(1, 4096, 12))
        tracings[0, 198_000:202_000] = SINE[:, :4000].T
        h5.create_dataset("exam_id", data=np.array([1234, 0]))
    row = {"exam_id": 1234, "patient_id": 7, "trace_file": "exams_part0.hdf5"}
    (folder / "exams.csv").write_text(",".join(CODE15_COLUMNS) + "\n"
                                      + ",".join(str(row.get(c, "False")) for c in CODE15_COLUMNS) + "\n")


BOUND_CASES = {  # case -> (writer, words of the reason)
    "wfdb at 0.5 Hz": (lambda f: _wfdb_case(f, "0.5"), "sampling rate 0.5 Hz is below the plausible bound of 50 Hz"),
    "wfdb at 0.5 Hz, no signal file": (lambda f: _wfdb_case(f, "0.5", keep_signal=False),
                                       "sampling rate 0.5 Hz is below the plausible bound of 50 Hz (--min-rate)"),
    "wfdb at 1e-300 Hz": (lambda f: _wfdb_case(f, "1e-300"), "sampling rate 1e-300 Hz is below the plausible bound"),
    "wfdb at 5e2 Hz (wfdb reads 5)": (lambda f: _wfdb_case(f, "5e2"), "written 500 Hz, wfdb reads 5 Hz"),
    "wfdb at 20 kHz": (lambda f: _wfdb_case(f, "20000"), "above the plausible bound of 10000 Hz (--max-rate)"),
    "wfdb of 4,000,000 samples": (lambda f: _wfdb_case(f, "500", 4_000_000, keep_signal=False),
                                  "last 8000 s, beyond the plausible bound of 7200 s (2 h; --max-seconds)"),
    "numpy 1.77e18 mV": (lambda f: _numpy_case(f, 1.77e18),
                         "lead aVL reaches 1.77e+18 mV, beyond the plausible bound of 50 mV (--max-mv)"),
    "muse SampleBase 1": (_muse_case, "sampling rate 1 Hz is below the plausible bound of 50 Hz"),
    "dicom SamplingFrequency 1": (_dicom_case, "sampling rate 1 Hz is below the plausible bound of 50 Hz"),
    "code15 of 400,000 samples": (_code15_case, "tracings has shape (2, 400000, 12), expected [exams, 4096, 12]"),
}


@pytest.mark.parametrize("case", list(BOUND_CASES))
def test_implausible_record_is_skipped_with_its_bound(tmp_path, capsys, case):
    write, words = BOUND_CASES[case]
    write(tmp_path / "src")
    assert main([str(tmp_path / "src"), "--dest", str(tmp_path / "out"), "--workers", "1"]) == 1
    (line,) = (tmp_path / "out" / "skipped.tsv").read_text().splitlines()
    assert words in line, line
    assert not list((tmp_path / "out").rglob("*.npy"))
    assert "no usable record" in capsys.readouterr().err


def test_bounds_are_options_and_the_defaults_pass_real_archives(tmp_path, capsys):
    from fairseq_ecg.sources import DEFAULT_BOUNDS

    _numpy_case(tmp_path / "src", 60.0)  # 60 mV: beyond the default, kept with --max-mv 100
    args = [str(tmp_path / "src"), "--dest", str(tmp_path / "out"), "--workers", "1"]
    assert main(args) == 1
    assert main(args + ["--max-mv", "100"]) == 0  # a journal of other bounds is not reused
    assert np.load(tmp_path / "out" / "waves" / "r1.npy").max() == pytest.approx(60.0)
    assert main(args + ["--max-mv", "0"]) == 2
    assert "--max-mv > 0" in capsys.readouterr().err
    for rate, seconds in ((100, 10), (257, 1800), (500, 10), (1000, 60), (400, 10.24)):  # PTB-XL lr, INCART, ...
        DEFAULT_BOUNDS.check(rate, int(rate * seconds))
    written = synthesize_archive(tmp_path / "ptbxl", records=2, patients=1, seed=1, layout="ptbxl")
    low = Path(str(written[0].path).replace("records500", "records100").replace("_hr", "_lr"))
    assert read_record(RecordRef(path=low, name=low.name)).sample_rate == 100  # PTB-XL's 100 Hz files pass
