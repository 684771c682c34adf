"""Untrusted checkpoints: a file shaped like a fairseq checkpoint whose unpickling would run code
(it writes a marker file) is refused by every place that loads one (model.model_path in a real
fine-tuning run, fairseq-ecg-embed, fairseq-validate, a resumed run's checkpoint_last.pt, the
experiments runner), in torch's zip format and in the legacy pickle format, and nothing runs,
even with torch's TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 (the programs run with it set). The
refusals are one line naming the file and the opt-in, never a traceback; the opt-in loads a
trusted legacy checkpoint that holds more than tensors (an argparse.Namespace, as old fairseq
wrote). fairseq-validate also checks a plugin model's settings before fairseq builds it (a
conv_feature_layers text that fairseq would eval)."""
import argparse
import os
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import BIN, REPO, write_random_manifest
from fairseq_ecg import embed
from fairseq_ecg.experiments import runner as experiments
from fairseq_ecg.checkpoints import TRUST_ENV, CheckpointError, load_checkpoint, read_encoder
from fairseq_ecg.labels import SCORED_CLASSES
from fairseq_ecg.manifest import write_classes, write_labels
from fairseq_ecg.models.ecg_classifier import EcgClassifierConfig
from fairseq_ecg.tasks.ecg_classification import EcgClassificationConfig, EcgClassificationTask

FORMATS = ("zip", "legacy")


class Payload:
    """Unpickling this object runs code: it writes ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('code ran while loading a checkpoint')",)


def plant(path: Path, marker: Path, fmt: str) -> Path:
    """A file shaped like a pretraining checkpoint of the plugin, with the payload in extra_state."""
    state = {
        "cfg": {"model": {"_name": "ecg_wav2vec2", "encoder_embed_dim": 32}, "task": {"_name": "ecg_pretraining"},
                "common": {"seed": 1}},
        "model": {"feature_extractor.conv_layers.0.0.weight": torch.zeros(32, 12, 2)},
        "optimizer_history": [{"criterion_name": "Wav2Vec2CmscCriterion", "num_updates": 3}],
        "extra_state": {"epoch": 2, "best": Payload(marker)},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path, _use_new_zipfile_serialization=fmt == "zip")
    assert path.read_bytes()[:2] == (b"PK" if fmt == "zip" else b"\x80\x02")
    return path


def plant_settings(path: Path, marker: Path) -> Path:
    """A classifier checkpoint of tensors and plain values only, whose conv_feature_layers text
    writes ``marker`` when fairseq ``eval``s it to build the model."""
    code = f"[(open({str(marker)!r}, 'w').write('ran') * 0 + 32, 2, 2)] * 2"
    encoder = {"_name": "ecg_wav2vec2", "encoder_embed_dim": 32, "encoder_ffn_embed_dim": 64, "encoder_layers": 1,
               "encoder_attention_heads": 4, "conv_pos": 4, "conv_pos_groups": 4, "conv_feature_layers": code}
    state = {"cfg": {"model": {"_name": "ecg_wav2vec2_classifier", "encoder_args": encoder, "num_classes": 26},
                     "task": {"_name": "ecg_classification"}, "common": {"seed": 1}},
             "model": {"head.weight": torch.zeros(26, 32)}, "extra_state": {"epoch": 1},
             "optimizer_history": [{"criterion_name": "EcgClassificationCriterion", "num_updates": 0,
                                    "lr_scheduler_state": {"best": 0.0}}]}
    torch.save(state, path)
    return path


def refusal_line(output: str, path: Path) -> str:
    """The one line of a program's output that refuses ``path``; the output holds no traceback."""
    assert "Traceback" not in output, output[-3000:]
    (line,) = [line for line in output.splitlines() if "refused" in line and str(path) in line]
    return line


def assert_refusal(message: str, path: Path) -> None:
    """The plugin's refusal: one line, naming the file and the opt-in."""
    assert len(message.strip().splitlines()) == 1, message
    assert str(path) in message and "refused" in message and f"{TRUST_ENV}=1" in message, message
    assert "\x1b" not in message  # no terminal colour codes from torch's message


@pytest.fixture(scope="module")
def markers(tmp_path_factory) -> Path:
    """The folder the payloads write to: it must stay empty."""
    return tmp_path_factory.mktemp("markers")


@pytest.fixture(scope="module")
def planted(tmp_path_factory, markers) -> dict:
    folder = tmp_path_factory.mktemp("planted")
    files = {fmt: plant(folder / f"checkpoint_best_{fmt}.pt", markers / f"{fmt}.ran", fmt) for fmt in FORMATS}
    return {**files, "settings": plant_settings(folder / "checkpoint_settings.pt", markers / "settings.ran")}


@pytest.fixture(scope="module")
def finetune_data(tmp_path_factory) -> Path:
    """A tiny classification folder (train, valid, test with labels and classes.tsv)."""
    folder = tmp_path_factory.mktemp("finetune")
    for split, count in (("train", 4), ("valid", 2), ("test", 2)):
        write_random_manifest(folder, split, count, seed=count)
        write_labels(folder / f"{split}.tsv", [["426783006"], ["164889003"]] * (count // 2))
    write_classes(folder, SCORED_CLASSES)
    return folder


def _start(log: Path, *command: str) -> subprocess.Popen:
    """One of the installed programs, in the background, its output to ``log``, in an environment
    without the plugin's opt-in and with torch's switch that turns weights_only off for every
    torch.load that does not pass it (fairseq's)."""
    env = {**{k: v for k, v in os.environ.items() if k != TRUST_ENV}, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    with open(log, "w") as output:
        return subprocess.Popen([str(BIN / command[0]), *command[1:]], cwd=REPO, stdout=output,
                                stderr=subprocess.STDOUT, env={**env, "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def runs(planted, finetune_data, tmp_path_factory, request) -> dict:
    """The command-line programs on the planted files, all at once: a fine-tuning run with the
    zip file as model.model_path, fairseq-validate on both formats, and a fine-tuning run that
    resumes from a planted checkpoint_last.pt (it needs a real model_path: the tiny pretrained
    checkpoint, made while the others run). Returns name -> (exit status, output)."""
    logs = tmp_path_factory.mktemp("logs")
    finetune = ["fairseq-hydra-train", "--config-dir", "examples/finetune", "--config-name", "classification",
                "+size=tiny", f"task.data={finetune_data}"]
    processes = {
        "model_path": _start(logs / "model_path", *finetune, f"model.model_path={planted['zip']}",
                             f"checkpoint.save_dir={tmp_path_factory.mktemp('save_model_path')}"),
        **{f"validate_{fmt}": _start(logs / f"validate_{fmt}", "fairseq-validate", str(finetune_data), "--user-dir",
                                     "fairseq_ecg", "--task", "ecg_classification", "--path", str(planted[fmt]),
                                     "--valid-subset", "test", "--batch-size", "2")
           for fmt in FORMATS},
    }
    processes["validate_settings"] = _start(logs / "validate_settings", "fairseq-validate", str(finetune_data),
                                            "--user-dir", "fairseq_ecg", "--task", "ecg_classification", "--path",
                                            str(planted["settings"]), "--valid-subset", "test", "--batch-size", "2")
    resume = tmp_path_factory.mktemp("save_resume")
    (resume / "checkpoint_last.pt").write_bytes(planted["zip"].read_bytes())
    pretrained = request.getfixturevalue("tiny_pretrained")
    processes["resume"] = _start(logs / "resume", *finetune, f"model.model_path={pretrained}",
                                 f"checkpoint.save_dir={resume}")
    return {name: (process.wait(timeout=300), (logs / name).read_text()) for name, process in processes.items()}


@pytest.fixture(autouse=True)
def untrusting(monkeypatch):
    """No opt-in unless a test sets it, and torch's default of weights_only=True in effect."""
    monkeypatch.delenv(TRUST_ENV, raising=False)
    monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", raising=False)


def test_the_payload_runs_when_unpickled_without_protection(tmp_path):
    for fmt in FORMATS:
        marker = tmp_path / f"{fmt}.ran"
        torch.load(plant(tmp_path / f"live_{fmt}.pt", marker, fmt), weights_only=False)
        assert marker.read_text() == "code ran while loading a checkpoint"


@pytest.mark.parametrize("fmt", FORMATS)
def test_torch_load_defaults_to_weights_only(planted, markers, fmt):
    """fairseq's own loader (fairseq-validate, resuming) calls torch.load without weights_only."""
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        torch.load(planted[fmt])
    assert not any(markers.iterdir())


@pytest.mark.parametrize("fmt", FORMATS)
def test_plugin_loader_refuses_in_one_line(planted, markers, fmt, monkeypatch):
    # an environment that switches torch's default off does not reach the plugin's loader
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(planted[fmt])
    assert_refusal(str(error.value), planted[fmt])
    assert "GLOBAL exec was not an allowed global" in str(error.value)
    with pytest.raises(CheckpointError):
        read_encoder(planted[fmt], allow_downstream=True)
    assert not any(markers.iterdir())


def _classifier_cfg(model_path: Path):
    return OmegaConf.structured(EcgClassifierConfig(_name="ecg_wav2vec2_classifier", model_path=str(model_path)))


def _task(data: Path) -> EcgClassificationTask:
    return EcgClassificationTask(EcgClassificationConfig(data=str(data), seed=1))


@pytest.mark.parametrize("fmt", FORMATS)
def test_model_path_is_refused_when_the_model_is_built(planted, finetune_data, markers, fmt):
    with pytest.raises(CheckpointError) as error:
        _task(finetune_data).build_model(_classifier_cfg(planted[fmt]))
    assert_refusal(str(error.value), planted[fmt])
    assert not any(markers.iterdir())


def test_finetuning_run_refuses_a_planted_model_path(runs, planted, markers):
    returncode, output = runs["model_path"]
    assert returncode != 0
    assert_refusal(refusal_line(output, planted["zip"]), planted["zip"])
    assert "| epoch 001" not in output and not any(markers.iterdir())


@pytest.mark.parametrize("fmt", FORMATS)
def test_embed_refuses(planted, finetune_data, markers, fmt, capsys, tmp_path):
    out = tmp_path / "embeddings.npy"
    assert embed.main(["--checkpoint", str(planted[fmt]), str(finetune_data / "test.tsv"), "--out", str(out),
                       "--cpu"]) == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("fairseq-ecg-embed")]
    assert line.startswith("fairseq-ecg-embed: error: ")
    assert_refusal(line, planted[fmt])
    assert not out.exists() and not any(markers.iterdir())


@pytest.mark.parametrize("fmt", FORMATS)
def test_fairseq_validate_refuses_whatever_torchs_switch_says(runs, planted, markers, fmt):
    """fairseq's loader calls torch.load without weights_only, which TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1
    turns off; the plugin's hook keeps it on and refuses in its one line."""
    returncode, output = runs[f"validate_{fmt}"]
    assert returncode != 0
    line = refusal_line(output, planted[fmt])
    assert line.startswith("fairseq-validate: error: ") and "GLOBAL exec was not an allowed global" in line
    assert_refusal(line, planted[fmt])
    assert "valid on 'test' subset" not in output and not any(markers.iterdir())


def test_fairseq_validate_checks_a_plugin_models_settings(runs, planted, markers):
    returncode, output = runs["validate_settings"]
    assert returncode != 0
    line = refusal_line(output, planted["settings"])
    assert line.startswith("fairseq-validate: error: ") and "conv_feature_layers" in line
    assert not any(markers.iterdir())


def test_resumed_run_refuses_a_planted_checkpoint_last(runs, markers):
    returncode, output = runs["resume"]
    assert returncode != 0
    (line,) = [line for line in output.splitlines() if "refused" in line]
    assert "checkpoint_last.pt" in line and f"{TRUST_ENV}=1" in line and "Traceback" not in output
    assert "| epoch 001" not in output and not any(markers.iterdir())


def test_experiments_runner_refuses_a_planted_pretraining_checkpoint(finetune_data, markers, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # the runs inherit it: no difference
    data = tmp_path / "data"
    data.mkdir()
    os.symlink(finetune_data, data / "finetune")
    settings = experiments.settings_from_args(experiments.parse_args([
        "--data", str(data), "--out", str(tmp_path / "results"), "--preset", "demo", "--variants", "w2v",
        "--leads", "12", "--seeds", "1", "--tasks", "classification", "--no-linear-probe", "--experiments", "1"]))
    plan = experiments.plan(settings)
    (pretrain,) = [run for run in plan if run.name.startswith("pretrain/")]
    checkpoint = plant(pretrain.folder(settings.out) / "checkpoint_best.pt", markers / "experiments.ran", "legacy")
    (pretrain.folder(settings.out) / "done").write_text("planted\n")  # as if that run had finished
    failed = experiments.run_matrix(plan, settings.out, jobs=2)
    finetunes = [run for run in plan if run.after == [pretrain.name]]
    assert len(finetunes) == 2  # random_init (architecture from the file) and w2v both read it
    assert set(failed) == {run.name for run in plan} - {pretrain.name}  # evaluations never started
    for run in finetunes:
        log = (run.folder(settings.out) / "log.txt").read_text()
        assert f"model.model_path={checkpoint}" in (run.folder(settings.out) / "command.sh").read_text()
        assert_refusal(refusal_line(log, checkpoint), checkpoint)
        assert not (run.folder(settings.out) / "done").exists()
    assert not any(markers.iterdir())


@pytest.fixture(scope="module")
def trusted_legacy(tiny_pretrained, tmp_path_factory) -> Path:
    """A real tiny pretraining checkpoint saved as an older fairseq did: legacy pickle format, its
    arguments as an argparse.Namespace (not a tensor or plain container)."""
    state = torch.load(tiny_pretrained, weights_only=True)
    state["args"] = argparse.Namespace(arch="ecg_wav2vec2", task="ecg_pretraining", seed=1)
    path = tmp_path_factory.mktemp("trusted") / "checkpoint_legacy.pt"
    torch.save(state, path, _use_new_zipfile_serialization=False)
    return path


def test_opt_in_loads_a_trusted_legacy_checkpoint(trusted_legacy, tiny_pretrained, finetune_data, tmp_path, capsys,
                                                  monkeypatch):
    out = tmp_path / "embeddings.npy"
    args = ["--checkpoint", str(trusted_legacy), str(finetune_data / "test.tsv"), "--out", str(out), "--cpu"]
    assert embed.main(args) == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("fairseq-ecg-embed")]
    assert_refusal(line, trusted_legacy)
    assert "argparse.Namespace" in line
    monkeypatch.setenv(TRUST_ENV, "0")
    with pytest.raises(CheckpointError):
        load_checkpoint(trusted_legacy)

    monkeypatch.setenv(TRUST_ENV, "1")  # loads with weights_only=False
    assert isinstance(load_checkpoint(trusted_legacy)["args"], argparse.Namespace)
    assert embed.main(args) == 0
    embeddings = np.load(out)
    assert embeddings.shape[0] == 2 and np.isfinite(embeddings).all()
    model = _task(finetune_data).build_model(_classifier_cfg(trusted_legacy))  # as model.model_path
    saved = torch.load(tiny_pretrained, weights_only=True)["model"]
    encoder = model.encoder.state_dict()
    assert set(encoder) == set(saved) and all(torch.equal(encoder[k], saved[k]) for k in saved)
