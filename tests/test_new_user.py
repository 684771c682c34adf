"""What a new user meets in the first hour: a save folder reused with other settings stops instead
of resuming the wrong model, an explicit max_update wins over the tiny size, an empty split or
another task's folder is named, the plugin's commands are quiet, files get normal permissions,
and prepared data stays out of git."""
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import BIN, REPO, files_written, one_line_error, run_cli, write_random_manifest
from fairseq_ecg.patches import run_settings
from fairseq_ecg.manifest import atomic_save_npy, atomic_write_text, write_manifest


def pretrain(data: Path, save_dir: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    return run_cli("fairseq-hydra-train", "--config-dir", "examples/pretrain", "--config-name", "w2v", "+size=tiny",
                   f"task.data={data}", f"checkpoint.save_dir={save_dir}", "task.segment_seconds=1.0",
                   "dataset.batch_size=4", *extra, check=check, env={"OMP_NUM_THREADS": "1"})


def num_updates(path: Path) -> int:
    return torch.load(path, weights_only=True)["optimizer_history"][-1]["num_updates"]


def settings_error(result: subprocess.CompletedProcess) -> str:
    return one_line_error(result, "holds the checkpoints of a run with other settings")


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("small")
    write_random_manifest(folder, "train", 8, samples=1000, seed=1)
    write_random_manifest(folder, "valid", 2, samples=1000, seed=2)
    return folder


def test_other_settings_stop_and_resume_anyway_resumes(small_data, tmp_path):
    """The whole story in one folder: a run records its settings; the same settings with a larger
    max_update resume it; other settings stop it (nothing written) naming every difference; a
    folder written before run_settings.json existed is compared through its checkpoint; and
    +resume_anyway=true resumes, recording the earlier settings."""
    save = tmp_path / "save"
    first = pretrain(small_data, save, "optimization.max_update=2")
    assert "run_settings" not in first.stdout + first.stderr
    saved = json.loads((save / "run_settings.json").read_text())["settings"]
    assert saved["task.leads"] == "12" and saved["model.rlm_prob"] == 0.0 and saved["criterion.cmsc_weight"] == 0.0
    assert saved["task._name"] == "ecg_pretraining" and saved["task.normalize"] == "none"

    pretrain(small_data, save, "optimization.max_update=4")  # how long is not a defining setting
    assert num_updates(save / "checkpoint_last.pt") == 4

    before = files_written(save)
    error = settings_error(pretrain(small_data, save, "optimization.max_update=6", "task.leads=[I,II]",
                                    "model.rlm_prob=0.25", check=False))
    assert ('(task.leads: "12" there, "2" now; model.rlm_prob: 0.0 there, 0.25 now), which fairseq would resume '
            "instead of training this one; give this run its own checkpoint.save_dir=..., or add "
            "+resume_anyway=true to resume that run with these settings anyway") in error
    assert files_written(save) == before

    (save / "run_settings.json").unlink()  # a folder from before: its checkpoint_last.pt says what it holds
    error = settings_error(pretrain(small_data, save, "optimization.max_update=6", "model.rlm_prob=0.25",
                                    check=False))
    assert "(model.rlm_prob: 0.0 there, 0.25 now)" in error

    resumed = pretrain(small_data, save, "optimization.max_update=6", "model.rlm_prob=0.25", "+resume_anyway=true")
    assert "resuming a run with other settings (model.rlm_prob: 0.0 there, 0.25 now)" in resumed.stdout + resumed.stderr
    assert num_updates(save / "checkpoint_last.pt") == 6  # it went on from update 4
    record = json.loads((save / "run_settings.json").read_text())
    assert record["settings"]["model.rlm_prob"] == 0.25 and record["earlier"][0]["model.rlm_prob"] == 0.0


def make_old_checkpoint(save: Path) -> None:
    """Turn a run's folder into one written before model.rlm_mode existed: neither its checkpoints'
    saved configuration nor its run_settings.json has the field, and its checkpoints are of format 1
    (written before the format was recorded)."""
    for path in save.glob("*.pt"):
        state = torch.load(path, weights_only=True)
        state["cfg"]["model"].pop("rlm_mode", None)
        state["task_state"].pop("format_version", None)
        torch.save(state, path)
    record = json.loads((save / "run_settings.json").read_text())
    record["settings"].pop("model.rlm_mode")
    (save / "run_settings.json").write_text(json.dumps(record))


def test_a_run_trained_with_the_redraw_keeps_it_when_resumed(small_data, tmp_path):
    """RLM's independent draws became the default; a checkpoint saved before (which lacks
    model.rlm_mode) was trained with the redraw, resolves to it when read, and a resumed run keeps
    it, unless the command line names another mode (then the settings stop applies)."""
    from fairseq import checkpoint_utils

    import fairseq_ecg  # noqa: F401  (the plugin's checkpoint reader)
    from fairseq_ecg.checkpoints import load_checkpoint

    save = tmp_path / "save"
    pretrain(small_data, save, "optimization.max_update=2", "model.rlm_prob=0.5")
    assert json.loads((save / "run_settings.json").read_text())["settings"]["model.rlm_mode"] == "independent"
    make_old_checkpoint(save)
    assert load_checkpoint(save / "checkpoint_last.pt")["cfg"]["model"]["rlm_mode"] == "redraw_silent"
    assert checkpoint_utils.load_checkpoint_to_cpu(str(save / "checkpoint_last.pt"))["cfg"].model.rlm_mode == "redraw_silent"

    error = settings_error(pretrain(small_data, save, "optimization.max_update=4", "model.rlm_prob=0.5",
                                    "model.rlm_mode=independent", check=False))
    assert '(model.rlm_mode: "redraw_silent" there, "independent" now)' in error

    resumed = pretrain(small_data, save, "optimization.max_update=4", "model.rlm_prob=0.5")
    assert "the resumed run keeps model.rlm_mode=redraw_silent" in resumed.stdout + resumed.stderr
    assert num_updates(save / "checkpoint_last.pt") == 4
    state = torch.load(save / "checkpoint_last.pt", weights_only=True)
    assert state["cfg"]["model"]["rlm_mode"] == "redraw_silent"  # what fairseq saves is what the model used
    assert json.loads((save / "run_settings.json").read_text())["settings"]["model.rlm_mode"] == "redraw_silent"

    make_old_checkpoint(save)
    (save / "run_settings.json").unlink()  # a folder from before run_settings.json: its checkpoint decides
    resumed = pretrain(small_data, save, "optimization.max_update=6", "model.rlm_prob=0.5")
    assert "the resumed run keeps model.rlm_mode=redraw_silent" in resumed.stdout + resumed.stderr
    assert torch.load(save / "checkpoint_last.pt", weights_only=True)["cfg"]["model"]["rlm_mode"] == "redraw_silent"


def test_settings_without_checkpoints_are_replaced(tmp_path):
    """A run killed before its first checkpoint left only run_settings.json: nothing would be
    resumed, so a run with other settings starts there."""
    cfg = OmegaConf.create({"task": {"_name": "ecg_pretraining", "leads": 6}, "model": {"rlm_prob": 0.5},
                            "checkpoint": {"save_dir": str(tmp_path)}, "distributed_training": {"distributed_rank": 0}})
    atomic_write_text(tmp_path / run_settings.SETTINGS_FILE, json.dumps({"settings": {"task.leads": "1"}}))
    run_settings.check_and_record(cfg)
    assert json.loads((tmp_path / run_settings.SETTINGS_FILE).read_text())["settings"] == {
        "task._name": "ecg_pretraining", "task.leads": "6", "model.rlm_prob": 0.5}
    (tmp_path / "checkpoint_last.pt").write_bytes(b"")  # now it holds a checkpoint of those settings
    cfg.task.leads = "[I,II,III,aVR,aVL,aVF]"  # the same lead set, spelled out
    run_settings.check_and_record(cfg)
    cfg.model.rlm_prob = 0.0
    with pytest.raises(run_settings.RunSettingsError, match=r"model.rlm_prob: 0.5 there, 0.0 now"):
        run_settings.check_and_record(cfg)


def test_explicit_max_update_wins_over_the_tiny_size(small_data, tmp_path):
    """The tiny size limits updates, not epochs: asked for 20 updates (8 records in batches of 4: 2
    an epoch), a run makes 20, where the former max_epoch 2 stopped it at 4."""
    pretrain(small_data, tmp_path, "optimization.max_update=20", "checkpoint.save_interval=100")
    assert num_updates(tmp_path / "checkpoint_last.pt") == 20


def test_empty_valid_split_names_the_split_and_the_fixes(tmp_path):
    data = tmp_path / "pretrain"
    write_random_manifest(data, "train", 4, samples=1000)
    write_manifest(data / "valid.tsv", data, [])
    result = pretrain(data, tmp_path / "save", "optimization.max_update=1", check=False)
    assert one_line_error(result, "no records") == (  # the plugin's own error: Hydra prints its message alone
        f"{data / 'valid.tsv'}: no records: the patient split of "
        "fairseq-ecg-manifest left 'valid' empty (too few patients for its share); "
        "prepare again with a larger --valid-percent (fairseq-ecg-manifest; the default is 10, a share of the "
        "patients), or train without validation: dataset.disable_validation=true")
    pretrain(data, tmp_path / "save", "optimization.max_update=1", "dataset.disable_validation=true")
    assert (tmp_path / "save" / "checkpoint_last.pt").is_file()


def test_pretraining_on_the_finetune_folder_says_so(tmp_path):
    root = tmp_path / "prepared"
    for sub in ("pretrain", "finetune"):
        write_random_manifest(root / sub, "train", 4, samples=1000)
        write_random_manifest(root / sub, "valid", 2, samples=1000, seed=3)
    result = pretrain(root / "finetune", tmp_path / "save", "optimization.max_update=1")
    notices = [line for line in (result.stdout + result.stderr).splitlines() if "fairseq-ecg-manifest's folder" in line]
    assert len(notices) == 1 and notices[0].endswith(
        f"task.data={root / 'finetune'} is fairseq-ecg-manifest's folder for ecg_classification, not for "
        f"ecg_pretraining (DEST/pretrain); {root / 'pretrain'} is the one for ecg_pretraining; training on it anyway")
    result = pretrain(root / "pretrain", tmp_path / "save2", "optimization.max_update=1")
    assert "fairseq-ecg-manifest's folder" not in result.stdout + result.stderr


@pytest.mark.parametrize("program", ["fairseq-ecg-embed", "fairseq-ecg-predict", "fairseq-ecg-import",
                                     "fairseq-ecg-experiments", "fairseq-ecg-manifest",
                                     "fairseq-ecg-synth", "fairseq-ecg-demo"])
def test_plugin_commands_print_no_tensorboardx_notice(program):
    result = run_cli(program, "--help")
    assert result.stdout.startswith("usage: ") and result.stderr == "", result.stderr


def test_atomic_writes_get_normal_permissions(tmp_path):
    """Written through mkstemp (mode 0600) and a rename, files used to stay private to their owner;
    now they get what open() gives: 0666 less the umask, like every other file the user makes."""
    atomic_save_npy(tmp_path / "a.npy", np.zeros(3, np.float32))
    atomic_write_text(tmp_path / "a.txt", "x\n")
    with open(tmp_path / "plain.txt", "w") as handle:
        handle.write("x\n")
    expected = (tmp_path / "plain.txt").stat().st_mode & 0o777
    assert expected != 0o600 or os.umask(os.umask(0)) == 0o177  # otherwise the comparison says nothing
    assert (tmp_path / "a.npy").stat().st_mode & 0o777 == expected
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == expected


def test_prepared_data_checkpoints_and_results_are_ignored_by_git(tmp_path):
    paths = ["data/cinc/pretrain/train.tsv", "checkpoints/pretrain/w2v/checkpoint_best.pt", "results/report.md",
             "demo/archive/A0001.hea", "test.npy", "embeddings/mine.npy", "model.pt"]
    result = subprocess.run(["git", "check-ignore", "--no-index", *paths], cwd=REPO, capture_output=True, text=True)
    assert sorted(result.stdout.split()) == sorted(paths)
    kept = subprocess.run(["git", "check-ignore", "--no-index", "fairseq_ecg/tables/weights.csv", "README.md",
                           "fairseq_ecg/data/ecg_dataset.py", "fairseq_ecg/data/new_module.py"],
                          cwd=REPO, capture_output=True, text=True)
    assert kept.stdout == ""


IMPORT_EVERYTHING = """
import importlib, importlib.metadata as md
import torch, setuptools  # torch first, as its extensions expect; setuptools before distutils
failed = []
for dist in md.distributions():
    top = dist.read_text("top_level.txt")
    modules = top.split() if top else sorted({str(f).split("/")[0].removesuffix(".py") for f in dist.files or []
                                             if str(f).endswith(".py") and not str(f).startswith("..")})
    for module in modules:
        if module.isidentifier() and not module.startswith("_"):
            try:
                importlib.import_module(module)
            except BaseException as error:
                failed.append(f"{dist.metadata['Name']}: import {module}: {type(error).__name__}: {error}")
print("\\n".join(failed))
"""


def test_installed_environment_imports_cleanly():
    """Every installed distribution imports (torchaudio's PyPI builds are CUDA builds that do not
    import with the CPU torch; make install removes it where it does not), and pip check reports
    nothing but fairseq-fixed's requirement of that torchaudio."""
    result = subprocess.run([str(BIN / "python"), "-c", IMPORT_EVERYTHING], capture_output=True, text=True,
                            timeout=300, cwd=REPO)
    assert result.returncode == 0 and result.stdout.strip() == "", result.stdout[-3000:] + result.stderr[-3000:]
    check = subprocess.run([str(BIN / "python"), "-m", "pip", "check"], capture_output=True, text=True, timeout=300)
    problems = {line for line in check.stdout.splitlines() if line.strip() and line != "No broken requirements found."}
    assert problems <= {"fairseq-fixed 0.12.3.1 requires torchaudio, which is not installed."}, check.stdout
