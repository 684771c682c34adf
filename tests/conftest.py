"""Shared test helpers: tiny manifests written with the real manifest writers, and the real
fairseq command-line programs run as subprocesses from the repository root."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fairseq_ecg.manifest import ManifestRow, write_manifest
from fairseq_ecg.sources import PATIENT_SALT_ENV

REPO = Path(__file__).resolve().parents[1]

# Splits hash the salted patient id, and without this variable every prepared folder draws a random
# salt: a test's split counts would change from run to run (4 patients put 0 to 4 of them in one
# split). One fixed salt for the suite, inherited by the programs it runs; tests/test_privacy.py
# removes it to test the random salt itself.
os.environ.setdefault(PATIENT_SALT_ENV, "fairseq_ecg test suite")
BIN = Path(sys.executable).parent
USER_DIR = REPO / "fairseq_ecg"


def write_random_manifest(folder: Path, split: str, count: int, samples: int = 5000, seed: int = 0,
                          patients: int = 0) -> list[ManifestRow]:
    """``count`` random 12-lead records of ``samples`` samples as a manifest ``folder/split.tsv``."""
    rng = np.random.default_rng(seed)
    waves = folder / "waves"
    waves.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        name = f"{split}_{i}"
        np.save(waves / f"{name}.npy", (rng.standard_normal((12, samples)) * 0.3).astype(np.float32))
        patient = f"p{i % patients}" if patients else f"p_{split}_{i}"
        rows.append(ManifestRow(f"waves/{name}.npy", samples, "1" * 12, patient, 500.0, name))
    write_manifest(folder / f"{split}.tsv", folder, rows)
    return rows


def run_cli(program: str, *args: str, timeout: float = 300, check: bool = True, env=None) -> subprocess.CompletedProcess:
    """Run one of the installed console scripts (fairseq-hydra-train, fairseq-validate, ...)."""
    result = subprocess.run(
        [str(BIN / program), *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{program} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def files_written(save_dir: Path) -> dict:
    """A run folder's files and when each was written, but hydra_train.log, which logs every attempt."""
    return {path.name: path.stat().st_mtime_ns for path in save_dir.iterdir() if path.name != "hydra_train.log"}


def one_line_error(result: subprocess.CompletedProcess, phrase: str) -> str:
    """The one line a failed command printed that holds ``phrase``, after checking that it failed and
    printed no traceback (Hydra's own "Error executing job" and HYDRA_FULL_ERROR lines may frame it)."""
    text = result.stdout + result.stderr
    lines = [line for line in text.splitlines() if phrase in line and not line.startswith("Error executing job")]
    assert result.returncode != 0 and "Traceback" not in text and len(lines) == 1, text[-3000:]
    return lines[0]


@pytest.fixture(scope="session")
def pretrain_data(tmp_path_factory) -> Path:
    """A tiny pretraining manifest folder: 16 train and 8 valid records of 10 s."""
    folder = tmp_path_factory.mktemp("pretrain")
    write_random_manifest(folder, "train", 16, seed=1)
    write_random_manifest(folder, "valid", 8, seed=2)
    return folder


@pytest.fixture(scope="session")
def tiny_pretrained(pretrain_data, tmp_path_factory) -> Path:
    """A real checkpoint of a one-epoch tiny W2V+CMSC+RLM pretraining run."""
    save_dir = tmp_path_factory.mktemp("ckpt_pretrain")
    run_cli("fairseq-hydra-train", "--config-dir", "examples/pretrain", "--config-name", "w2v_cmsc_rlm",
            "+size=tiny", f"task.data={pretrain_data}", f"checkpoint.save_dir={save_dir}",
            "optimization.max_epoch=1")
    return save_dir / "checkpoint_best.pt"
