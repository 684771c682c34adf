"""Explanations (issue 22 item 1): integrated gradients that add up to the probability they
explain (completeness, through the calibration too), zero for a lead the model is not fed, the
same with a frozen encoder, and fairseq-ecg-predict --explain writing arrays, clinical-layout PNGs
and their index."""
import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import one_line_error, run_cli
from fairseq_ecg.deploy.explain import BIN_SECONDS, STEPS, explain_record, shown_window
from fairseq_ecg.labels import SCORED_CLASSES
from fairseq_ecg.leads import LEADS
from fairseq_ecg.metrics.calibration import PlattCalibration
from fairseq_ecg.predict import load_predictor
from signals_reference import signals_checkpoint


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("explain")
    signals_checkpoint(root / "cls_src.pt", "classifier", "parametrizations", seed=2, num_labels=26)
    (root / "labels.txt").write_text("".join(f"{name}\n" for name in SCORED_CLASSES))
    run_cli("fairseq-ecg-import", str(root / "cls_src.pt"), "--out", str(root / "cls.pt"),
            "--labels", str(root / "labels.txt"), "--kind", "classifier")
    return root / "cls.pt"


def _record(seconds: float, seed: int = 0) -> np.ndarray:
    """A beating 12-lead record in mV: narrow spikes at 70/min on a slow wave, and noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 500)) / 500
    beats = np.exp(-((t[None] % (60 / 70)) - 0.3) ** 2 / (2 * 0.01 ** 2)) * rng.uniform(0.5, 1.5, (12, 1))
    return (beats + 0.2 * np.sin(2 * np.pi * 1.1 * t)[None] + 0.02 * rng.standard_normal((12, len(t)))).astype(np.float32)


@pytest.mark.parametrize("seconds", [4.0, 12.5])
@pytest.mark.parametrize("calibrated", [False, True])
def test_attributions_add_up_to_the_probability_they_explain(classifier, seconds, calibrated):
    torch.set_num_threads(1)
    predictor = load_predictor(classifier)
    if calibrated:
        predictor.input = predictor.input.__class__(**{**predictor.input.__dict__, "calibration": PlattCalibration(
            tuple([1.7] * 26), tuple([-0.4] * 26))})
    wave = _record(seconds)
    probs = predictor.probabilities(wave, 500)
    found = explain_record(predictor, "r", wave, [0, 5], np.full(26, 0.5))
    for explanation, k in zip(found, [0, 5]):
        assert explanation.probability == pytest.approx(probs[k], abs=1e-6)  # predict's own number
        change = explanation.probability - explanation.baseline
        assert abs(change) > 1e-4
        assert abs(explanation.attribution.sum() - change) <= 0.01 * abs(change), (STEPS, explanation.gap)
        covered = 2500 * int(seconds // 5) if seconds >= 5 else len(wave[0])
        assert explanation.attribution.shape == (12, int(np.ceil(covered / 500 / BIN_SECONDS)))


def test_a_lead_the_model_is_not_fed_gets_zero_and_a_frozen_encoder_still_explains(classifier):
    torch.set_num_threads(1)
    predictor = load_predictor(classifier)
    wave = _record(10.0)
    assert np.abs(wave[LEADS.index("V1")]).min() >= 0 and np.ptp(wave[LEADS.index("V1")]) > 0.5  # V1 is not zero
    explanation, = explain_record(predictor, "r", wave, [0], np.full(26, 0.5), leads="I,II")
    fed = [LEADS.index("I"), LEADS.index("II")]
    assert np.abs(explanation.attribution[fed]).sum() > 0
    assert np.all(np.delete(explanation.attribution, fed, axis=0) == 0.0)
    # a linear probe's frozen encoder (no gradients in training) and a frozen CNN are explained alike
    plain, = explain_record(predictor, "r", wave, [0], np.full(26, 0.5))
    predictor.model.encoder.feature_grad_mult = 0.0
    predictor.model.cfg.freeze_encoder_updates = -1
    frozen, = explain_record(predictor, "r", wave, [0], np.full(26, 0.5))
    np.testing.assert_allclose(frozen.attribution, plain.attribution, atol=1e-6)
    assert predictor.model.encoder.feature_grad_mult == 0.0 and predictor.model.cfg.freeze_encoder_updates == -1


def test_the_window_shown_is_the_ten_seconds_of_most_attribution():
    attribution = np.zeros((12, 310))
    attribution[3, 200:220] = -1.0
    start, end = shown_window(attribution, 31.0)
    assert end - start == 100 and start <= 200 and end >= 220
    assert shown_window(np.ones((12, 40)), 4.0) == (0, 40)


def test_predict_explain_writes_arrays_images_and_their_index(classifier, tmp_path):
    from fairseq_ecg.manifest import ManifestRow, write_manifest

    folder = tmp_path / "records"
    folder.mkdir()
    rows = []
    for name, seconds in [("short", 7.3), ("long", 15.2)]:
        np.save(folder / f"{name}.npy", _record(seconds, seed=len(name)))
        rows.append(ManifestRow(f"{name}.npy", int(seconds * 500), record=name))
    write_manifest(folder / "test.tsv", folder, rows)
    out = tmp_path / "explain"
    thresholds = tmp_path / "thresholds.txt"  # two classes reachable, 1 for the others (a sigmoid stays below)
    thresholds.write_text("".join(f"{0.0 if k in (0, 3) else 1.0}\n" for k in range(26)))
    result = run_cli("fairseq-ecg-predict", "--checkpoint", str(classifier), str(folder / "test.tsv"),
                     "--out", str(tmp_path / "pred.csv"), "--thresholds", str(thresholds), "--explain", str(out),
                     "--explain-steps", "16")
    with open(tmp_path / "pred.csv", newline="") as handle:
        predicted = {row["record"]: row["labels"].split(";") if row["labels"] else [] for row in csv.DictReader(handle)}
    with open(out / "explanations.tsv", newline="") as handle:
        index = list(csv.DictReader(handle, delimiter="\t"))
    # by default, each record's predicted classes
    assert sorted((r["record"], r["class"]) for r in index) == sorted((rec, c) for rec, cs in predicted.items() for c in cs)
    assert f"{len(index)} explanations -> {out}" in result.stderr and len(index) == 4
    for row in index:
        attribution = np.load(out / f"{row['files']}.npy")
        # the segments the model read, in 0.1 s bins: one whole 5 s segment of 7.3 s, three of 15.2 s
        assert attribution.shape == (12, 50 if row["record"] == "short" else 150) and attribution.dtype == np.float32
        change = float(row["probability"]) - float(row["baseline_probability"])
        assert abs(attribution.sum() - change) <= 0.01 * abs(change) + 1e-6
        image = (out / f"{row['files']}.png").read_bytes()
        assert image[:8] == b"\x89PNG\r\n\x1a\n"
    # chosen classes, and a class the model lacks refused in one line
    run_cli("fairseq-ecg-predict", "--checkpoint", str(classifier), str(folder / "test.tsv"), "--out",
            str(tmp_path / "pred2.csv"), "--explain", str(tmp_path / "chosen"), "--explain-classes", "164889003",
            "--explain-steps", "8")
    assert sorted(p.name for p in (tmp_path / "chosen").glob("*.png")) == ["long__164889003_AF.png",
                                                                         "short__164889003_AF.png"]
    refused = run_cli("fairseq-ecg-predict", "--checkpoint", str(classifier), str(folder / "test.tsv"), "--out",
                      str(tmp_path / "pred3.csv"), "--explain", str(tmp_path / "none"), "--explain-classes", "12345",
                      check=False)
    assert "'12345' is not a class of the checkpoint" in one_line_error(refused, "--explain-classes")
