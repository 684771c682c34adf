"""A machine error is not a bad record (issue 20 item 1): a write the disk refuses (no space, quota,
read-only, I/O error, a file size limit) stops preparation, predict, embed and import with one line
naming the file and a non-zero exit, keeps nothing half-written, and the same command resumes once
the cause is gone. A read error of one source file stays that record's problem."""
import errno
import os
import resource
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import BIN, REPO, write_random_manifest
from fairseq_ecg import manifest as manifest_module
from fairseq_ecg import preparation
from fairseq_ecg.manifest import EXIT_MACHINE_ERROR
from signals_reference import signals_checkpoint
from test_records import write_mat_record

MANIFESTS = ("pretrain/train.tsv", "finetune/train.tsv", "identify/train.tsv")


def _archive(folder: Path, count: int) -> Path:
    for i in range(count):
        write_mat_record(folder / "g1", f"A{i}", np.full((12, 5000), 100 + i), dx="426783006")
    return folder


def _errors(text: str, program: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(f"{program}: error:")]


def _limited(program: str, *args: str, max_bytes: int) -> subprocess.CompletedProcess:
    """Run a console script with every file it writes limited to ``max_bytes`` (EFBIG beyond:
    Python ignores SIGXFSZ), as a full quota or a small disk would stop it, without root."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))
    return subprocess.run([str(BIN / program), *args], cwd=REPO, capture_output=True, text=True, timeout=300,
                          preexec_fn=limit, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def test_no_space_stops_preparation_and_the_same_command_resumes(tmp_path, monkeypatch, capsys):
    """The 4th waveform meets a full disk: no manifest from the 3 done, exit 74, one line naming the
    file; freed, the same command reuses the 3 and writes the rest (before: exit 0, 3 records)."""
    src, dest = _archive(tmp_path / "cinc", 6), tmp_path / "out"
    replace, waves = os.replace, []

    def full_after_three(tmp, path):
        if str(path).endswith(".npy"):
            waves.append(path)
            if len(waves) == 4:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return replace(tmp, path)

    monkeypatch.setattr(manifest_module.os, "replace", full_after_three)
    argv = [str(src), "--dest", str(dest), "--workers", "1", "--valid-percent", "0", "--test-percent", "0"]
    assert preparation.main(argv) == EXIT_MACHINE_ERROR
    errors = _errors(capsys.readouterr().err, "fairseq-ecg-manifest")
    assert len(errors) == 1 and f"no space left on device writing {waves[3]}" in errors[0]
    assert not any((dest / name).exists() for name in MANIFESTS)
    assert len(list((dest / "waves").rglob("*.npy"))) == 3 and not _temporaries(dest)

    monkeypatch.setattr(manifest_module.os, "replace", replace)
    assert preparation.main(argv) == 0
    assert "6 records found, 3 written, 3 reused, 0 skipped" in capsys.readouterr().out
    assert len((dest / "pretrain" / "train.tsv").read_text().splitlines()) == 1 + 6


def test_a_file_size_limit_stops_preparation_with_workers(tmp_path):
    """Through the worker pool (a real EFBIG from the kernel): the run stops, names the file and
    writes no manifest; nothing of it is a 'skipped' record."""
    src, dest = _archive(tmp_path / "cinc", 4), tmp_path / "out"
    result = _limited("fairseq-ecg-manifest", str(src), "--dest", str(dest), "--workers", "2", max_bytes=100_000)
    assert result.returncode == EXIT_MACHINE_ERROR, result.stderr[-2000:]
    errors = _errors(result.stderr, "fairseq-ecg-manifest")
    assert len(errors) == 1 and "file too large writing " in errors[0] and "/waves/" in errors[0]
    assert "Traceback" not in result.stderr and "skipped" not in result.stdout
    assert not any((dest / name).exists() for name in MANIFESTS) and not _temporaries(dest)


def test_a_read_error_of_one_source_file_stays_a_bad_record(tmp_path, monkeypatch, capsys):
    src, dest = _archive(tmp_path / "cinc", 3), tmp_path / "out"
    read_record = preparation.read_record

    def eio_on_a1(ref, *args, **kwargs):
        if ref.name == "A1":
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(ref.path))
        return read_record(ref, *args, **kwargs)

    monkeypatch.setattr(preparation, "read_record", eio_on_a1)
    assert preparation.main([str(src), "--dest", str(dest), "--workers", "1",
                             "--valid-percent", "0", "--test-percent", "0"]) == 0
    assert "3 records found, 2 written, 0 reused, 1 skipped" in capsys.readouterr().out
    assert "A1" in (dest / "skipped.tsv").read_text()


def test_embed_import_and_predict_stop_on_a_refused_write(tmp_path, tiny_pretrained):
    data = tmp_path / "data"
    write_random_manifest(data, "test", 3, seed=3)
    out = tmp_path / "emb" / "test.npy"
    out.parent.mkdir()
    result = _limited("fairseq-ecg-embed", "--checkpoint", str(tiny_pretrained), str(data / "test.tsv"),
                      "--out", str(out), max_bytes=200)
    assert result.returncode == EXIT_MACHINE_ERROR, result.stderr[-2000:]
    assert f"fairseq-ecg-embed: error: file too large writing {out}" in result.stderr
    assert list(out.parent.iterdir()) == []  # neither the array, nor its row file, nor a temporary

    signals_checkpoint(tmp_path / "src.pt", "classifier", "parametrizations", seed=2, num_labels=26)
    imported = tmp_path / "imported" / "cls.pt"
    result = _limited("fairseq-ecg-import", str(tmp_path / "src.pt"), "--out", str(imported), "--kind",
                      "classifier", max_bytes=10_000)
    assert result.returncode == EXIT_MACHINE_ERROR, result.stderr[-2000:]
    assert f"fairseq-ecg-import: error: file too large writing {imported}" in result.stderr
    assert list(imported.parent.iterdir()) == []
    subprocess.run([str(BIN / "fairseq-ecg-import"), str(tmp_path / "src.pt"), "--out", str(imported), "--kind",
                    "classifier"], cwd=REPO, check=True, capture_output=True)  # the disk is back: it resumes

    csv = tmp_path / "pred" / "test.csv"
    result = _limited("fairseq-ecg-predict", "--checkpoint", str(imported), str(data / "test.tsv"),
                      "--out", str(csv), max_bytes=100)
    assert result.returncode == EXIT_MACHINE_ERROR, result.stderr[-2000:]
    assert f"fairseq-ecg-predict: error: file too large writing {csv}" in result.stderr
    assert [p.name for p in csv.parent.iterdir() if not p.name.endswith("patient_salt.txt")] == []


def _dead_pid() -> int:
    """The pid of a process that has ended (waited for: no longer running)."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_a_rerun_removes_what_a_killed_import_or_predict_left(tmp_path):
    """A killed import left a 243 MB temporary beside its output and a killed predict an 8 KB one,
    which no re-run removed (issue 20 item 16). The writers' temporaries carry their pid: the same
    command removes those of writers that are gone and keeps one whose writer still runs."""
    signals_checkpoint(tmp_path / "src.pt", "classifier", "parametrizations", seed=2, num_labels=26)
    imported = tmp_path / "imported" / "cls.pt"
    imported.parent.mkdir()
    dead, alive = _dead_pid(), os.getpid()
    killed = imported.parent / f".cls.pt.{dead}.k1ll3d.tmp"
    running = imported.parent / f".cls.pt.{alive}.st1ll.tmp"
    for path in (killed, running):
        path.write_bytes(b"\0" * 4096)
    subprocess.run([str(BIN / "fairseq-ecg-import"), str(tmp_path / "src.pt"), "--out", str(imported), "--kind",
                    "classifier"], cwd=REPO, check=True, capture_output=True)
    assert sorted(p.name for p in imported.parent.iterdir()) == sorted(["cls.pt", running.name])

    data = tmp_path / "data"
    write_random_manifest(data, "test", 2, seed=3)
    out = tmp_path / "pred" / "test.csv"
    out.parent.mkdir()
    left = out.parent / f".test.csv.{dead}.abcdef.tmp"
    left.write_text("record,segments\n")
    subprocess.run([str(BIN / "fairseq-ecg-predict"), "--checkpoint", str(imported), str(data / "test.tsv"),
                    "--out", str(out)], cwd=REPO, check=True, capture_output=True)
    assert not left.exists() and out.is_file()
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]
