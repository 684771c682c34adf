"""Normalisation modes, and end to end from fairseq-signals checkpoints: fine-tune from an imported
pretrained checkpoint, validate an imported classifier, embed with both, fairseq-ecg-predict on a
manifest and on a folder of WFDB records (bad records listed, never stopping the run)."""
import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_cli
from fairseq_ecg.checkpoints import load_checkpoint, upgrade_checkpoint
from fairseq_ecg.data import EcgSegmentDataset
from fairseq_ecg.labels import SCORED_CLASSES, scored_labels
from fairseq_ecg.manifest import ManifestRow, read_manifest, write_classes, write_labels, write_manifest
from fairseq_ecg.data.model_input import CURRENT_FORMAT, ModelInput
from fairseq_ecg.normalization import normalize_mode, resolve_normalization
from fairseq_ecg.predict import load_predictor
from fairseq_ecg.synth import synthesize_archive
from signals_reference import signals_checkpoint

CODE_SETS = [["426783006"], ["164889003"], ["59118001", "426783006"], ["270492004"], []]


# --- normalisation --------------------------------------------------------------------------

def _dataset(tmp_path, wave, mode, segment=100):
    (tmp_path / "w.npy").write_bytes(b"")
    np.save(tmp_path / "w.npy", wave)
    write_manifest(tmp_path / "m.tsv", tmp_path, [ManifestRow("w.npy", wave.shape[1], "1" * 12, "p", 500.0, "r")])
    return EcgSegmentDataset(read_manifest(tmp_path / "m.tsv"), segment, cut="consecutive", normalize=mode,
                             leads="12", shuffle=False)


def test_record_mode_uses_the_whole_record(tmp_path):
    rng = np.random.default_rng(0)
    wave = (rng.standard_normal((12, 300)) * 2 + 5).astype(np.float32)
    wave[:, 200:] += 10.0  # the third segment is shifted: record and segment statistics differ
    wave[3] = 1.25  # a constant lead
    record = _dataset(tmp_path, wave, "record")
    full = (wave - wave.mean(axis=1, keepdims=True)) / wave.std(axis=1, keepdims=True).clip(1e-12)
    full[3] = 0.0
    for i in range(3):
        np.testing.assert_allclose(record[i]["segments"][0].numpy(), full[:, i * 100:(i + 1) * 100], atol=1e-5)
    segment = _dataset(tmp_path, wave, "segment")[2]["segments"][0].numpy()
    assert abs(segment[0].mean()) < 1e-5 and abs(full[0, 200:].mean()) > 0.5  # the two modes differ
    assert np.all(segment[3] == 0)
    none = _dataset(tmp_path, wave, False)[0]["segments"][0].numpy()  # an old boolean: none
    np.testing.assert_array_equal(none, wave[:, :100])


def test_mode_names_and_mismatch():
    assert [normalize_mode(v) for v in (True, False, "true", "False", None, "record", "auto")] == \
        ["segment", "none", "segment", "none", "none", "record", "auto"]
    with pytest.raises(ValueError, match="expected one of"):
        normalize_mode("zscore")
    assert resolve_normalization("auto", "record") == "record"
    assert resolve_normalization("auto", None) == "none"
    with pytest.raises(ValueError, match="normalize=segment but X was trained with normalize=record"):
        resolve_normalization("segment", "record", "X")
    old = {"cfg": {"task": {"normalize": True}, "model": {}}}  # a checkpoint from before the modes
    assert ModelInput.of_checkpoint(upgrade_checkpoint(old)).normalize == "segment"


# --- end to end ---------------------------------------------------------------------------

def _write_split(folder: Path, split: str, count: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    (folder / "waves").mkdir(parents=True, exist_ok=True)
    rows, labels = [], []
    for i in range(count):
        name = f"{split}_{i}"
        samples = 5000 if i % 3 else 3750
        wave = (rng.standard_normal((12, samples)) * 0.3 + rng.standard_normal((12, 1))).astype(np.float32)
        np.save(folder / "waves" / f"{name}.npy", wave)
        rows.append(ManifestRow(f"waves/{name}.npy", samples, "1" * 12, f"p_{name}", 500.0, name))
        labels.append(CODE_SETS[i % len(CODE_SETS)])
    write_manifest(folder / f"{split}.tsv", folder, rows)
    write_labels(folder / f"{split}.tsv", labels)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("finetune")
    _write_split(folder, "train", 10, seed=1)
    _write_split(folder, "valid", 5, seed=2)
    _write_split(folder, "test", 6, seed=3)
    write_classes(folder, SCORED_CLASSES)
    return folder


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> dict:
    """An imported pretrained checkpoint (weight_g storage) and an imported 26-output classifier
    (parametrizations storage, names from a label file)."""
    root = tmp_path_factory.mktemp("imported")
    signals_checkpoint(root / "pre_src.pt", "pretrained", "weight_g", seed=1)
    signals_checkpoint(root / "cls_src.pt", "classifier", "parametrizations", seed=2, num_labels=26)
    (root / "labels.txt").write_text("".join(f"{name}\n" for name in SCORED_CLASSES))
    run_cli("fairseq-ecg-import", str(root / "pre_src.pt"), "--out", str(root / "pre.pt"))
    run_cli("fairseq-ecg-import", str(root / "cls_src.pt"), "--out", str(root / "cls.pt"),
            "--labels", str(root / "labels.txt"), "--kind", "classifier")
    return {"pretrained": root / "pre.pt", "classifier": root / "cls.pt"}


def _ours(stderr: str) -> list[str]:
    """stderr lines of the plugin's programs (importing fairseq logs a tensorboardX notice)."""
    return [line for line in stderr.splitlines() if line.startswith("fairseq-ecg-")]


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_finetune_from_imported_then_predict(data, imported, tmp_path):
    save = tmp_path / "ft"
    run_cli("fairseq-hydra-train", "--config-dir", "examples/finetune", "--config-name", "classification",
            "+size=tiny", f"task.data={data}", f"model.model_path={imported['pretrained']}",
            f"checkpoint.save_dir={save}", "optimization.max_epoch=1")  # thresholds tuned by default
    best = save / "checkpoint_best.pt"
    state = load_checkpoint(best)
    # the mode came from the imported checkpoint (auto) and is recorded in the new one
    assert state["task_state"]["normalize"] == "record" == state["cfg"]["task"]["normalize"]
    assert state["task_state"]["classes"] == SCORED_CLASSES
    assert len(state["task_state"]["thresholds"]) == 26
    # another mode given on the command line is refused, naming both
    refused = run_cli("fairseq-hydra-train", "--config-dir", "examples/finetune", "--config-name", "classification",
                      "+size=tiny", f"task.data={data}", f"model.model_path={imported['pretrained']}",
                      f"checkpoint.save_dir={tmp_path / 'ft2'}", "task.normalize=segment", check=False)
    assert refused.returncode != 0
    assert "normalize=segment but model.model_path=" in refused.stderr + refused.stdout
    # predictions on the test manifest, at the thresholds tuned on valid
    out = tmp_path / "pred.csv"
    result = run_cli("fairseq-ecg-predict", "--checkpoint", str(best), str(data / "test.tsv"), "--out", str(out))
    assert "6 records" in result.stderr and "normalize=record" in result.stderr
    rows = _read_csv(out)
    assert [r["record"] for r in rows] == [f"test_{i}" for i in range(6)]
    assert "426783006 NSR" in rows[0] and "164889003 AF" in rows[0]
    assert [int(r["segments"]) for r in rows] == [1, 2, 2, 1, 2, 2]
    # the probabilities are the model's on the segments validation uses, averaged per record
    predictor = load_predictor(best)
    dataset = EcgSegmentDataset(read_manifest(data / "test.tsv"), 2500, cut="consecutive", normalize="record",
                                shuffle=False)
    batch = dataset.collater([dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        probs = torch.sigmoid(predictor.model(**batch["net_input"])["logits"]).numpy()
    columns = predictor.columns
    for record in range(6):
        expected = probs[batch["row"].numpy() == record].mean(axis=0)
        got = np.array([float(rows[record][c]) for c in columns])
        np.testing.assert_allclose(got, expected, atol=2e-6)
        thresholds = np.asarray(state["task_state"]["thresholds"])
        labels = [c for c, p, t in zip(columns, got, thresholds) if p >= t]
        assert rows[record]["labels"] == ";".join(labels)


def test_validate_and_embed_imported(data, imported, tmp_path):
    result = run_cli("fairseq-validate", str(data), "--user-dir", "fairseq_ecg", "--task", "ecg_classification",
                     "--path", str(imported["classifier"]), "--valid-subset", "test", "--batch-size", "4")
    assert "auroc" in result.stdout + result.stderr
    refused = run_cli("fairseq-validate", str(data), "--user-dir", "fairseq_ecg", "--task", "ecg_classification",
                      "--path", str(imported["classifier"]), "--valid-subset", "test", "--batch-size", "4",
                      "--normalize", "none", check=False)
    assert refused.returncode != 0
    assert "normalize=none but this checkpoint was trained with normalize=record" in refused.stdout + refused.stderr
    for kind in ("pretrained", "classifier"):
        out = tmp_path / f"{kind}.npy"
        run_cli("fairseq-ecg-embed", str(data / "test.tsv"), "--checkpoint", str(imported[kind]), "--out", str(out))
        assert np.load(out).shape == (6, 32)
    bad = run_cli("fairseq-ecg-embed", str(data / "test.tsv"), "--checkpoint", str(imported["pretrained"]),
                  "--out", str(tmp_path / "x.npy"), "--normalize", "segment", check=False)
    assert bad.returncode == 2 and len(_ours(bad.stderr)) == 1
    assert "trained with normalize=record" in bad.stderr


def test_predict_folder_with_bad_records(imported, tmp_path):
    archive = tmp_path / "night"
    written = synthesize_archive(archive, records=5, patients=5, seed=3)
    headers = sorted(archive.rglob("*.hea"))
    assert len(headers) == len(written) == 5
    headers[1].write_text("garbage that is not a header\n")  # unreadable
    mat = headers[3].with_suffix(".mat")
    mat.write_bytes(mat.read_bytes()[:200])  # truncated signal
    thresholds = tmp_path / "thr.txt"
    thresholds.write_text("".join(f"{name},0.5\n" for name in SCORED_CLASSES))
    out = tmp_path / "night.csv"
    result = run_cli("fairseq-ecg-predict", "--checkpoint", str(imported["classifier"]), str(archive),
                     "--layout", "physionet2021", "--out", str(out), "--leads", "6", "--thresholds", str(thresholds),
                     "--batch-size", "3", "--progress-seconds", "0")
    rows = _read_csv(out)
    assert len(rows) == 3
    skipped = (tmp_path / "night.skipped.tsv").read_text().splitlines()
    assert skipped[0] == "record\treason" and len(skipped) == 3
    names = [line.split("\t")[0] for line in skipped[1:]] + [r["record"] for r in rows]
    assert len(set(names)) == 5
    assert "3 records" in result.stderr and "2 skipped" in result.stderr
    assert "records/s" in result.stderr  # progress lines
    columns = load_predictor(imported["classifier"]).columns
    assert list(rows[0]) == ["record", "segments", "leads", "quality", *columns, "labels"] and columns[0] == "164889003 AF"
    assert {r["leads"] for r in rows} == {"I,II,III,aVR,aVL,aVF,V1,V2,V3,V4,V5,V6"}
    # --leads 6 on a 12-lead model: which leads are fed, which go in as zeros
    assert ("the model was trained on leads I,II,III,aVR,aVL,aVF,V1,V2,V3,V4,V5,V6; this run feeds it "
            "I,II,III,aVR,aVL,aVF with zeros for V1,V2,V3,V4,V5,V6 (--leads)") in result.stderr
    probs = np.array([[float(r[c]) for c in columns] for r in rows])
    assert np.all((probs >= 0) & (probs <= 1))
    # 0.5 for every class, as the file says; a number does the same
    out2 = tmp_path / "night2.csv"
    run_cli("fairseq-ecg-predict", "--checkpoint", str(imported["classifier"]), str(archive),
            "--layout", "physionet2021", "--out", str(out2), "--leads", "6", "--thresholds", "0.5")
    assert [r["labels"] for r in _read_csv(out2)] == [r["labels"] for r in rows]
    # an imported classifier has no tuned thresholds: valid falls back to 0.5, in one line
    fallback = run_cli("fairseq-ecg-predict", "--checkpoint", str(imported["classifier"]), str(archive),
                       "--layout", "physionet2021", "--out", str(tmp_path / "n3.csv"), "--leads", "6")
    assert sum("using 0.5" in line for line in fallback.stderr.splitlines()) == 1
    # a mismatch of the normalisation is refused in one line
    refused = run_cli("fairseq-ecg-predict", "--checkpoint", str(imported["classifier"]), str(archive),
                      "--out", str(tmp_path / "n4.csv"), "--normalize", "segment", check=False)
    assert refused.returncode == 2 and len(_ours(refused.stderr)) == 1 and "error:" in _ours(refused.stderr)[0]


def test_pretraining_records_its_mode(tiny_pretrained):
    state = load_checkpoint(tiny_pretrained)
    assert state["task_state"]["normalize"] == "none" == state["cfg"]["task"]["normalize"]
    assert ModelInput.of_checkpoint(state).normalize == "none"


def test_a_checkpoint_of_format_1_is_upgraded_in_one_place_and_a_newer_one_refused(tiny_pretrained, tmp_path):
    """Every reader (the plugin's and fairseq's, as patched) brings a checkpoint written before the
    format was recorded to the current one: its normalisation (a boolean then), trained leads and the
    encoder settings that version trained with; a checkpoint of a newer format is refused in one
    line (issue 21 item 1)."""
    from fairseq import checkpoint_utils

    from fairseq_ecg.checkpoints import CheckpointError
    from fairseq_ecg.models.ecg_wav2vec2 import RLM_MODE_BEFORE_THE_OPTION

    state = torch.load(tiny_pretrained, weights_only=True)
    assert state["task_state"]["format_version"] == CURRENT_FORMAT and state["task_state"]["trained_leads"] == "12"
    for key in ("format_version", "normalize", "trained_leads"):
        del state["task_state"][key]
    state["cfg"]["task"]["normalize"] = True
    del state["cfg"]["model"]["rlm_mode"]
    torch.save(state, tmp_path / "old.pt")
    for read in (load_checkpoint, checkpoint_utils.load_checkpoint_to_cpu):
        upgraded = read(str(tmp_path / "old.pt"))
        assert upgraded["task_state"] == {**upgraded["task_state"], "format_version": CURRENT_FORMAT, "normalize": "segment",
                                          "trained_leads": "12"}, read
        assert upgraded["cfg"]["model"]["rlm_mode"] == RLM_MODE_BEFORE_THE_OPTION
        assert ModelInput.of_checkpoint(upgraded) == ModelInput(500.0, 2500, "12", "segment")
    state["task_state"]["format_version"] = CURRENT_FORMAT + 1
    torch.save(state, tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match=rf"new.pt: a checkpoint of format {CURRENT_FORMAT + 1}, written by a newer"):
        load_checkpoint(tmp_path / "new.pt")


def test_predict_applies_the_checkpoints_calibration_as_validate_scores(imported, data, tmp_path):
    """A classifier with a saved calibration (format 3; set by hand here, fitted by training in
    test_classification): fairseq-validate's per-record results hold the calibrated probabilities
    and those before; fairseq-ecg-predict writes the same calibrated ones (1e-6) and, with
    --calibration none, the ones before, at thresholds mapped back, so the labels agree. A format-2
    checkpoint is upgraded without a calibration, and predict says it has none."""
    from fairseq_ecg.metrics.calibration import PlattCalibration
    from fairseq_ecg.metrics.record_results import read_classification_results

    state = torch.load(imported["classifier"], weights_only=True)
    calibration = PlattCalibration(tuple([2.0] * 13 + [1.0] * 13), tuple([-1.0] * 13 + [0.0] * 13))
    state["task_state"].update(calibration=calibration.to_state(), thresholds=[0.3] * 26)
    torch.save(state, tmp_path / "calibrated.pt")
    result = run_cli("fairseq-validate", str(data), "--user-dir", "fairseq_ecg", "--task", "ecg_classification",
                     "--path", str(tmp_path / "calibrated.pt"), "--valid-subset", "test", "--batch-size", "4",
                     "--per-record-results", str(tmp_path / "results"), "--calibration", "valid")
    assert "ece_uncalibrated" in result.stdout + result.stderr
    saved = read_classification_results(tmp_path / "results" / "test.results.csv")
    np.testing.assert_allclose(saved.probs, calibration.apply(saved.uncalibrated), atol=1e-12)
    assert not np.allclose(saved.probs[:, :13], saved.uncalibrated[:, :13])
    order = [saved.records.index(f"test_{i}") for i in range(6)]
    written = {}
    for mode in ("valid", "none"):
        out = tmp_path / f"{mode}.csv"
        result = run_cli("fairseq-ecg-predict", "--checkpoint", str(tmp_path / "calibrated.pt"), str(data / "test.tsv"),
                         "--out", str(out), "--calibration", mode)
        assert f"calibration={mode}" in result.stderr
        written[mode] = rows = _read_csv(out)
        got = np.array([[float(row[c]) for c in saved.columns] for row in rows])
        np.testing.assert_allclose(got, (saved.probs if mode == "valid" else saved.uncalibrated)[order], atol=1e-6)
    assert [r["labels"] for r in written["valid"]] == [r["labels"] for r in written["none"]]
    assert [r["labels"] for r in written["valid"]] == [
        ";".join(c for c, p in zip(saved.columns, saved.probs[k]) if p >= 0.3) for k in order]
    # format 2: no calibration; predict says so and writes the probabilities as trained
    state["task_state"].pop("calibration")
    state["task_state"]["format_version"] = 2
    torch.save(state, tmp_path / "format2.pt")
    assert ModelInput.of_checkpoint(load_checkpoint(tmp_path / "format2.pt")).calibration is None
    result = run_cli("fairseq-ecg-predict", "--checkpoint", str(tmp_path / "format2.pt"), str(data / "test.tsv"),
                     "--out", str(tmp_path / "format2.csv"))
    assert "no calibration saved" in result.stderr and "calibration=none" in result.stderr
    np.testing.assert_allclose([[float(row[c]) for c in saved.columns] for row in _read_csv(tmp_path / "format2.csv")],
                               saved.uncalibrated[order], atol=1e-6)


def test_a_format_1_classifier_without_class_names_names_its_columns_once(imported, tmp_path, caplog):
    state = torch.load(imported["classifier"], weights_only=True)
    del state["task_state"]["classes"], state["task_state"]["format_version"]
    torch.save(state, tmp_path / "old.pt")
    with caplog.at_level("WARNING"):
        predictor = load_predictor(tmp_path / "old.pt")
    assert predictor.class_names == [f"class_{i}" for i in range(26)]
    assert [r.getMessage() for r in caplog.records if "class names" in r.getMessage()] == [
        "the checkpoint does not record its class names (trained before they were saved): they are "
        "class_0 ... class_25, in the order of the training classes.tsv"]


def test_records_lacking_leads_the_model_is_fed_are_counted_and_named(imported, data, tmp_path):
    """Two-lead records under a 12-lead model were zero-filled without a word (issue 23 item 2):
    predict, embed and fairseq-validate each count them once, by the leads they lack, and the
    CSV names each record's leads."""
    from fairseq_ecg.predict import main as predict_main

    folder = tmp_path / "twolead"
    folder.mkdir()
    rng = np.random.default_rng(8)
    rows = []
    for i, mask in enumerate(["110000000000", "110000000000", "1" * 12, "111111000000"]):
        wave = rng.normal(0, 0.2, (12, 2500)).astype(np.float32) * np.array([int(c) for c in mask])[:, None]
        np.save(folder / f"r{i}.npy", wave)
        rows.append(ManifestRow(f"r{i}.npy", 2500, mask, f"p{i}", 500.0, f"r{i}"))
    write_manifest(folder / "test.tsv", folder, rows)
    write_labels(folder / "test.tsv", [CODE_SETS[0]] * len(rows))
    write_classes(folder, SCORED_CLASSES)
    out = tmp_path / "two.csv"
    result = run_cli("fairseq-ecg-predict", "--checkpoint", str(imported["classifier"]), str(folder / "test.tsv"),
                     "--out", str(out))
    assert [r["leads"] for r in _read_csv(out)] == ["I,II", "I,II", "I,II,III,aVR,aVL,aVF,V1,V2,V3,V4,V5,V6",
                                                    "I,II,III,aVR,aVL,aVF"]
    lines = [line for line in _ours(result.stderr) if "lack leads" in line]
    assert lines == ["fairseq-ecg-predict: 3 of 4 predicted records lack leads that the model is fed "
                     "(I,II,III,aVR,aVL,aVF,V1,V2,V3,V4,V5,V6), which go in as zeros: 2 lack "
                     "III,aVR,aVL,aVF,V1,V2,V3,V4,V5,V6; 1 lack V1,V2,V3,V4,V5,V6 (the CSV's leads column "
                     "names each record's)"]
    embedded = run_cli("fairseq-ecg-embed", str(folder / "test.tsv"), "--checkpoint", str(imported["pretrained"]),
                       "--out", str(tmp_path / "two.npy"))
    assert sum("3 of 4 records lack leads that the model is fed" in line for line in _ours(embedded.stderr)) == 1
    validated = run_cli("fairseq-validate", str(folder), "--user-dir", "fairseq_ecg", "--task", "ecg_classification",
                        "--path", str(imported["classifier"]), "--valid-subset", "test", "--batch-size", "4")
    output = validated.stdout + validated.stderr
    assert output.count("3 of 4 records lack leads that the model is fed") == 1, output[-3000:]


def test_a_short_record_is_skipped_and_loses_no_other_row(imported, tmp_path):
    """A 10-sample record alone in a batch raised a convolution error and no CSV was written; among
    longer records it was padded and predicted without a word (issue 20 item 3)."""
    from fairseq_ecg.predict import main as predict_main

    predictor = load_predictor(imported["classifier"])
    assert predictor.min_samples == 22  # [(24, 4, 2)] * 3: 4, 10, 22 samples
    folder = tmp_path / "short"
    folder.mkdir()
    rng = np.random.default_rng(5)
    rows = []
    for name, samples in (("long_a", 2500), ("tiny", 10), ("long_b", 3000), ("edge", 22)):
        np.save(folder / f"{name}.npy", rng.normal(0, 0.2, (12, samples)).astype(np.float32))
        rows.append(ManifestRow(f"{name}.npy", samples, record=name))
    write_manifest(folder / "test.tsv", folder, rows)
    for batch in ("1", "4"):  # alone in its batch, and among longer records
        out = tmp_path / f"short_{batch}.csv"
        assert predict_main(["--checkpoint", str(imported["classifier"]), str(folder / "test.tsv"), "--out", str(out),
                             "--batch-size", batch]) == 0
        assert [r["record"] for r in _read_csv(out)] == ["long_a", "long_b", "edge"]
        skipped = out.with_suffix(".skipped.tsv").read_text().splitlines()
        assert skipped[1] == "tiny\t10 samples (0.02 s) is shorter than the model's receptive field of 22 samples"
    only_tiny = folder / "tiny.tsv"
    write_manifest(only_tiny, folder, rows[1:2])
    assert predict_main(["--checkpoint", str(imported["classifier"]), str(only_tiny),
                         "--out", str(tmp_path / "none.csv")]) == 1  # every record skipped


def test_a_record_the_model_fails_on_is_skipped_and_the_batch_scored_without_it(imported, tmp_path, monkeypatch):
    from fairseq_ecg import predict as predict_module

    predictor = load_predictor(imported["classifier"])
    folder = tmp_path / "fail"
    folder.mkdir()
    rng = np.random.default_rng(6)
    rows = []
    for name, samples in (("a", 1500), ("b", 1600), ("c", 1700)):  # shorter than a segment: one each
        np.save(folder / f"{name}.npy", rng.normal(0, 0.2, (12, samples)).astype(np.float32))
        rows.append(ManifestRow(f"{name}.npy", samples, record=name))
    write_manifest(folder / "test.tsv", folder, rows)
    forward = predictor.model.forward

    def fails_on_1600(source, padding_mask=None, **kwargs):
        lengths = source.shape[-1] - (padding_mask.sum(-1) if padding_mask is not None else 0)
        if (torch.as_tensor(lengths) == 1600).any():
            raise RuntimeError("injected failure of one record")
        return forward(source, padding_mask=padding_mask, **kwargs)

    monkeypatch.setattr(predictor.model, "forward", fails_on_1600)
    out = tmp_path / "fail.csv"
    written, skipped = predict_module.predict(predictor, folder / "test.tsv", out, np.full(26, 0.5), batch_size=8,
                                              log=lambda _: None)
    assert written == 2 and [r["record"] for r in _read_csv(out)] == ["a", "c"]
    assert skipped == [("b", "the model failed on it (RuntimeError: injected failure of one record)")]


def test_the_quality_column_names_failed_checks_and_labels_can_be_withheld(imported, tmp_path, capsys):
    """Signal quality before the model speaks (issue 22 item 3): a record with mains noise on V2 is
    flagged in the quality column and the closing line; with --withhold-poor-quality it gets no
    labels (its probabilities stay), a clean record keeps them."""
    from fairseq_ecg.predict import main as predict_main
    from fairseq_ecg.sources import discover, read_record

    archive = tmp_path / "archive"
    synthesize_archive(archive, records=2, patients=2, seed=4, layout="numpy")
    folder = tmp_path / "records"
    folder.mkdir()
    rows = []
    for number, ref in enumerate(sorted(discover(archive, "numpy"), key=lambda r: r.key)):
        wave = np.asarray(read_record(ref).signal, dtype=np.float32)
        name = ["clean", "mains"][number]
        if name == "mains":
            wave[7] += 0.5 * np.ptp(wave[7]) * np.sin(2 * np.pi * 50 * np.arange(wave.shape[1]) / 500)
        np.save(folder / f"{name}.npy", wave)
        rows.append(ManifestRow(f"{name}.npy", wave.shape[1], record=name))
    write_manifest(folder / "test.tsv", folder, rows)
    for withhold in (False, True):
        out = tmp_path / f"withhold_{withhold}.csv"
        args = ["--checkpoint", str(imported["classifier"]), str(folder / "test.tsv"), "--out", str(out), "--cpu",
                "--thresholds", "0", *(["--withhold-poor-quality"] if withhold else [])]
        assert predict_main(args) == 0
        assert "1 of 2 records fail a signal-quality check (noisy 1;" in capsys.readouterr().err  # records, not leads
        by_name = {row["record"]: row for row in _read_csv(out)}
        assert by_name["clean"]["quality"] == "ok" and by_name["mains"]["quality"] == "noisy:V2"
        assert len(by_name["clean"]["labels"].split(";")) == 26
        assert by_name["mains"]["labels"] == ("" if withhold else by_name["clean"]["labels"])
        assert float(by_name["mains"][next(c for c in by_name["mains"] if " " in c)]) > 0


def test_embed_skips_bad_records_by_predicts_rules(imported, tmp_path):
    """Embed stopped the whole run on one bad DICOM field and embedded a NaN record without a word,
    where predict skips both (issue 20 item 15)."""
    import pydicom
    from pydicom.dataelem import RawDataElement

    from fairseq_ecg.embed import main as embed_main
    from fairseq_ecg.synth.layouts import dicom_dataset

    folder = tmp_path / "manifest"
    folder.mkdir()
    rng = np.random.default_rng(7)
    rows = []
    for name, samples in (("good_a", 2500), ("nan", 2500), ("tiny", 10), ("gone", 2500), ("good_b", 3000)):
        wave = rng.normal(0, 0.2, (12, samples)).astype(np.float32)
        if name == "nan":
            wave[4, 100] = np.nan
        if name != "gone":
            np.save(folder / f"{name}.npy", wave)
        rows.append(ManifestRow(f"{name}.npy", samples, record=name))
    write_manifest(folder / "test.tsv", folder, rows)
    out = tmp_path / "m.npy"
    assert embed_main(["--checkpoint", str(imported["pretrained"]), str(folder / "test.tsv"), "--out", str(out),
                       "--cpu"]) == 0
    listed = [line.split("\t")[0] for line in out.with_suffix(".tsv").read_text().splitlines()[1:]]
    assert listed == ["good_a", "good_b"] and np.load(out).shape[0] == 2 and np.isfinite(np.load(out)).all()
    reasons = dict(line.split("\t") for line in out.with_suffix(".skipped.tsv").read_text().splitlines()[1:])
    assert set(reasons) == {"nan", "tiny", "gone"}
    assert "NaN or Inf samples" in reasons["nan"] and "receptive field of 22 samples" in reasons["tiny"]
    assert "gone.npy is missing" in reasons["gone"] and reasons["gone"].startswith("line 5:")

    dicom = tmp_path / "dicom"
    dicom.mkdir()
    signal = np.sin(np.arange(5000) / 30.0)[None].repeat(12, 0) * 0.5
    for name in ("one", "bad", "two"):
        ds = dicom_dataset(signal, 500, "MRN1", "Doe^Jane", "19500101")
        if name == "bad":  # written raw: pydicom refuses to set a DS it cannot parse
            channel = ds.WaveformSequence[1].ChannelDefinitionSequence[2]
            tag = channel["ChannelSensitivity"].tag
            channel[tag] = RawDataElement(tag, "DS", 3, b"abc", 0, True, True)
        ds.save_as(dicom / f"{name}.dcm", enforce_file_format=True)
    out = tmp_path / "d.npy"
    assert embed_main(["--checkpoint", str(imported["pretrained"]), str(dicom), "--out", str(out), "--cpu"]) == 0
    assert np.load(out).shape[0] == 2
    skipped = out.with_suffix(".skipped.tsv").read_text().splitlines()
    assert len(skipped) == 2 and "abc" in skipped[1] and "bad" not in skipped[1].split("\t")[0]  # a hash, no name
    assert pydicom.dcmread(dicom / "bad.dcm").PatientID == "MRN1"
    # a run that skipped every record embeds nothing and exits 1
    write_manifest(folder / "bad.tsv", folder, rows[1:4])
    assert embed_main(["--checkpoint", str(imported["pretrained"]), str(folder / "bad.tsv"),
                       "--out", str(tmp_path / "none.npy"), "--cpu"]) == 1
    assert not (tmp_path / "none.npy").exists()


def test_one_ecg_one_command_and_the_python_api(imported, tmp_path):
    """A record's own file (.hea, .mat, the record name, a MUSE .xml, a .npy with --sample-rate) is
    predicted and its row printed; a missing path says so (issue 23 item 3). The Python API gives
    the CSV's probabilities for the same array."""
    from fairseq_ecg.sources import discover, read_record

    archive = tmp_path / "cinc"
    synthesize_archive(archive, records=2, patients=2, seed=4)
    header = sorted(archive.rglob("*.hea"))[0]
    out = tmp_path / "one.csv"
    base = ["fairseq-ecg-predict", "--checkpoint", str(imported["classifier"]), "--out", str(out)]
    rows = {}
    for given in (header, header.with_suffix(".mat"), header.with_suffix("")):
        result = run_cli(*base, str(given))
        (row,) = _read_csv(out)
        rows[given.name] = row
        assert row["record"] == header.stem
        (printed,) = [line for line in result.stdout.splitlines() if line.startswith(f"{header.stem}: ")]
        assert printed.endswith(f"({row['segments']} segments, leads {row['leads']})")
    assert len({tuple(r.values()) for r in rows.values()}) == 1  # the same row, however it is named
    record = read_record(next(ref for ref in discover(archive, "auto") if ref.key.endswith(header.stem)))
    predictor = load_predictor(imported["classifier"])
    probs = predictor.probabilities(record.signal, record.sample_rate)
    np.testing.assert_allclose(probs, [float(rows[header.name][c]) for c in predictor.columns], atol=1e-6)
    assert set(predictor.labels(probs, np.full(26, 0.0))) == set(predictor.class_names)
    array = tmp_path / "ecg.npy"
    np.save(array, record.signal.T.astype(np.float32))  # [T, 12], at the record's rate
    run_cli(*base, str(array), "--sample-rate", str(record.sample_rate))
    (row,) = _read_csv(out)
    np.testing.assert_allclose([float(row[c]) for c in predictor.columns], probs, atol=2e-6)
    no_rate = run_cli(*base, str(array), check=False)
    assert no_rate.returncode == 2 and "needs --sample-rate HZ" in no_rate.stderr
    muse = tmp_path / "muse"
    synthesize_archive(muse, records=1, patients=1, seed=5, layout="muse_xml")
    (xml,) = sorted(muse.rglob("*.xml"))
    result = run_cli(*base, str(xml))
    (row,) = _read_csv(out)
    assert "MRN" not in row["record"] and row["leads"].startswith("I,II")
    folder_out = run_cli("fairseq-ecg-predict", "--checkpoint", str(imported["classifier"]), "--out", str(muse),
                         str(xml), check=False)
    assert folder_out.returncode == 2 and f"--out {muse} is a folder; name the file to write in it" in folder_out.stderr
    missing = run_cli(*base, str(tmp_path / "nowhere"), check=False)
    assert missing.returncode == 2 and f"{tmp_path / 'nowhere'}: no such file or folder" in missing.stderr
    # embed reads a record's own file as predict does: the vector its folder gives it
    from fairseq_ecg.embed import main as embed_main

    assert embed_main(["--checkpoint", str(imported["pretrained"]), str(header), "--out", str(tmp_path / "one.npy")]) == 0
    assert embed_main(["--checkpoint", str(imported["pretrained"]), str(archive), "--out", str(tmp_path / "all.npy")]) == 0
    keys = [line.split("\t")[0] for line in (tmp_path / "all.tsv").read_text().splitlines()[1:]]
    index = next(k for k, key in enumerate(keys) if key.endswith(header.stem))
    np.testing.assert_allclose(np.load(tmp_path / "one.npy")[0], np.load(tmp_path / "all.npy")[index], atol=1e-6)
