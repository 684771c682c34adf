"""Arrhythmia classification: the task's splits and lead subsets, whole-subset metrics in both of
fairseq's reduction paths, threshold tuning, pretrained weights in the classifier, a tiny
fine-tuning run validated by fairseq-validate, and the one-line errors for inputs that do not fit."""
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from sklearn.metrics import f1_score, roc_auc_score

from conftest import files_written, one_line_error, run_cli
from fairseq import checkpoint_utils, metrics
from fairseq_ecg.checkpoints import CheckpointError
from fairseq_ecg.criterions.ecg_bce import EcgBceCriterion
from fairseq_ecg.metrics.meters import ScoredSegments
from fairseq_ecg.labels import SCORED_CLASSES, scored_labels
from fairseq_ecg.leads import LEADS, parse_leads
from fairseq_ecg.manifest import ManifestError, ManifestRow, write_classes, write_labels, write_manifest
from fairseq_ecg.metrics.classification import aggregate_by_record, challenge_metric
from fairseq_ecg.models.ecg_classifier import EcgClassifierConfig
from fairseq_ecg.tasks.ecg_classification import EcgClassificationConfig, EcgClassificationTask

SEGMENT = 2500  # 5 s at 500 Hz
CODE_SETS = [["426783006"], ["164889003"], ["59118001", "426783006"], ["164889003", "713427006"],
             ["270492004", "426783006"], ["99999999"], []]  # the last two: no scored class


def _write_split(folder: Path, split: str, lengths: list, seed: int) -> list:
    rng = np.random.default_rng(seed)
    (folder / "waves").mkdir(parents=True, exist_ok=True)
    rows, labels = [], []
    for i, samples in enumerate(lengths):
        name = f"{split}_{i}"
        np.save(folder / "waves" / f"{name}.npy", (rng.standard_normal((12, samples)) * 0.3).astype(np.float32))
        rows.append(ManifestRow(f"waves/{name}.npy", samples, "1" * 12, f"p_{name}", 500.0, name))
        labels.append(CODE_SETS[i % len(CODE_SETS)])
    write_manifest(folder / f"{split}.tsv", folder, rows)
    write_labels(folder / f"{split}.tsv", labels)
    return labels


@pytest.fixture(scope="module")
def classify_data(tmp_path_factory) -> Path:
    """A ``finetune`` folder over the 26 scored classes: 16 training records of 10 s; valid and
    test records of 10 s (two segments), 7.5 s (one) and 4 s (one, padded)."""
    folder = tmp_path_factory.mktemp("finetune")
    _write_split(folder, "train", [5000] * 16, seed=1)
    _write_split(folder, "valid", [5000, 3750, 2000, 5000, 5000, 5000, 5000], seed=2)
    _write_split(folder, "test", [5000, 2000, 5000, 3750, 5000, 5000, 5000], seed=3)
    write_classes(folder, SCORED_CLASSES)
    return folder


def _model_cfg(**overrides):
    return OmegaConf.structured(EcgClassifierConfig(_name="ecg_wav2vec2_classifier", **overrides))


def _task(data: Path, **overrides) -> EcgClassificationTask:
    return EcgClassificationTask(EcgClassificationConfig(data=str(data), seed=1, **overrides))


# --- the task ---------------------------------------------------------------------------------

def test_splits_targets_and_cuts(classify_data):
    task = _task(classify_data)
    assert task.num_classes == 26
    task.load_dataset("train")
    train = task.dataset("train")
    assert len(train) == 16
    batch = train.collater([train[i] for i in (2, 3)])
    assert batch["net_input"]["source"].shape == (2, 12, SEGMENT)
    expected = np.stack([scored_labels().encode(CODE_SETS[i]) for i in (2, 3)])
    assert np.array_equal(batch["target"].numpy(), expected) and batch["split"] == "train"
    task.load_dataset("valid")
    valid = task.dataset("valid")
    assert [int(r) for r, _ in valid.items] == [0, 0, 1, 2, 3, 3, 4, 4, 5, 5, 6, 6]
    batch = valid.collater([valid[i] for i in range(len(valid))])
    assert batch["row"].tolist() == [0, 0, 1, 2, 3, 3, 4, 4, 5, 5, 6, 6]
    assert batch["net_input"]["padding_mask"][3].sum() == SEGMENT - 2000  # the 4 s record, padded
    assert batch["target"][8:].sum() == 0  # no scored class


@pytest.mark.parametrize("leads", ["3", "1", "[V6,aVL]"])
def test_lead_subsets_zero_the_other_leads(classify_data, leads):
    task = _task(classify_data, leads=leads)
    task.load_dataset("valid")
    source = task.dataset("valid")[0]["segments"][0]
    wave = np.load(classify_data / "waves" / "valid_0.npy")[:, :SEGMENT]
    kept = [LEADS.index(name) for name in parse_leads(leads)]
    dropped = [i for i in range(12) if i not in kept]
    assert torch.equal(source[kept], torch.from_numpy(wave[kept]))
    assert source[dropped].abs().sum() == 0


def test_every_evaluation_segment_is_batched(classify_data):
    """fairseq would drop a last batch that is not a multiple of required_batch_size_multiple."""
    task = _task(classify_data)
    task.load_dataset("valid")
    itr = task.get_batch_iterator(dataset=task.dataset("valid"), max_sentences=5, required_batch_size_multiple=8)
    assert sum(len(b["id"]) for b in itr.next_epoch_itr(shuffle=False)) == 12


# --- whole-subset metrics -------------------------------------------------------------------

def _scored_batches(split: str = "valid"):
    """Segment probabilities of 30 records x 2 segments over three classes of the scored set, cut
    into batches so that records straddle batch boundaries."""
    rng = np.random.default_rng(5)
    labels = np.zeros((30, 26), bool)
    labels[:, [0, 14, 5]] = rng.random((30, 3)) < 0.4
    rows = np.repeat(np.arange(30), 2)
    probs = rng.random((60, 26)) * 0.45  # never predicted: left out of the macro F1
    probs[:, [0, 14, 5]] = labels[rows][:, [0, 14, 5]] * 0.35 + rng.random((60, 3)) * 0.65
    probs = probs.astype(np.float32)
    cuts = [0, 7, 25, 41, 60]
    batches = [ScoredSegments(np.arange(a, b), rows[a:b], labels[rows[a:b]], probs[a:b], split)
               for a, b in zip(cuts, cuts[1:])]
    return batches, labels, rows, probs


def _reduce(task, batches, per_batch: bool) -> dict:
    """Reduce like fairseq-validate (all logs at once) or like the trainer (one reduce per batch
    into an aggregator spanning the subset)."""
    criterion = EcgBceCriterion(task)
    logs = [{"loss": 1.0, "nlabels": 26 * len(b), "ntokens": len(b), "nsentences": len(b), "sample_size": len(b),
             "scored": b} for b in batches]
    with metrics.aggregate(new_root=True) as agg:
        if per_batch:
            for log in logs:
                with metrics.aggregate():
                    task.reduce_metrics([log], criterion)
        else:
            task.reduce_metrics(logs, criterion)
        return agg.get_smoothed_values(), agg


@pytest.mark.parametrize("per_batch", [False, True])
@pytest.mark.parametrize("how", ["mean", "max"])
def test_logged_metrics_are_scikit_learn_on_the_whole_subset(classify_data, per_batch, how):
    task = _task(classify_data, aggregate=how, tune_thresholds=False, calibration="none")  # at the fixed 0.5
    batches, labels, rows, probs = _scored_batches()
    values, _ = _reduce(task, batches, per_batch)
    _, record_probs = aggregate_by_record(probs, rows, how)
    cols = [0, 5, 14]
    assert values["auroc"] == pytest.approx(roc_auc_score(labels[:, cols], record_probs[:, cols], average="macro"), abs=1e-5)
    assert values["f1"] == pytest.approx(f1_score(labels[:, cols], record_probs[:, cols] >= 0.5, average="macro"), abs=1e-5)
    assert values["f1"] == pytest.approx(f1_score(labels, record_probs >= 0.5, average="macro", zero_division=np.nan),
                                         abs=1e-5)
    assert values["challenge_metric"] == pytest.approx(challenge_metric(labels, record_probs >= 0.5), abs=1e-5)
    assert values["accuracy"] == pytest.approx(np.mean(((record_probs >= 0.5) == labels).all(axis=1)), abs=1e-5)
    assert 0 <= values["auprc"] <= 1


def test_thresholds_tuned_on_valid_are_applied_to_test(classify_data):
    task = _task(classify_data, tune_thresholds=True, calibration="none")
    assert task.scoring("test").thresholds.tolist() == [0.5] * 26  # nothing tuned yet
    batches, labels, rows, probs = _scored_batches("valid")
    tuned_values, agg = _reduce(task, batches, per_batch=True)
    task.post_validate(None, tuned_values, agg)
    tuned = task.state.state_dict["thresholds"]
    assert len(tuned) == 26 and tuned != [0.5] * 26
    _, record_probs = aggregate_by_record(probs, rows, "mean")
    assert tuned_values["f1"] == pytest.approx(f1_score(labels[:, [0, 5, 14]], (record_probs >= tuned)[:, [0, 5, 14]],
                                                        average="macro"), abs=1e-5)
    # The same outputs, presented as the test subset, are scored at the stored thresholds.
    test_values, _ = _reduce(task, [ScoredSegments(b.ids, b.rows, b.targets, b.probs, "test") for b in batches], False)
    assert np.allclose(task.scoring("test").thresholds, tuned)
    assert test_values["f1"] == pytest.approx(tuned_values["f1"])


def test_calibration_fitted_on_valid_scores_test_and_keeps_every_ranking(classify_data):
    """Platt scaling fitted on valid (the three classes with positives; the 23 without stay as
    trained) is saved beside the thresholds, tuned on its scale; the test subset is scored through
    it. Calibration is increasing, so AUROC, F1 and the Challenge metric equal those of the
    uncalibrated task at the thresholds mapped back, while ECE and Brier fall on valid."""
    from fairseq_ecg.metrics.calibration import PlattCalibration, brier_score, expected_calibration_error

    batches, labels, rows, probs = _scored_batches("valid")
    _, record_probs = aggregate_by_record(probs, rows, "mean")
    results = {}
    for mode in ("valid", "none"):
        task = _task(classify_data, calibration=mode)
        valid, agg = _reduce(task, batches, per_batch=True)
        task.post_validate(None, valid, agg)
        test, _ = _reduce(task, [ScoredSegments(b.ids, b.rows, b.targets, b.probs, "test") for b in batches], False)
        results[mode] = task, valid, test
    task, valid, test = results["valid"]
    saved = PlattCalibration.from_state(task.state.state_dict["calibration"])
    assert saved.fitted.tolist() == [k in (0, 5, 14) for k in range(26)]
    calibrated = saved.apply(record_probs)
    assert valid["ece"] == pytest.approx(expected_calibration_error(labels, calibrated), abs=1e-5)
    assert valid["ece_uncalibrated"] == pytest.approx(expected_calibration_error(labels, record_probs), abs=1e-5)
    assert valid["brier"] < valid["brier_uncalibrated"] == pytest.approx(brier_score(labels, record_probs), abs=1e-5)
    assert valid["ece"] < valid["ece_uncalibrated"]
    assert test["ece"] == pytest.approx(valid["ece"]) and test["f1"] == pytest.approx(valid["f1"])
    plain_task, plain_valid, plain_test = results["none"]
    assert "calibration" not in plain_task.state.state_dict and "ece_uncalibrated" not in plain_test
    for name in ("auroc", "f1", "challenge_metric", "accuracy"):
        assert test[name] == pytest.approx(plain_test[name], abs=1e-5), name
    # a calibrated checkpoint scored with calibration=none: its thresholds mapped back select the same records
    task.cfg.calibration = "none"
    back = task.scoring("test").thresholds
    assert np.array_equal(record_probs >= back, calibrated >= np.asarray(task.state.state_dict["thresholds"]))
    assert task.scoring("test").calibration is None


# --- the model --------------------------------------------------------------------------------

def test_pretrained_encoder_weights_are_loaded(classify_data, tiny_pretrained):
    task = _task(classify_data)
    saved = torch.load(tiny_pretrained, weights_only=True)["model"]
    model = task.build_model(_model_cfg(model_path=str(tiny_pretrained)))
    assert model.cfg.num_classes == 26 and model.head.out_features == 26
    encoder = model.encoder.state_dict()
    assert set(encoder) == set(saved)
    assert all(torch.equal(encoder[k], saved[k]) for k in saved)
    fresh = task.build_model(_model_cfg(model_path=str(tiny_pretrained), init="random")).encoder.state_dict()
    assert not all(torch.equal(fresh[k], saved[k]) for k in saved if saved[k].is_floating_point())
    logits = model(torch.randn(3, 12, SEGMENT))["logits"]
    assert logits.shape == (3, 26)


# --- end to end: fairseq-hydra-train, then fairseq-validate -----------------------------------

def _values(text: str, subset: str) -> dict:
    line = [l for l in text.splitlines() if f"valid on '{subset}' subset" in l and "challenge_metric" in l][-1]
    return {k: float(v) for k, v in re.findall(r"\| (challenge_metric|auroc|auprc|f1|accuracy|loss|(?:ece|brier)(?:_uncalibrated)?) "
                                                  r"(-?[0-9.e-]+|nan)", line)}


@pytest.fixture(scope="module")
def tiny_classifier(classify_data, tiny_pretrained, tmp_path_factory) -> Path:
    """A one-epoch tiny fine-tuning run with calibration and thresholds fitted on valid. It trains on a copy of the
    data that is deleted afterwards: fairseq-validate must read the folder named on its command line."""
    work = tmp_path_factory.mktemp("ckpt_classify")
    data = Path(shutil.copytree(classify_data, work / "data"))
    result = run_cli("fairseq-hydra-train", "--config-dir", "examples/finetune", "--config-name", "classification",
                     "+size=tiny", f"task.data={data}", f"model.model_path={tiny_pretrained}",
                     f"checkpoint.save_dir={work}", "optimization.max_epoch=1", "task.tune_thresholds=true",
                     "task.calibration=valid")
    values = _values(result.stdout + result.stderr, "valid")
    assert -2 <= values["challenge_metric"] <= 1 and 0 <= values["auroc"] <= 1
    shutil.rmtree(data)
    return work / "checkpoint_best.pt"


CNN = "encoder.feature_extractor."


def cnn_weights(path: Path) -> dict:
    return {k: v for k, v in torch.load(path, weights_only=True)["model"].items() if k.startswith(CNN)}


@pytest.mark.parametrize("init", ["random", "pretrained"])
def test_a_random_cnn_trains_and_a_pretrained_one_stays_frozen(classify_data, tiny_pretrained, tmp_path, init):
    """The YAML's feature_grad_mult is left to the initialisation: the random-init baseline's CNN
    trains (0.1, fairseq-signals' from-scratch value), a pretrained CNN keeps its weights (0.0)."""
    run_cli("fairseq-hydra-train", "--config-dir", "examples/finetune", "--config-name", "classification",
            "+size=tiny", f"task.data={classify_data}", f"model.model_path={tiny_pretrained}", f"model.init={init}",
            f"checkpoint.save_dir={tmp_path}", "optimization.max_update=4", "checkpoint.save_interval_updates=1",
            "dataset.validate_interval_updates=0", "dataset.disable_validation=true")
    first, last = cnn_weights(tmp_path / "checkpoint_1_1.pt"), cnn_weights(tmp_path / "checkpoint_last.pt")
    assert len(first) == 6  # 4 convolutions and the first one's group norm (weight, bias)
    changed = [k for k in first if not torch.equal(first[k], last[k])]
    saved = torch.load(tmp_path / "checkpoint_last.pt", weights_only=True)["cfg"]["model"]
    if init == "random":
        assert saved["feature_grad_mult"] == 0.1 and changed == list(first)  # every CNN parameter moved
    else:
        assert saved["feature_grad_mult"] == 0.0 and changed == []
        pretrained = torch.load(tiny_pretrained, weights_only=True)["model"]
        assert all(torch.equal(last[k], pretrained[k[len("encoder."):]]) for k in last)


def encoder_regularisation(encoder) -> dict:
    """The dropouts and layerdrop a built ``ecg_wav2vec2`` encoder applies, read off its modules."""
    layer = encoder.encoder.layers[0]
    return {"dropout": layer.dropout1.p, "attention_dropout": layer.self_attn.dropout_module.p,
            "activation_dropout": layer.dropout2.p, "dropout_input": encoder.dropout_input.p,
            "encoder_layerdrop": encoder.encoder.layerdrop}


@pytest.mark.parametrize("overrides", [{}, {"dropout": 0.2, "attention_dropout": 0.15, "activation_dropout": 0.05,
                                            "dropout_input": 0.25, "encoder_layerdrop": 0.3}])
def test_finetuning_uses_its_own_regularisation_not_the_pretrainings(classify_data, tiny_pretrained, tmp_path,
                                                                     overrides):
    """The pretraining run (tiny W2V+CMSC+RLM) used dropout 0.1, attention 0.0, activation 0.0, input
    0.1, layerdrop 0.0; a fine-tuning run builds its encoder with the YAML's values (fairseq-signals'
    fine-tuning values by default) or the command line's, and its checkpoint rebuilds with them."""
    from fairseq import checkpoint_utils

    pretraining = torch.load(tiny_pretrained, weights_only=True)["cfg"]["model"]
    assert (pretraining["dropout"], pretraining["dropout_input"], pretraining["activation_dropout"]) == (0.1, 0.1, 0.0)
    expected = {"dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.1, "dropout_input": 0.0,
                "encoder_layerdrop": 0.0, **overrides}
    result = run_cli("fairseq-hydra-train", "--config-dir", "examples/finetune", "--config-name", "classification",
                     "+size=tiny", f"task.data={classify_data}", f"model.model_path={tiny_pretrained}",
                     f"checkpoint.save_dir={tmp_path}", "optimization.max_update=1", "dataset.disable_validation=true",
                     *(f"model.{k}={v}" for k, v in overrides.items()))
    log = result.stdout + result.stderr
    # what the training run built, as it says when it builds the encoder
    assert f"fine-tuning regularisation: dropout={expected['dropout']:g} (pretraining 0.1)" in log
    assert f"activation_dropout={expected['activation_dropout']:g} (pretraining 0)" in log
    models, _, _ = checkpoint_utils.load_model_ensemble_and_task([str(tmp_path / "checkpoint_last.pt")])
    assert encoder_regularisation(models[0].encoder) == pytest.approx(expected)
    # the architecture still comes from the pretraining run
    assert models[0].encoder.encoder.layers[0].fc1.out_features == pretraining["encoder_ffn_embed_dim"]


def test_finetune_then_fairseq_validate(classify_data, tiny_classifier):
    state = torch.load(tiny_classifier, weights_only=True)
    assert state["cfg"]["model"]["num_classes"] == 26 and state["cfg"]["model"]["encoder_args"]
    assert len(state["task_state"]["thresholds"]) == 26
    result = run_cli("fairseq-validate", str(classify_data), "--user-dir", "fairseq_ecg", "--task", "ecg_classification",
                     "--path", str(tiny_classifier), "--valid-subset", "test", "--batch-size", "3")
    values = _values(result.stdout + result.stderr, "test")
    assert set(values) == {"loss", "challenge_metric", "auroc", "auprc", "f1", "accuracy", "ece", "brier",
                           "ece_uncalibrated", "brier_uncalibrated"}
    assert -2 <= values["challenge_metric"] <= 1 and 0 <= values["accuracy"] <= 1
    assert state["task_state"]["trained_leads"] == "12"
    assert "the model was trained on leads" not in result.stdout + result.stderr  # its own lead set: no notice


@pytest.mark.parametrize("change", ["one class fewer", "two classes swapped"])
def test_fairseq_validate_refuses_a_model_of_other_classes_in_one_line(classify_data, tiny_classifier, tmp_path,
                                                                       change):
    data = tmp_path / "finetune"
    shutil.copytree(classify_data, data, symlinks=True)
    names = (data / "classes.tsv").read_text().split()
    names = names[:-1] if change == "one class fewer" else [names[1], names[0], *names[2:]]
    (data / "classes.tsv").write_text("\n".join(names) + "\n")
    result = run_cli("fairseq-validate", str(data), "--user-dir", "fairseq_ecg", "--task", "ecg_classification",
                     "--path", str(tiny_classifier), "--valid-subset", "test", "--batch-size", "3", check=False)
    line = one_line_error(result, "the checkpoint's model was trained on 26")
    assert line.startswith(f"fairseq-validate: error: {data / 'classes.tsv'}: {len(names)} classes") and "differ from class" in line


def _write_odd_records(data: Path, folders: Path) -> list[str]:
    """The test split of ``data`` as records of 4.9, 7.3, 12.5 and 31 s (a padded last segment, one
    dropped tail, many segments), in microvolt steps, and the same records as a NumPy folder and a
    WFDB folder (fmt 32 at 1000 units per mV: read back exactly) under ``folders``."""
    import wfdb

    rng = np.random.default_rng(9)
    (data / "waves").mkdir(exist_ok=True)
    (folders / "numpy").mkdir(parents=True)
    (folders / "wfdb").mkdir()
    rows, labels, table = [], [], ["record,sample_rate,leads,axis,patient"]
    names = [f"test_{i}" for i in range(4)]
    for i, (name, samples) in enumerate(zip(names, [2450, 3650, 6250, 15500])):
        digital = np.round(rng.standard_normal((12, samples)) * 300 + rng.standard_normal((12, 1)) * 500).astype(np.int32)
        wave = (digital / 1000.0).astype(np.float32)
        np.save(data / "waves" / f"{name}.npy", wave)
        np.save(folders / "numpy" / f"{name}.npy", wave)
        table.append(f'{name}.npy,500,"{",".join(LEADS)}",leads-first,p_{name}')
        wfdb.wrsamp(name, fs=500, units=["mV"] * 12, sig_name=list(LEADS), d_signal=digital.T.copy(), fmt=["32"] * 12,
                    adc_gain=[1000.0] * 12, baseline=[0] * 12, write_dir=str(folders / "wfdb"))
        rows.append(ManifestRow(f"waves/{name}.npy", samples, "1" * 12, f"p_{name}", 500.0, name))
        labels.append(CODE_SETS[i % len(CODE_SETS)])
    (folders / "numpy" / "records.csv").write_text("\n".join(table) + "\n")
    write_manifest(data / "test.tsv", data, rows)
    write_labels(data / "test.tsv", labels)
    return names


def _by_record(names: list[str], keys) -> dict:
    """The test record each key (a record name, a file in a folder) stands for."""
    found = {key: [name for name in names if re.search(rf"\b{name}\b", str(key))] for key in keys}
    assert all(len(hits) == 1 for hits in found.values()), found
    return {key: hits[0] for key, hits in found.items()}


@pytest.mark.parametrize("mode", ["none", "segment", "record"])
def test_validate_predict_and_embed_see_each_record_alike(classify_data, tiny_classifier, tmp_path, mode):
    """One recipe from a checkpoint to model input (issue 21 item 1): for records of odd lengths,
    in each normalisation mode, fairseq-validate's per-record probabilities equal
    fairseq-ecg-predict's from the manifest and from a NumPy and a WFDB folder of the same records,
    and fairseq-ecg-embed's vectors from all three equal the classifier's encoder run on
    ModelInput's segments, one at a time (1e-6, fp32, one thread). A folder is read by the
    preparation's rules, which skip the 4.9 s record."""
    import csv

    from fairseq_ecg.embed import main as embed_main
    from fairseq_ecg.models.loading import load_model
    from fairseq_ecg.predict import main as predict_main
    from fairseq_ecg.metrics.record_results import read_classification_results

    checkpoint = tmp_path / f"classifier_{mode}.pt"
    state = torch.load(tiny_classifier, weights_only=True)
    state["cfg"]["task"]["normalize"] = state["task_state"]["normalize"] = mode  # the same weights, fed as `mode` says
    torch.save(state, checkpoint)
    data = tmp_path / "finetune"
    shutil.copytree(classify_data, data, symlinks=True)
    names = _write_odd_records(data, tmp_path / "folders")
    inputs = {"manifest": data / "test.tsv", "numpy": tmp_path / "folders" / "numpy",
              "wfdb": tmp_path / "folders" / "wfdb"}
    out = tmp_path / "results"
    run_cli("fairseq-validate", str(data), "--user-dir", "fairseq_ecg", "--task", "ecg_classification",
            "--path", str(checkpoint), "--valid-subset", "test", "--batch-size", "3",
            "--per-record-results", str(out), env={"OMP_NUM_THREADS": "1"})
    validated = read_classification_results(out / "test.results.csv")
    assert sorted(validated.records) == names and len(validated.columns) == 26
    want = {record: validated.probs[k] for k, record in enumerate(validated.records)}

    loaded = load_model(checkpoint, "encoder")
    assert loaded.input.normalize == mode
    reference = {}
    with torch.no_grad():
        for name in names:
            segments = loaded.input.segments(np.load(data / "waves" / f"{name}.npy"))
            pooled = [loaded.model.extract_global(segment.unsqueeze(0))["global"][0].double() for segment in segments]
            reference[name] = torch.stack(pooled).mean(0).numpy()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for kind, source in inputs.items():
            layout = ["--layout", kind] if kind != "manifest" else []
            assert predict_main(["--checkpoint", str(checkpoint), str(source), *layout, "--cpu",
                                 "--out", str(tmp_path / f"{kind}.csv")]) == 0, kind
            with open(tmp_path / f"{kind}.csv", newline="") as handle:
                rows = list(csv.DictReader(handle))
            which = _by_record(names, [row["record"] for row in rows])
            # a folder is read by the preparation's rules: a record under 5 s is skipped, said in one line
            expected = names if kind == "manifest" else names[1:]
            assert sorted(which.values()) == expected, kind
            if kind != "manifest":
                skipped = (tmp_path / f"{kind}.skipped.tsv").read_text().splitlines()[1:]
                assert len(skipped) == 1 and "test_0" in skipped[0] and "too short" in skipped[0], skipped
            for row in rows:
                got = np.array([float(row[column]) for column in validated.columns])
                np.testing.assert_allclose(got, want[which[row["record"]]], atol=1e-6, err_msg=f"{kind} {row['record']}")
            vectors = tmp_path / f"{kind}.npy"
            assert embed_main(["--checkpoint", str(checkpoint), str(source), *layout, "--cpu",
                               "--out", str(vectors)]) == 0, kind
            listed = [line.split("\t") for line in vectors.with_suffix(".tsv").read_text().splitlines()[1:]]
            which = _by_record(names, [record for record, *_ in listed])
            assert sorted(which.values()) == expected, kind
            for (record, *_), vector in zip(listed, np.load(vectors)):
                np.testing.assert_allclose(vector, reference[which[record]], atol=1e-6, err_msg=f"{kind} {record}")
    finally:
        torch.set_num_threads(threads)


def test_fairseq_validate_logs_json(classify_data, tiny_classifier):
    """--log-format json printed each batch's log and failed on the scored segments it carries
    ("Object of type ScoredSegments is not JSON serializable"): a batch's log is its segment count."""
    import json

    result = run_cli("fairseq-validate", str(classify_data), "--user-dir", "fairseq_ecg", "--task", "ecg_classification",
                     "--path", str(tiny_classifier), "--valid-subset", "test", "--batch-size", "3",
                     "--log-format", "json", "--log-interval", "1")
    logged = [json.loads(line[line.index("{"):]) for line in (result.stdout + result.stderr).splitlines()
              if "{" in line and '"scored"' in line]
    assert logged and all(int(entry["scored"]) > 0 for entry in logged)  # fairseq writes numbers as text


def test_fairseq_validate_prints_intervals_and_writes_per_record_results(classify_data, tiny_classifier, tmp_path):
    """The test figures come with 95% bootstrap intervals over the test patients, and the per-record
    results file holds exactly what they were computed from (issue 19 item 2)."""
    from fairseq_ecg.metrics.bootstrap import classification_intervals, format_interval
    from fairseq_ecg.labels import scored_labels
    from fairseq_ecg.manifest import read_manifest
    from fairseq_ecg.metrics.classification import classification_metrics
    from fairseq_ecg.metrics.record_results import read_classification_results

    out = tmp_path / "results"
    result = run_cli("fairseq-validate", str(classify_data), "--user-dir", "fairseq_ecg", "--task", "ecg_classification",
                     "--path", str(tiny_classifier), "--valid-subset", "test", "--batch-size", "3",
                     "--per-record-results", str(out), "--bootstrap-resamples", "300", "--bootstrap-seed", "7")
    log = result.stdout + result.stderr
    values = _values(log, "test")
    printed = dict(re.findall(r"([a-z0-9_]+)_ci95 (\[[^]]+\])", [l for l in log.splitlines() if "valid on 'test'" in l][-1]))
    assert set(printed) == {"challenge_metric", "auroc", "f1", "accuracy"}
    saved = read_classification_results(out / "test.results.csv")
    manifest = read_manifest(classify_data / "test.tsv")
    assert sorted(saved.records) == sorted(row.record for row in manifest.rows) and len(saved.columns) == 26
    thresholds = torch.load(tiny_classifier, weights_only=True)["task_state"]["thresholds"]
    table = scored_labels()
    again = classification_metrics(saved.targets, saved.probs, thresholds, table.weights, known=saved.known)
    for name in ("challenge_metric", "auroc", "f1", "accuracy"):
        assert again[name] == pytest.approx(values[name], abs=2e-5), name
    intervals = classification_intervals(saved.targets, saved.probs, thresholds, saved.patients, 300, 7,
                                         table.weights, known=saved.known)
    assert printed == {name: format_interval(intervals.bounds[name]) for name in printed}
    low, high = intervals.bounds["auroc"]
    assert 0 <= low <= high <= 1 and high > low
    assert "95% bootstrap intervals from 300 resamples" in log
    # the subsets that choose the checkpoint get none; 0 resamples turns them off
    result = run_cli("fairseq-validate", str(classify_data), "--user-dir", "fairseq_ecg", "--task", "ecg_classification",
                     "--path", str(tiny_classifier), "--valid-subset", "valid,test", "--batch-size", "3",
                     "--bootstrap-resamples", "0")
    assert "_ci95" not in result.stdout + result.stderr


def test_fairseq_validate_on_other_leads_says_so_in_one_line(classify_data, tiny_classifier, tmp_path):
    """Evaluating a 12-lead model on 6 leads is allowed, with one line saying so; so is embedding."""
    result = run_cli("fairseq-validate", str(classify_data), "--user-dir", "fairseq_ecg", "--task", "ecg_classification",
                     "--path", str(tiny_classifier), "--valid-subset", "test", "--batch-size", "3", "--leads", "6")
    notices = [line for line in (result.stdout + result.stderr).splitlines() if "trained on leads" in line]
    assert len(notices) == 1 and notices[0].endswith(
        "the model was trained on leads I,II,III,aVR,aVL,aVF,V1,V2,V3,V4,V5,V6; this run feeds it I,II,III,aVR,aVL,aVF with zeros for V1,V2,V3,V4,V5,V6 (task.leads / --leads)")
    assert "auroc" in _values(result.stdout + result.stderr, "test")
    result = run_cli("fairseq-ecg-embed", "--checkpoint", str(tiny_classifier), str(classify_data / "test.tsv"),
                     "--out", str(tmp_path / "six.npy"), "--leads", "[I,II,III,aVR,aVL,aVF]")
    assert result.stderr.strip() == ("fairseq-ecg-embed: the model was trained on leads I,II,III,aVR,aVL,aVF,V1,V2,V3,V4,V5,V6; this run feeds it I,II,III,aVR,aVL,aVF with zeros for V1,V2,V3,V4,V5,V6 (--leads)")
    assert (tmp_path / "six.npy").stat().st_mode & 0o777 == 0o666 & ~_umask()  # not mkstemp's 0600
    result = run_cli("fairseq-ecg-embed", "--checkpoint", str(tiny_classifier), str(classify_data / "test.tsv"),
                     "--out", str(tmp_path / "twelve.npy"), "--leads", "12")
    assert result.stderr.strip() == ""


def _umask() -> int:
    import os

    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_finetuning_into_the_folder_of_a_run_with_other_leads_stops(classify_data, tiny_classifier, tiny_pretrained):
    """The new user's case: a 1-lead fine-tuning run started into the folder of a finished 12-lead
    run resumed it (done training in 0.0 seconds, exit 0). Now it stops, naming the setting and the
    ways out, and the folder is left as it was."""
    folder = tiny_classifier.parent
    before = files_written(folder)
    result = run_cli("fairseq-hydra-train", "--config-dir", "examples/finetune", "--config-name", "classification",
                     "+size=tiny", f"task.data={classify_data}", f"model.model_path={tiny_pretrained}",
                     f"checkpoint.save_dir={folder}", "optimization.max_epoch=1", "task.tune_thresholds=true",
                     "task.leads=1", check=False)
    error = one_line_error(result, "holds the checkpoints of a run with other settings")
    assert (f"checkpoint.save_dir={folder} holds the checkpoints of a run with other settings "
            '(task.leads: "12" there, "1" now)') in error
    assert "its own checkpoint.save_dir=" in error and "+resume_anyway=true" in error
    assert files_written(folder) == before


# --- inputs that do not fit -------------------------------------------------------------------

def _one_line(error: BaseException) -> str:
    text = str(error)
    assert "\n" not in text
    return text


def test_classifier_checkpoint_as_model_path_is_refused(classify_data, tiny_classifier):
    with pytest.raises(CheckpointError) as error:
        _task(classify_data).build_model(_model_cfg(model_path=str(tiny_classifier)))
    assert "ecg_wav2vec2_classifier checkpoint, expected ecg_wav2vec2" in _one_line(error.value)


def test_weights_for_other_classes_are_refused(classify_data, tmp_path):
    other = tmp_path / "weights.csv"
    other.write_text(",164889003,426783006\n164889003,1,0.5\n426783006,0.5,1\n")
    task = _task(classify_data, weights_path=str(other))
    with pytest.raises(ValueError) as error:
        task.load_dataset("valid")
    assert re.search(r"must cover the 26 classes of .*classes.tsv.*found 2 \(class 2: expected 164890007, found 426783006\)",
                     _one_line(error.value))
    assert _task(classify_data, weights_path="none").scoring("valid").weights is None


def test_default_weights_are_off_for_other_classes_with_one_notice(tmp_path, caplog):
    """Classes other than the CinC ones (PTB-XL's tasks): no Challenge metric, with one notice for
    the whole run, not an error (before: refused, asking for task.weights_path=none)."""
    for split in ("valid", "test"):
        _write_split(tmp_path, split, [5000], seed=0)
    write_classes(tmp_path, ["164889003", "426783006"])
    task = _task(tmp_path)
    with caplog.at_level("INFO"):
        task.load_dataset("valid")
        task.load_dataset("test")
    notices = [r for r in caplog.records if "no Challenge metric" in r.getMessage()]
    assert len(notices) == 1 and "2 classes that are not the CinC 2021 scored classes" in notices[0].getMessage()
    assert task.scoring("valid").weights is None and task.scoring("test").sinus_index is None


def test_classifier_and_manifest_with_different_classes_are_refused(tmp_path, tiny_classifier):
    _write_split(tmp_path, "test", [5000], seed=0)
    write_classes(tmp_path, ["164889003", "426783006", "713427006|59118001"])
    with pytest.raises(ValueError) as error:
        checkpoint_utils.load_model_ensemble_and_task([str(tiny_classifier)], arg_overrides={"data": str(tmp_path)})
    assert re.search(r"classes.tsv: 3 classes, but the checkpoint's model was trained on 26", _one_line(error.value))


def test_task_data_of_another_task_points_to_finetune(tmp_path):
    for sub in ("pretrain", "finetune"):
        _write_split(tmp_path / sub, "train", [5000], seed=0)
    write_classes(tmp_path / "finetune", SCORED_CLASSES)
    with pytest.raises(ManifestError) as error:
        _task(tmp_path / "pretrain").load_dataset("train")
    assert _one_line(error.value) == (f"task.data={tmp_path / 'pretrain'} has no classes.tsv (pretrain/ is for "
                                      f"ecg_pretraining); use {tmp_path / 'finetune'} for ecg_classification")
    with pytest.raises(ManifestError) as error:
        _task(tmp_path).num_classes
    assert f"is the prepared root; use {tmp_path / 'finetune'} for ecg_classification" in _one_line(error.value)
    assert _task(tmp_path / "finetune").num_classes == len(SCORED_CLASSES)
