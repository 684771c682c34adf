"""fairseq's programs stay quiet with the plugin: a tiny run prints its progress, metrics and
checkpoint lines and little else, its log goes beside the checkpoints, and Ctrl-C is one line."""
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import BIN, REPO, run_cli, write_random_manifest
from fairseq_ecg.patches.console import program_name

# README, "Quiet runs": a tiny 3-epoch pretraining prints about 60 lines, 18 of them Hydra's own
# before the plugin is imported; fairseq's 10 KB configuration line and its module tree are gone.
TINY_RUN_LINE_BUDGET = 64
TINY_RUN = ("--config-dir", "examples/pretrain", "--config-name", "w2v", "+size=tiny", "task.segment_seconds=1.0",
            "dataset.batch_size=4", "dataset.num_workers=1")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("console")
    write_random_manifest(folder, "train", 8, seed=1)
    write_random_manifest(folder, "valid", 4, seed=2)
    return folder


def test_tiny_run_prints_few_lines_and_logs_beside_the_checkpoints(data, tmp_path):
    result = run_cli("fairseq-hydra-train", *TINY_RUN, f"task.data={data}", f"checkpoint.save_dir={tmp_path}",
                     "optimization.max_epoch=3", env={"OMP_NUM_THREADS": "1"})
    lines = (result.stdout + result.stderr).splitlines()
    assert len(lines) <= TINY_RUN_LINE_BUDGET, "\n".join(lines)
    text = "\n".join(lines)
    assert "epoch 003 | valid on 'valid' subset" in text and "done training" in text  # fairseq's own lines stay
    for noise in ("pin_memory", "weight_norm", "autocast", "requires_grad", "can_reuse_epoch_itr", "Sequential("):
        assert noise not in text, noise
    assert max(len(line) for line in lines) < 1000  # the configuration is one short line
    assert "done training" in (tmp_path / "hydra_train.log").read_text()


def test_ctrl_c_is_one_line_that_says_how_to_resume(data, tmp_path):
    log_path = tmp_path / "train.out"
    with open(log_path, "w") as log:
        process = subprocess.Popen([str(BIN / "fairseq-hydra-train"), *TINY_RUN, f"task.data={data}",
                                    f"checkpoint.save_dir={tmp_path / 'save'}", "optimization.max_epoch=100000"],
                                   cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 240
        while "begin training epoch 2" not in log_path.read_text():
            assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        returncode = process.wait(timeout=120)
    finally:
        process.kill()
    output = log_path.read_text()
    assert returncode == 130, output[-3000:]
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output[-3000:]
    lines = [line for line in output.splitlines() if "interrupted" in line]
    assert lines == ["fairseq-hydra-train: interrupted; run the same command to resume (from checkpoint_last.pt)"]


def test_other_programs_are_left_alone():
    assert program_name() not in ("fairseq-hydra-train", "fairseq-train", "fairseq-validate")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
