"""Runs forked from a process that imported fairseq once (fairseq_ecg.experiments.launcher) compute what their
``command.sh`` computes when a user runs it alone."""
import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import torch

from conftest import BIN, REPO
from fairseq_ecg.experiments import runner as experiments
from fairseq_ecg.experiments.launcher import PreloadedLauncher, as_a_fresh_interpreter
from fairseq_ecg.preparation import main as prepare
from fairseq_ecg.synth import synthesize_archive


def test_preloaded_launcher_gives_the_program_its_log_and_exit_code(tmp_path):
    launch = PreloadedLauncher()
    assert launch(["fairseq-ecg-userdir"], tmp_path / "ok.log", {"OMP_NUM_THREADS": "1"}) == 0
    assert (tmp_path / "ok.log").read_text().strip() == str(REPO / "fairseq_ecg")
    code = launch(["fairseq-ecg-manifest", str(tmp_path / "missing"), "--dest", str(tmp_path / "d")],
                  tmp_path / "bad.log", {})
    assert code not in (0, None)
    assert str(tmp_path / "missing") in (tmp_path / "bad.log").read_text()


def _write_start_method(path: str) -> None:  # runs in a forked child
    as_a_fresh_interpreter()
    Path(path).write_text(multiprocessing.get_start_method())


def test_a_forked_run_starts_its_data_loader_workers_as_a_new_interpreter_does(tmp_path):
    """A forkserver child would otherwise start workers through a second forkserver (seconds each,
    and not what the run's command.sh does)."""
    fresh = subprocess.run([sys.executable, "-c", "import multiprocessing; print(multiprocessing.get_start_method())"],
                           capture_output=True, text=True, check=True).stdout.strip()
    child = PreloadedLauncher().context.Process(target=_write_start_method, args=(str(tmp_path / "method"),))
    child.start()
    child.join()
    assert child.exitcode == 0 and (tmp_path / "method").read_text() == fresh


def test_a_cell_run_by_the_matrix_is_reproduced_by_its_command_sh(tmp_path, monkeypatch):
    synthesize_archive(tmp_path / "src", records=40, patients=20, seed=8)
    data, out = tmp_path / "data", tmp_path / "results"
    assert prepare([str(tmp_path / "src"), "--dest", str(data), "--workers", "1", "--valid-percent", "20",
                    "--test-percent", "20"]) == 0
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the same threads both ways: bit-identical floats
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    code = experiments.main([
        "--data", str(data), "--out", str(out), "--preset", "demo", "--variants", "w2v", "--leads", "12",
        "--seeds", "1", "--no-linear-probe", "--tasks", "classification", "--experiments", "1", "--jobs", "1",
        "--pretrain-args", "optimization.max_update=3 task.segment_seconds=1 dataset.batch_size=8",
        "--finetune-args", "optimization.max_epoch=2 dataset.validate_interval=1 checkpoint.save_interval=1 "
                           "task.segment_seconds=1"])
    assert code == 0
    cell = out / "runs" / "classification" / "w2v_P12_F12_s0"
    forked = torch.load(cell / "checkpoint_best.pt", map_location="cpu", weights_only=False)["model"]
    metrics = json.loads((cell / "evaluate" / "metrics.json").read_text())
    for name in ("checkpoint_best.pt", "checkpoint_last.pt"):
        (cell / name).rename(tmp_path / name)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    for folder in (cell, cell / "evaluate"):  # as a user runs them: bash command.sh, a new interpreter
        result = subprocess.run(["bash", str(folder / "command.sh")], cwd=tmp_path, env=env, capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
    alone = torch.load(cell / "checkpoint_best.pt", map_location="cpu", weights_only=False)["model"]
    assert forked.keys() == alone.keys()
    assert all(torch.equal(forked[key], alone[key]) for key in forked)
    evaluated = experiments.parse_metrics(result.stdout + result.stderr)
    assert evaluated and evaluated == metrics
