"""Archives as they really are: CinC 2021 Georgia headers that name the record ``E00001.mat``,
recordings present twice (CinC's copy of PTB-XL, byte-identical copies within an archive), and
records outside plausible bounds of rate, duration and amplitude."""
from pathlib import Path

import numpy as np
import scipy.io

from fairseq_ecg.leads import LEADS
from fairseq_ecg.manifest import read_manifest
from fairseq_ecg.preparation import main
from fairseq_ecg.records import RecordRef, read_record


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
