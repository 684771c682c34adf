"""fairseq-ecg-import: fairseq-signals checkpoints (both weight-norm storages, pretrained and
classifier) converted and checked against fairseq-signals' own order of operations; refusals."""
import os
import pickle
import sys

import numpy as np
import pytest
import torch

from fairseq_ecg import importer
from fairseq_ecg.checkpoints import load_checkpoint
from fairseq_ecg.models.ecg_classifier import EcgClassifierConfig, EcgClassifierModel
from fairseq_ecg.models.downstream import EcgEncoderConfig, EcgEncoderModel
from fairseq_ecg.data.model_input import ModelInput
from fairseq_ecg.models.loading import load_model

from conftest import one_line_error, run_cli
from signals_reference import reference_forward, signals_checkpoint

STORAGES = ("weight_g", "parametrizations")


def _input(seed: int = 0, batch: int = 3, samples: int = 500) -> torch.Tensor:
    return torch.randn(batch, 12, samples, generator=torch.Generator().manual_seed(seed))


def _classifier_from(path):
    state = load_checkpoint(path)
    cfg = dict(state["cfg"]["model"])
    cfg.pop("_name")
    model = EcgClassifierModel.build_model(EcgClassifierConfig(**cfg))
    model.load_state_dict(state["model"], strict=True)
    return model.eval(), state


@pytest.mark.parametrize("storage", STORAGES)
@pytest.mark.parametrize("layer_norm_first", (False, True))
def test_pretrained_matches_reference(tmp_path, storage, layer_norm_first):
    source = tmp_path / "signals.pt"
    state = signals_checkpoint(source, "pretrained", storage, seed=3, layer_norm_first=layer_norm_first)
    out = tmp_path / "converted.pt"
    assert importer.main([str(source), "--out", str(out)]) == 0
    loaded = load_model(out, "encoder")
    encoder = loaded.model
    x = _input()
    with torch.no_grad():
        got = encoder.extract_global(x)
    want = reference_forward(state, x)
    assert got["x"].shape == want["x"].shape
    torch.testing.assert_close(got["x"].double(), want["x"], atol=1e-5, rtol=0)
    torch.testing.assert_close(got["global"].double(), want["global"], atol=1e-5, rtol=0)
    converted = load_checkpoint(out)
    assert converted["cfg"]["model"]["_name"] == "ecg_wav2vec2"
    assert converted["cfg"]["model"]["input_leads"] == 12
    assert ModelInput.of_checkpoint(converted).normalize == "record" == loaded.input.normalize
    # the converted file is what model.model_path reads for fine-tuning
    downstream = EcgEncoderModel.build_encoder(EcgEncoderConfig(model_path=str(out)))
    assert set(downstream.state_dict()) == set(encoder.state_dict())


@pytest.mark.parametrize("storage", STORAGES)
def test_classifier_matches_reference(tmp_path, storage, capsys):
    source = tmp_path / "signals_cls.pt"
    state = signals_checkpoint(source, "classifier", storage, seed=5, num_labels=4)
    labels = tmp_path / "label_def.csv"
    labels.write_text("name,pos_count_test\nPoor data quality,1\nSinus rhythm,2\nAtrial fibrillation,3\n"
                      "Left bundle branch block,4\n")
    out = tmp_path / "cls.pt"
    assert importer.main([str(source), "--out", str(out), "--labels", str(labels)]) == 0
    printed = capsys.readouterr().out
    assert "renamed" in printed and "proj.weight -> head.weight" in printed
    assert "conv_pos.pos_conv.0.bias -> encoder.encoder.pos_conv.0.bias" in printed
    assert "added" in printed and "encoder.mask_emb" in printed  # fine-tuned without masking
    model, converted = _classifier_from(out)
    assert converted["task_state"]["classes"] == ["Poor data quality", "Sinus rhythm", "Atrial fibrillation",
                                                  "Left bundle branch block"]
    x = _input(seed=1, samples=700)
    with torch.no_grad():
        logits = model(x)["logits"]
        context = model.encoder.extract_global(x)
    want = reference_forward(state, x)
    torch.testing.assert_close(context["x"].double(), want["x"], atol=1e-5, rtol=0)
    torch.testing.assert_close(context["global"].double(), want["global"], atol=1e-5, rtol=0)
    torch.testing.assert_close(logits.double(), want["logits"], atol=1e-5, rtol=0)


def test_without_labels_names_outputs(tmp_path, capsys):
    source = tmp_path / "s.pt"
    signals_checkpoint(source, "classifier", num_labels=3)
    out = tmp_path / "c.pt"
    assert importer.main([str(source), "--out", str(out), "--normalize", "segment"]) == 0
    assert "label_0 ... label_2" in capsys.readouterr().out
    state = load_checkpoint(out)
    assert state["task_state"]["classes"] == ["label_0", "label_1", "label_2"]
    assert ModelInput.of_checkpoint(state).normalize == "segment" == state["cfg"]["task"]["normalize"]


def _fails(capsys, *argv) -> str:
    assert importer.main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_misfits_fail_in_one_line(tmp_path, capsys):
    source = tmp_path / "s.pt"
    state = signals_checkpoint(source, "pretrained")
    out = tmp_path / "o.pt"
    # an unknown weight
    state["model"]["encoder.layers.0.adapter.weight"] = torch.zeros(3)
    torch.save(state, source)
    err = _fails(capsys, source, "--out", out)
    assert "'encoder.layers.0.adapter.weight'" in err and "does not fit" in err
    # a shape that does not match the config
    state = signals_checkpoint(source, "pretrained")
    state["model"]["encoder.layers.1.fc1.weight"] = torch.zeros(7, 32)
    torch.save(state, source)
    err = _fails(capsys, source, "--out", out)
    assert "'encoder.layers.1.fc1.weight'" in err and "(7, 32)" in err
    # a missing weight
    state = signals_checkpoint(source, "pretrained")
    del state["model"]["encoder.layers.1.fc2.bias"]
    torch.save(state, source)
    err = _fails(capsys, source, "--out", out)
    assert "encoder.layers.1.fc2.bias" in err
    # an unknown config key
    state = signals_checkpoint(source, "pretrained", rotary_embeddings=True)
    err = _fails(capsys, source, "--out", out)
    assert "'rotary_embeddings'" in err
    # the wrong kind
    signals_checkpoint(source, "pretrained")
    err = _fails(capsys, source, "--out", out, "--kind", "classifier")
    assert "--kind classifier" in err and "wav2vec2_cmsc" in err
    # labels that do not match the outputs
    signals_checkpoint(source, "classifier", num_labels=3)
    labels = tmp_path / "l.txt"
    labels.write_text("a\nb\n")
    err = _fails(capsys, source, "--out", out, "--labels", labels)
    assert "2 label names" in err and "3 outputs" in err
    assert not out.exists()


class _RunsCode:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_refused_without_running(tmp_path, capsys):
    marker = tmp_path / "pwned"
    source = tmp_path / "evil.pt"
    state = signals_checkpoint(source, "pretrained")
    state["extra_state"]["payload"] = _RunsCode(marker)
    torch.save(state, source)
    raw = tmp_path / "evil.pkl"  # a bare pickle too
    raw.write_bytes(pickle.dumps({"model": {}, "x": _RunsCode(marker)}, protocol=2))
    for path in (source, raw):
        err = _fails(capsys, path, "--out", tmp_path / "o.pt")
        assert "refused" in err and "system" in err and "nothing in it was run" in err
    assert not marker.exists()
    assert not (tmp_path / "o.pt").exists()


def test_allowed_types_are_exactly_the_listed_ones(tmp_path, capsys):
    source = tmp_path / "s.pt"
    state = signals_checkpoint(source, "pretrained")
    state["extra_state"]["when"] = np.datetime64("2024-01-01")  # a numpy type not on the list
    torch.save(state, source)
    err = _fails(capsys, source, "--out", tmp_path / "o.pt")
    assert "refused" in err


def test_experiments_runner_takes_an_imported_row(tmp_path, capsys):
    from fairseq_ecg.experiments import runner as experiments

    source = tmp_path / "s.pt"
    signals_checkpoint(source, "pretrained")
    out = tmp_path / "ecgfm.pt"
    assert importer.main([str(source), "--out", str(out)]) == 0
    capsys.readouterr()
    (tmp_path / "data").mkdir()  # a dry run checks that --data exists
    assert experiments.main(["--data", str(tmp_path / "data"), "--out", str(tmp_path / "results"), "--preset", "demo",
                             "--leads", "12,1", "--tasks", "classification", "--experiments", "1", "--pretrained", f"ecgfm={out}",
                             "--dry-run"]) == 0
    commands = capsys.readouterr().out.splitlines()
    ours = [c for c in commands if "ecgfm_P12" in c and c.startswith("fairseq-hydra-train")]
    seeds = experiments.PRESETS["demo"]["seeds"]
    assert len(ours) == seeds * 2 * 2  # per seed and lead set: fine-tuned and linear-probed
    assert all(f"model.model_path={out}" in c and "model.init=pretrained" in c for c in ours)
    assert any("ecgfm_P12_F1" in c for c in ours) and any("linear_probe/ecgfm" in c for c in ours)
    assert not any(c.startswith("fairseq-hydra-train") and "pretrain/ecgfm" in c for c in commands)
    with pytest.raises(SystemExit, match="is not a file"):
        experiments.main(["--data", str(tmp_path), "--out", str(tmp_path / "r"), "--pretrained",
                          f"ecgfm={tmp_path / 'missing.pt'}", "--dry-run"])


def test_a_one_column_label_csv_and_an_out_folder(tmp_path, capsys):
    """Issue 23 item 6: a one-column CSV's header "name" was counted as a label, and --out naming a
    folder showed the temporary file's name in an OSError."""
    from fairseq_ecg.checkpoints import load_checkpoint

    source = tmp_path / "cls.pt"
    signals_checkpoint(source, "classifier", "parametrizations", seed=2, num_labels=2)
    labels = tmp_path / "labels.csv"
    labels.write_text("name\nAF\nNSR\n")
    out = tmp_path / "out.pt"
    assert importer.main([str(source), "--out", str(out), "--labels", str(labels), "--kind", "classifier"]) == 0
    assert load_checkpoint(out)["task_state"]["classes"] == ["AF", "NSR"]
    folder = tmp_path / "models"
    folder.mkdir()
    capsys.readouterr()
    assert importer.main([str(source), "--out", str(folder), "--labels", str(labels)]) == 2
    err = capsys.readouterr().err
    assert err == (f"fairseq-ecg-import: error: --out {folder} is a folder; name the file to write, e.g. "
                   f"{folder / 'converted.pt'}\n") and list(folder.iterdir()) == []


HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _hub_cache(tmp_path, source, repo="wanglab/ecg-fm", filename="weights/pretrained.pt"):
    """A hub cache laid out as huggingface_hub lays it out (``constants.HF_HUB_CACHE``, file_download.py):
    ``models--OWNER--REPO/blobs/ETAG``, ``snapshots/COMMIT/PATH`` a relative link to the blob, and
    ``refs/main`` holding the commit; the env that points the program at it, offline."""
    cache = tmp_path / "hub"
    storage = cache / ("models--" + repo.replace("/", "--"))
    blob = storage / "blobs" / "b1d0c9e7"
    blob.parent.mkdir(parents=True)
    blob.write_bytes(source.read_bytes())
    pointer = storage / "snapshots" / HUB_COMMIT / filename
    pointer.parent.mkdir(parents=True)
    pointer.symlink_to(os.path.relpath(blob, pointer.parent))
    (storage / "refs").mkdir()
    (storage / "refs" / "main").write_text(HUB_COMMIT)
    return {"HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}


def test_import_from_the_hub_offline(tmp_path, capsys):
    """Issue 22 item 5: hf://OWNER/REPO[@REVISION]/PATH read through huggingface_hub's cache, offline;
    the output records the reference and its commit, and equals the import of the same local file."""
    pytest.importorskip("huggingface_hub")
    source = tmp_path / "signals.pt"
    signals_checkpoint(source, "pretrained", "parametrizations", seed=4)
    local = tmp_path / "local.pt"
    assert importer.main([str(source), "--out", str(local)]) == 0
    capsys.readouterr()
    env = _hub_cache(tmp_path, source)
    want = load_checkpoint(local)
    for ref in ("hf://wanglab/ecg-fm/weights/pretrained.pt", f"hf://wanglab/ecg-fm@{HUB_COMMIT}/weights/pretrained.pt"):
        out = tmp_path / "hub.pt"
        result = run_cli("fairseq-ecg-import", ref, "--out", str(out), env=env)
        assert f"wrote {out}" in result.stdout
        got = load_checkpoint(out)
        assert got["extra_state"]["imported_from"] == ref and got["extra_state"]["imported_revision"] == HUB_COMMIT
        assert "/snapshots/" not in str(got["extra_state"])
        assert set(got["model"]) == set(want["model"])
        assert all(torch.equal(got["model"][k], want["model"][k]) for k in want["model"])
        assert got["cfg"] == want["cfg"] and got["task_state"] == want["task_state"]
    assert want["extra_state"]["imported_from"] == str(source) and "imported_revision" not in want["extra_state"]

    # offline, a file the cache lacks: one line naming the reference and the fix
    missing = "hf://wanglab/ecg-fm/mimic_iv_ecg_physionet_pretrained.pt"
    result = run_cli("fairseq-ecg-import", missing, "--out", str(tmp_path / "m.pt"), env=env, check=False)
    line = one_line_error(result, missing)
    assert result.returncode == 2 and "HF_HUB_OFFLINE=1" in line and env["HF_HUB_CACHE"] in line
    assert not (tmp_path / "m.pt").exists()


def test_hub_reference_refusals(tmp_path, capsys, monkeypatch):
    for ref in ("hf://only-owner", "hf://owner/repo", "hf://owner/repo/", "hf://owner/repo@/file.pt"):
        err = _fails(capsys, ref, "--out", tmp_path / "o.pt")
        assert err.startswith(f"fairseq-ecg-import: error: {ref}: not a hub reference") and "hf://OWNER/REPO" in err
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # the hub extra not installed
    err = _fails(capsys, "hf://wanglab/ecg-fm/x.pt", "--out", tmp_path / "o.pt")
    assert "hf://wanglab/ecg-fm/x.pt" in err and "pip install 'fairseq_ecg[hub]'" in err
    assert not (tmp_path / "o.pt").exists()
