"""Patient identification: the ArcFace margin, the gallery/probe metrics, the task's splits, a tiny
fine-tuning run validated by fairseq itself, and fairseq-ecg-embed."""
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import one_line_error, run_cli
from fairseq import metrics
from fairseq.logging import meters as fairseq_meters
from fairseq_ecg import embed
from fairseq_ecg.criterions.arcface import ArcFaceCriterion, arcface_logits
from fairseq_ecg.metrics.meters import EmbeddedSegments
from fairseq_ecg.metrics.identification import equal_error_rate, identification_metrics, record_embeddings
from fairseq_ecg.manifest import ManifestError, ManifestRow, write_manifest
from fairseq_ecg.tasks.base import EcgTaskConfig
from fairseq_ecg.tasks.ecg_identification import EcgIdentificationTask, GalleryProbeDataset

SAMPLES = 5000  # 10 s at 500 Hz: two 5 s segments per record


def _template(patient: int) -> np.ndarray:
    """A patient's own 12-lead waveform: per lead a sinusoid with its own frequency, phase, amplitude."""
    rng = np.random.default_rng(1000 + patient)
    t = np.arange(SAMPLES) / 500.0
    freq, phase, amp = rng.uniform(1, 8, (12, 1)), rng.uniform(0, 2 * np.pi, (12, 1)), rng.uniform(0.5, 1.5, (12, 1))
    return amp * np.sin(2 * np.pi * freq * t + phase)


def _write_split(folder: Path, split: str, records: list, seed: int) -> None:
    rng = np.random.default_rng(seed)
    (folder / "waves").mkdir(parents=True, exist_ok=True)
    rows = []
    for patient, number in records:
        name = f"{split}_p{patient}_{number}"
        wave = (_template(patient) + 0.2 * rng.standard_normal((12, SAMPLES))).astype(np.float32)
        np.save(folder / "waves" / f"{name}.npy", wave)
        rows.append(ManifestRow(f"waves/{name}.npy", SAMPLES, "1" * 12, f"p{patient}", 500.0, name))
    write_manifest(folder / f"{split}.tsv", folder, rows)


@pytest.fixture(scope="module")
def identify_data(tmp_path_factory) -> Path:
    """6 training patients x 3 records; 4 valid and 3 test patients (others) with one gallery and one
    probe record each."""
    folder = tmp_path_factory.mktemp("identify")
    _write_split(folder, "train", [(p, r) for p in range(6) for r in range(3)], seed=1)
    _write_split(folder, "valid_gallery", [(p, 0) for p in range(6, 10)], seed=2)
    _write_split(folder, "valid_probe", [(p, 1) for p in range(6, 10)], seed=3)
    _write_split(folder, "test_gallery", [(p, 0) for p in range(10, 13)], seed=4)
    _write_split(folder, "test_probe", [(p, 1) for p in range(10, 13)], seed=5)
    return folder


# --- ArcFace ----------------------------------------------------------------------------------

def test_arcface_adds_the_margin_to_the_true_patients_angle_only():
    cosine = torch.tensor([[math.cos(math.pi / 3), 0.2], [0.5, math.cos(math.pi / 4)]])
    logits = arcface_logits(cosine, torch.tensor([0, 1]), scale=2.0, margin=math.pi / 6)
    expected = torch.tensor([[2 * math.cos(math.pi / 2), 0.4], [1.0, 2 * math.cos(math.pi / 4 + math.pi / 6)]])
    assert torch.allclose(logits, expected, atol=1e-6)
    assert torch.allclose(arcface_logits(cosine, torch.tensor([0, 1]), 3.0, 0.0), 3 * cosine)
    # theta + m beyond pi: the logit keeps falling (cos theta - m sin m) instead of rising again
    far = arcface_logits(torch.tensor([[-0.99, 0.0]]), torch.tensor([0]), 1.0, 0.5)
    assert far[0, 0].item() == pytest.approx(-0.99 - 0.5 * math.sin(0.5))


def test_arcface_criterion_loss_is_cross_entropy_of_the_margin_logits():
    cosine = torch.tensor([[0.9, 0.1, -0.2], [0.3, 0.6, 0.0]])
    target = torch.tensor([0, 2])
    criterion = ArcFaceCriterion(None, scale=30.0, margin=0.3)
    loss, size, log = criterion(lambda **_: {"cosine": cosine}, {"net_input": {}, "target": target})
    expected = F.cross_entropy(arcface_logits(cosine, target, 30.0, 0.3), target, reduction="sum")
    assert loss.item() == pytest.approx(expected.item())
    assert (size, log["correct"], log["count"]) == (2, 1, 2)


# --- gallery/probe metrics --------------------------------------------------------------------

def test_equal_error_rate_on_a_hand_case():
    # same-patient scores 0.9, 0.4; different-patient 0.5, 0.1: at threshold 0.45 one of each is wrong
    assert equal_error_rate(np.array([1, 1, 0, 0]), np.array([0.9, 0.4, 0.5, 0.1])) == pytest.approx(0.5)
    assert equal_error_rate(np.array([1, 0]), np.array([0.9, 0.1])) == 0.0
    assert math.isnan(equal_error_rate(np.array([1, 1]), np.array([0.9, 0.1])))


def _segments(ids, rows, probe, patients, vectors) -> EmbeddedSegments:
    vectors = np.asarray(vectors, dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return EmbeddedSegments(np.asarray(ids), np.asarray(rows), np.asarray(probe, bool), np.asarray(patients), vectors)


def _known_subset() -> list:
    """4 held-out patients, gallery = one unit vector each; each probe record has two segments that
    alone point closer to another patient (e_k +- 1.1 e_j), while their mean is e_k exactly: only
    whole-record averaging identifies them. Split over three batches, a record across two."""
    eye = np.eye(8)
    gallery = [eye[k] for k in range(4)]
    probe_segments = [v for k in range(4) for v in (eye[k] + 1.1 * eye[(k + 1) % 4], eye[k] - 1.1 * eye[(k + 1) % 4])]
    ids = np.arange(12)
    rows = [0, 1, 2, 3] + [4, 4, 5, 5, 6, 6, 7, 7]
    probe = [False] * 4 + [True] * 8
    patients = [0, 1, 2, 3] + [0, 0, 1, 1, 2, 2, 3, 3]
    vectors = gallery + probe_segments
    cuts = [(0, 5), (5, 9), (9, 12)]
    return [_segments(ids[a:b], rows[a:b], probe[a:b], patients[a:b], vectors[a:b]) for a, b in cuts]


def test_identification_metrics_average_segments_per_record():
    batches = _known_subset()
    assert identification_metrics(*record_embeddings(batches)) == (1.0, 0.0)
    # Without per-record averaging, the same probes would be matched wrongly half of the time.
    single = [EmbeddedSegments(b.ids, b.ids, b.probe, b.patients, b.embeddings) for b in batches]
    top1, eer = identification_metrics(*record_embeddings(single))
    assert top1 == 0.5 and eer > 0


def _reduce(log_batches: list, per_batch: bool) -> dict:
    """Reduce like fairseq-validate (all logs at once) or like the trainer (one reduce per batch
    into an enclosing aggregator)."""
    logs = [{"ntokens": len(b), "nsentences": len(b), "sample_size": len(b), "identification": b} for b in log_batches]
    with metrics.aggregate(new_root=True) as agg:
        if per_batch:
            for log in logs:
                with metrics.aggregate():
                    ArcFaceCriterion.reduce_metrics([log])
        else:
            ArcFaceCriterion.reduce_metrics(logs)
        return agg.get_smoothed_values()


@pytest.mark.parametrize("per_batch", [False, True])
def test_metrics_cover_the_whole_subset_in_both_fairseq_paths(per_batch):
    values = _reduce(_known_subset(), per_batch)
    assert (values["top1_accuracy"], values["eer"], values["loss"]) == (1.0, 0.0, 0.0)


def test_a_second_pass_replaces_the_first_in_a_long_lived_aggregator():
    swapped = [EmbeddedSegments(b.ids, b.rows, b.probe, np.where(b.probe, (b.patients + 1) % 4, b.patients), b.embeddings)
               for b in _known_subset()]
    with metrics.aggregate(new_root=True) as agg:
        for batch in _known_subset() + swapped:  # two validation passes over the same items
            ArcFaceCriterion.reduce_metrics([{"sample_size": len(batch), "identification": batch}])
        assert agg.get_smoothed_values()["top1_accuracy"] == 0.0
        assert len(agg["_identification"].parts) == 3
        saved = agg.state_dict()  # what a mid-epoch checkpoint holds; resuming rebuilds it by class name
    restored = fairseq_meters.MetersDict()
    restored.load_state_dict(saved)
    assert restored["_identification"].parts == []


# --- the task ---------------------------------------------------------------------------------

def test_task_splits(identify_data):
    task = EcgIdentificationTask(EcgTaskConfig(data=str(identify_data), seed=1))
    assert task.num_patients == 6 and task.patients == [f"p{k}" for k in range(6)]
    task.load_dataset("train")
    batch = task.dataset("train").collater([task.dataset("train")[i] for i in (0, 17)])
    assert batch["target"].tolist() == [0, 5] and batch["net_input"]["source"].shape == (2, 12, 2500)
    task.load_dataset("valid")
    valid = task.dataset("valid")
    assert isinstance(valid, GalleryProbeDataset) and len(valid) == 16  # 8 records x 2 segments
    batch = valid.collater([valid[i] for i in range(len(valid))])
    assert batch["probe"].tolist() == [False] * 8 + [True] * 8
    assert batch["target"].tolist() == [0, 0, 1, 1, 2, 2, 3, 3] * 2
    # fairseq drops a last batch that is not a multiple of 8; evaluation must see every segment
    batches = task.get_batch_iterator(valid, max_sentences=3, required_batch_size_multiple=8).next_epoch_itr(shuffle=False)
    assert sum(len(b["id"]) for b in batches) == 16
    with pytest.raises(ManifestError, match=r"not a training patient.*subset name without the suffix \(valid\)"):
        task.load_dataset("valid_probe")
    task.load_dataset("test")
    test = task.dataset("test")
    assert isinstance(test, GalleryProbeDataset) and len(test) == 12  # 6 records x 2 segments
    assert {r.patient for r in test.manifest.rows} == {"p10", "p11", "p12"}


def test_a_folder_prepared_before_the_test_split_says_how_to_re_prepare(identify_data, tmp_path):
    old = tmp_path / "identify"
    old.mkdir()
    for name in ("train", "valid_gallery", "valid_probe"):
        shutil.copy(identify_data / f"{name}.tsv", old)
    task = EcgIdentificationTask(EcgTaskConfig(data=str(old), seed=1))
    task.load_dataset("valid")  # still reads what older preparations wrote
    with pytest.raises(ManifestError, match=r"test_gallery.tsv not found.*re-run the same fairseq-ecg-manifest"):
        task.load_dataset("test")


def test_a_valid_split_of_one_patient_says_it_cannot_rank_checkpoints(identify_data, tmp_path, caplog):
    small = tmp_path / "identify"
    small.mkdir()
    for name in ("train", "valid_gallery", "valid_probe"):
        shutil.copy(identify_data / f"{name}.tsv", small)
    for name in ("valid_gallery", "valid_probe"):  # keep the header and the first patient's record
        lines = (small / f"{name}.tsv").read_text().splitlines(keepends=True)
        (small / f"{name}.tsv").write_text("".join(lines[:2]))
    (small / "waves").symlink_to(identify_data / "waves")
    task = EcgIdentificationTask(EcgTaskConfig(data=str(small), seed=1))
    with caplog.at_level("WARNING"):
        task.load_dataset("valid")
        task.load_dataset("train")
    warnings = [r.getMessage() for r in caplog.records if "impostor" in r.getMessage()]
    assert len(warnings) == 1 and "eer is nan" in warnings[0] and "dataset.disable_validation=true" in warnings[0]
    caplog.clear()
    with caplog.at_level("WARNING"):
        EcgIdentificationTask(EcgTaskConfig(data=str(identify_data), seed=1)).load_dataset("valid")
    assert not [r for r in caplog.records if "impostor" in r.getMessage()]


# --- end to end: fairseq-hydra-train, fairseq-validate, fairseq-ecg-embed ---------------------

def _values(text: str, subset: str) -> dict:
    line = [l for l in text.splitlines() if f"valid on '{subset}' subset" in l and "top1_accuracy" in l][-1]
    return {k: float(v) for k, v in re.findall(r"(top1_accuracy|eer) ([0-9.e-]+|nan)", line)}


@pytest.fixture(scope="module")
def tiny_identifier(identify_data, tiny_pretrained, tmp_path_factory) -> Path:
    """A one-epoch tiny identification fine-tuning run from a copy of the pretraining checkpoint,
    which is deleted afterwards: the identifier checkpoint must stand on its own."""
    work = tmp_path_factory.mktemp("ckpt_identify")
    pretrained = shutil.copy(tiny_pretrained, work / "pretrained.pt")
    result = run_cli("fairseq-hydra-train", "--config-dir", "examples/finetune", "--config-name", "identification",
                     "+size=tiny", f"task.data={identify_data}", f"model.model_path={pretrained}",
                     f"checkpoint.save_dir={work}", "optimization.max_epoch=1")
    values = _values(result.stdout + result.stderr, "valid")
    assert 0.0 <= values["top1_accuracy"] <= 1.0 and 0.0 <= values["eer"] <= 1.0
    Path(pretrained).unlink()
    return work / "checkpoint_best.pt"


@pytest.mark.parametrize("size", ["reference", "tiny"])
def test_identification_trains_with_the_references_arcface_and_schedule(identify_data, tiny_pretrained, tmp_path,
                                                                        size):
    """identification.yaml: fairseq-signals' identification settings (ArcFace s=192, m=1.0, lr 3e-5,
    tri_stage 0.1/0.2/0.7 of max_update, Adam eps 1e-8, no weight decay); +size=tiny keeps ArcFace's
    settings and switches to a constant rate. Read from what the real run saved."""
    tiny = ["+size=tiny"] if size == "tiny" else []
    run_cli("fairseq-hydra-train", "--config-dir", "examples/finetune", "--config-name", "identification", *tiny,
            f"task.data={identify_data}", f"model.model_path={tiny_pretrained}", f"checkpoint.save_dir={tmp_path}",
            "optimization.max_update=4", "dataset.batch_size=8", "dataset.num_workers=0",
            "dataset.disable_validation=true")
    cfg = torch.load(tmp_path / "checkpoint_last.pt", weights_only=True)["cfg"]
    assert (cfg["criterion"]["scale"], cfg["criterion"]["margin"]) == (192.0, 1.0)
    if size == "reference":
        assert cfg["lr_scheduler"]["_name"] == "tri_stage"
        assert list(cfg["lr_scheduler"]["phase_ratio"]) == [0.1, 0.2, 0.7]
        assert (cfg["lr_scheduler"]["init_lr_scale"], cfg["lr_scheduler"]["final_lr_scale"]) == (0.01, 0.01)
        assert list(cfg["optimization"]["lr"]) == [3e-5]
        assert (cfg["optimizer"]["adam_eps"], cfg["optimizer"]["weight_decay"]) == (1e-8, 0.0)
    else:
        assert cfg["lr_scheduler"]["_name"] == "fixed" and list(cfg["optimization"]["lr"]) == [1e-3]


def test_a_tri_stage_schedule_without_max_update_stops_in_one_line(identify_data, tiny_pretrained, tmp_path):
    """tri_stage's phases are fractions of max_update: an epoch-only run would end in fairseq's bare
    AssertionError after the model is built; the plugin names the setting and the way out first."""
    result = run_cli("fairseq-hydra-train", "--config-dir", "examples/finetune", "--config-name", "identification",
                     f"task.data={identify_data}", f"model.model_path={tiny_pretrained}",
                     f"checkpoint.save_dir={tmp_path}", "optimization.max_update=0", "optimization.max_epoch=1",
                     check=False)
    assert "schedule=fixed" in one_line_error(result, "needs optimization.max_update > 0")
    assert not (tmp_path / "checkpoint_last.pt").exists()


def test_train_then_fairseq_validate(identify_data, tiny_identifier):
    state = torch.load(tiny_identifier, weights_only=True)
    assert state["cfg"]["model"]["num_patients"] == 6 and state["cfg"]["model"]["encoder_args"]
    result = run_cli("fairseq-validate", str(identify_data), "--user-dir", "fairseq_ecg", "--task",
                     "ecg_identification", "--path", str(tiny_identifier), "--valid-subset", "test", "--batch-size", "3")
    values = _values(result.stdout + result.stderr, "test")
    # The templates differ per patient far more than the noise: even a one-epoch model tells them apart.
    assert values["top1_accuracy"] >= 0.5 and 0.0 <= values["eer"] <= 0.5


def test_fairseq_validate_prints_intervals_over_probe_patients(identify_data, tiny_identifier, tmp_path):
    """Top-1 and EER of the test patients come with bootstrap intervals over the probe patients (the
    gallery fixed), reproducible from the per-record results (issue 19 item 2)."""
    from fairseq_ecg.metrics.bootstrap import format_interval, identification_intervals
    from fairseq_ecg.metrics.identification import identification_metrics
    from fairseq_ecg.metrics.record_results import read_identification_results

    out = tmp_path / "results"
    result = run_cli("fairseq-validate", str(identify_data), "--user-dir", "fairseq_ecg", "--task",
                     "ecg_identification", "--path", str(tiny_identifier), "--valid-subset", "test", "--batch-size", "3",
                     "--per-record-results", str(out), "--bootstrap-resamples", "200")
    log = result.stdout + result.stderr
    line = [l for l in log.splitlines() if "valid on 'test'" in l][-1]
    printed = dict(re.findall(r"(top1_accuracy|eer)_ci95 (\[[^]]+\])", line))
    saved = read_identification_results(out, "test")
    assert saved.probe.sum() == 3 and (~saved.probe).sum() == 3  # test_gallery.tsv + test_probe.tsv
    top1, eer = identification_metrics(saved.embeddings, saved.probe, np.array(saved.patients))
    assert _values(log, "test") == pytest.approx({"top1_accuracy": top1, "eer": eer}, abs=2e-5)
    intervals = identification_intervals(saved.embeddings, saved.probe, np.array(saved.patients), 200, 0)
    assert printed == {name: format_interval(intervals.bounds[name]) for name in ("top1_accuracy", "eer")}


def test_embed_a_manifest(identify_data, tiny_identifier, tiny_pretrained, tmp_path):
    out = tmp_path / "probe.npy"
    run_cli("fairseq-ecg-embed", "--checkpoint", str(tiny_identifier), str(identify_data / "valid_probe.tsv"),
            "--out", str(out), "--leads", "6", "--batch-size", "3")
    vectors = np.load(out)
    assert vectors.shape == (4, 64) and vectors.dtype == np.float32 and np.isfinite(vectors).all()
    lines = out.with_suffix(".tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["record", "patient", "source", "segments"]
    assert [l.split("\t")[1] for l in lines[1:]] == ["p6", "p7", "p8", "p9"]
    assert all(l.endswith("\t2") for l in lines[1:])
    # A pretraining checkpoint gives embeddings of the same kind, in-process this time.
    assert embed.main(["--checkpoint", str(tiny_pretrained), str(identify_data / "train.tsv"), "--out",
                       str(tmp_path / "train.npy")]) == 0
    assert np.load(tmp_path / "train.npy").shape == (18, 64)


def test_embed_refuses_what_is_not_a_checkpoint(identify_data, tiny_identifier, tmp_path, capsys):
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(tiny_identifier.read_bytes()[:4000])
    result = run_cli("fairseq-ecg-embed", "--checkpoint", str(truncated), str(identify_data / "valid_probe.tsv"),
                     "--out", str(tmp_path / "x.npy"), check=False)
    errors = [l for l in result.stderr.splitlines() if "tensorboardX" not in l]  # fairseq's import-time notice
    assert result.returncode == 2 and len(errors) == 1 and errors[0].startswith("fairseq-ecg-embed: error:")
    np.save(tmp_path / "array.npy", np.zeros(3))
    for wrong in (identify_data / "train.tsv", tmp_path / "array.npy", tmp_path / "missing.pt"):
        capsys.readouterr()
        assert embed.main(["--checkpoint", str(wrong), str(identify_data / "valid_probe.tsv"),
                           "--out", str(tmp_path / "x.npy")]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and err.startswith(f"fairseq-ecg-embed: error: {wrong}")
    assert not (tmp_path / "x.npy").exists()


def test_empty_training_manifest_says_why(tmp_path):
    write_manifest(tmp_path / "train.tsv", tmp_path, [])  # a PhysioNet/CinC 2021 preparation: no patient ids
    task = EcgIdentificationTask(EcgTaskConfig(data=str(tmp_path), seed=1))
    for call in (lambda: task.num_patients, lambda: task.load_dataset("train")):
        with pytest.raises(ManifestError) as error:
            call()
        text = str(error.value)
        assert "\n" not in text and text.startswith(f"{tmp_path / 'train.tsv'}: no records; identification trains "
                                                    "on patients with >= 2 records")
        assert "--layout ptbxl" in text and "--labels CSV (columns record,patient)" in text
