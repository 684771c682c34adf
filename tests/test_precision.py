"""bf16 autocast (``task.precision=bf16``, ``fairseq-ecg-embed --precision bf16``): each task's
fairseq training step runs in bf16 on the CPU with a loss close to fp32's on the same batch and
weights, everything that must stay fp32 does, and checkpoints move freely between precisions."""
import logging
import re

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from fairseq.optim.adam import FairseqAdam, FairseqAdamConfig
from fairseq_ecg import embed
from fairseq_ecg.models import precision
from fairseq_ecg.criterions.arcface import ArcFaceCriterion
from fairseq_ecg.criterions.ecg_bce import EcgBceCriterion
from fairseq_ecg.criterions.wav2vec2_cmsc import Wav2Vec2CmscCriterion
from fairseq_ecg.manifest import write_classes, write_labels
from fairseq_ecg.models.ecg_wav2vec2 import EcgWav2Vec2Config
from fairseq_ecg.tasks.base import EcgTaskConfig
from fairseq_ecg.tasks.ecg_classification import EcgClassificationConfig, EcgClassificationTask
from fairseq_ecg.tasks.ecg_identification import EcgIdentificationTask
from fairseq_ecg.tasks.ecg_pretraining import EcgPretrainingConfig, EcgPretrainingTask

from conftest import run_cli, write_random_manifest

# bf16 keeps 8 significant bits (relative rounding 2^-9 = 0.2 % per value). Measured here on
# these tiny models and batches: losses 0.02 to 0.25 % apart, gradient cosines 0.9994 or more.
# The bounds leave room for other CPUs' kernels; a miscomputed convolution (8 channels per group,
# see the last test) moved the loss by 1.5 to 14 % and the gradient cosine to 0.8.
LOSS_RTOL = 0.01
GRAD_COSINE = 0.99
# 16 channels per group in the positional convolution (32 / conv_pos_groups).
TINY_ENCODER = dict(
    conv_feature_layers="[(32, 2, 2)] * 4", encoder_layers=2, encoder_embed_dim=32, encoder_ffn_embed_dim=64,
    encoder_attention_heads=2, final_dim=16, quantize_targets=True, latent_vars=16, num_negatives=5,
    mask_length=3, mask_prob=0.3, conv_pos=16, conv_pos_groups=2, encoder_layerdrop=0.0,
)


def _optimizer(model) -> FairseqAdam:
    return FairseqAdam(OmegaConf.structured(FairseqAdamConfig(lr=[1e-3], tpu=False)), list(model.parameters()))


def _batch(task, split: str = "train") -> dict:
    task.load_dataset(split)
    dataset = task.datasets[split]
    return dataset.collater([dataset[i] for i in range(min(6, len(dataset)))])


def _step(task, model, criterion, sample, weights: dict, seed: int = 0):
    """One fairseq training step (task.train_step, then the optimizer's step) of ``model`` from
    ``weights``; returns the loss, the gradients, the optimizer and the dtype of a Linear output
    inside the encoder (what autocast made of the matrix multiplies)."""
    model.load_state_dict(weights)
    model.zero_grad(set_to_none=True)
    optimizer = _optimizer(model)
    seen = {}
    linear = next(m.fc1 for m in model.modules() if hasattr(m, "fc1"))  # a transformer layer's feed-forward
    hook = linear.register_forward_hook(lambda _m, _i, out: seen.setdefault("linear", out.dtype) and None)
    torch.manual_seed(seed)  # same masks, negatives, Gumbel noise and dropout in both precisions
    loss, sample_size, log = task.train_step(sample, model, criterion, optimizer, update_num=0)
    hook.remove()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    optimizer.step()
    return float(loss), loss.dtype, grads, optimizer, model, seen["linear"], log


def _compare(make_task, model, criterion, sample):
    """The fp32 and the bf16 step on the same batch and weights."""
    results = {}
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    for name in precision.PRECISIONS:
        results[name] = _step(make_task(name), model, criterion, sample, weights)
    model.load_state_dict(weights)
    (loss32, _, grad32, *_), (loss16, dtype16, grad16, optimizer, stepped, linear16, _) = results["fp32"], results["bf16"]
    assert results["fp32"][5] == torch.float32 and linear16 == torch.bfloat16  # autocast really ran in bf16
    assert loss32 != loss16  # ... and changed the arithmetic
    assert abs(loss16 - loss32) <= LOSS_RTOL * abs(loss32), (loss32, loss16)
    assert dtype16 == torch.float32  # the loss itself is fp32
    cosine = torch.nn.functional.cosine_similarity(grad32, grad16, dim=0)
    assert cosine > GRAD_COSINE, float(cosine)
    # Master weights, gradients and Adam's moments stay fp32.
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in stepped.parameters()
               if p.grad is not None)
    states = [v for s in optimizer.optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.numel() > 1]
    assert states and all(v.dtype == torch.float32 for v in states)
    return loss32, loss16


def test_pretraining_step_w2v_cmsc_rlm(pretrain_data):
    def make_task(name):
        return EcgPretrainingTask(EcgPretrainingConfig(data=str(pretrain_data), cmsc=True, seed=1, precision=name))

    task = make_task("fp32")
    model = task.build_model(OmegaConf.structured(EcgWav2Vec2Config(_name="ecg_wav2vec2", rlm_prob=0.5, **TINY_ENCODER)))
    criterion = Wav2Vec2CmscCriterion(task, loss_weights=[0.1, 10], log_keys=["prob_perplexity"],
                                      w2v_weight=1.0, cmsc_weight=1.0)
    sample = _batch(task)
    _compare(make_task, model, criterion, sample)
    # Validation at bf16 too (its masks and distractors are keyed by the batch): the same loss
    # within the bound.
    valid, logs = _batch(task, "valid"), {}
    for name in precision.PRECISIONS:
        logs[name] = make_task(name).valid_step(valid, model, criterion)[2]
    assert abs(logs["bf16"]["loss"] - logs["fp32"]["loss"]) <= LOSS_RTOL * abs(logs["fp32"]["loss"])


@pytest.fixture(scope="module")
def classify_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("precision_finetune")
    for split, count in (("train", 8), ("valid", 4)):
        write_random_manifest(folder, split, count, seed=len(split))
        write_labels(folder / f"{split}.tsv", [["426783006"], ["164889003"]] * (count // 2))
    write_classes(folder, ["426783006", "164889003"])
    return folder


def _downstream_model(task, name: str, **extra):
    encoder_args = {"_name": "ecg_wav2vec2", **TINY_ENCODER}
    cfg = OmegaConf.create({"_name": name, "init": "random", "encoder_args": encoder_args,
                            "freeze_encoder_updates": 0, "feature_grad_mult": 1.0, **extra})
    return task.build_model(cfg)


def test_classification_step(classify_folder):
    def make_task(name):
        return EcgClassificationTask(EcgClassificationConfig(data=str(classify_folder), seed=1, weights_path="none",
                                                             precision=name))

    task = make_task("fp32")
    model = _downstream_model(task, "ecg_wav2vec2_classifier")
    criterion = EcgBceCriterion(task)
    _compare(make_task, model, criterion, _batch(task))
    # Validation logs fp32 probabilities for the metrics.
    criterion.eval()  # as fairseq's trainer does before validating
    log = make_task("bf16").valid_step(_batch(task, "valid"), model, criterion)[2]
    assert log["scored"].probs.dtype == np.float32


def test_identification_step(tmp_path):
    write_random_manifest(tmp_path, "train", 8, seed=3, patients=4)

    def make_task(name):
        return EcgIdentificationTask(EcgTaskConfig(data=str(tmp_path), seed=1, precision=name))

    task = make_task("fp32")
    model = _downstream_model(task, "ecg_wav2vec2_identifier", embed_dim=16)
    criterion = ArcFaceCriterion(task)
    sample = _batch(task)
    _compare(make_task, model, criterion, sample)
    with precision.autocast_context("bf16", "cpu"):
        output = model(**sample["net_input"])
    assert output["cosine"].dtype == torch.float32 and output["embedding"].dtype == torch.float32


def test_bf16_pretraining_checkpoint_is_fp32_and_validates_in_either_precision(pretrain_data, tmp_path):
    run_cli("fairseq-hydra-train", "--config-dir", "examples/pretrain", "--config-name", "w2v_cmsc_rlm", "+size=tiny",
            f"task.data={pretrain_data}", f"checkpoint.save_dir={tmp_path}", "optimization.max_epoch=1",
            "task.precision=bf16")
    checkpoint = tmp_path / "checkpoint_last.pt"
    state = torch.load(checkpoint, weights_only=True)
    assert state["cfg"]["task"]["precision"] == "bf16"
    floats = [v for v in state["model"].values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float32 for v in floats)
    moments = [v for s in state["last_optimizer_state"]["state"].values() for v in s.values()
               if torch.is_tensor(v) and v.is_floating_point() and v.numel() > 1]
    assert moments and all(v.dtype == torch.float32 for v in moments)
    losses = {}
    for name in precision.PRECISIONS:  # fairseq-validate inherits the saved bf16; --precision overrides it
        result = run_cli("fairseq-validate", str(pretrain_data), "--user-dir", "fairseq_ecg", "--task", "ecg_pretraining",
                         "--path", str(checkpoint), "--valid-subset", "valid", "--batch-size", "4",
                         *(["--precision", name] if name == "fp32" else []))  # bf16: the saved setting
        log = result.stdout + result.stderr
        assert f", precision {name}, model " in log  # the configuration's one line
        losses[name] = float(re.findall(r"valid on 'valid' subset \| loss ([0-9.]+)", log)[-1])
    assert losses["fp32"] > 0 and abs(losses["bf16"] - losses["fp32"]) <= LOSS_RTOL * losses["fp32"] + 0.002, losses


def test_fp32_checkpoint_fine_tunes_in_bf16_and_validates_in_fp32(classify_folder, tiny_pretrained, tmp_path):
    result = run_cli("fairseq-hydra-train", "--config-dir", "examples/finetune", "--config-name", "classification",
                     "+size=tiny", f"task.data={classify_folder}", f"model.model_path={tiny_pretrained}",
                     f"checkpoint.save_dir={tmp_path}", "optimization.max_epoch=1", "task.precision=bf16",
                     "task.weights_path=none", "model.freeze_encoder_updates=0",
                     "checkpoint.best_checkpoint_metric=auroc")
    assert "valid on 'valid' subset" in result.stdout + result.stderr
    result = run_cli("fairseq-validate", str(classify_folder), "--user-dir", "fairseq_ecg", "--task",
                     "ecg_classification", "--path", str(tmp_path / "checkpoint_last.pt"), "--valid-subset", "valid",
                     "--batch-size", "4", "--precision", "fp32")
    log = result.stdout + result.stderr
    assert ", precision fp32, model " in log
    line = [l for l in log.splitlines() if "valid on 'valid' subset" in l][-1]
    assert re.search(r"auroc [0-9.]+", line)


def test_embed_in_bf16_matches_fp32(pretrain_data, tiny_pretrained, tmp_path):
    vectors = {}
    for name in precision.PRECISIONS:
        out = tmp_path / f"{name}.npy"
        assert embed.main(["--checkpoint", str(tiny_pretrained), str(pretrain_data / "valid.tsv"), "--out", str(out),
                           "--precision", name]) == 0
        vectors[name] = np.load(out)
    assert vectors["bf16"].dtype == np.float32 and not np.array_equal(vectors["bf16"], vectors["fp32"])
    a, b = vectors["fp32"], vectors["bf16"]
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.99, cosine


def test_cpu_flags_and_the_one_line_notice(tmp_path, monkeypatch, caplog):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n\nprocessor\t: 1\nflags\t\t: fpu avx512_bf16\n")
    assert precision.cpu_bf16_flags.__wrapped__(str(info)) == ("avx512_bf16",)
    info.write_text("flags\t\t: fpu sse avx2 avx512f\n")
    assert precision.cpu_bf16_flags.__wrapped__(str(info)) == ()
    assert precision.cpu_bf16_flags.__wrapped__(str(tmp_path / "absent")) == ()
    # A CPU without native bf16 (this one may have it: the check is what is replaced): bf16 still
    # works, and says once, in one line, that it will be slow.
    monkeypatch.setattr(precision, "native_bf16", lambda device_type: False)
    monkeypatch.setattr(precision, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="fairseq_ecg.models.precision"):
        for _ in range(2):
            with precision.autocast_context("bf16", "cpu"):
                product = torch.randn(4, 4) @ torch.randn(4, 4)
    assert product.dtype == torch.bfloat16
    notices = [r.getMessage() for r in caplog.records if r.name == "fairseq_ecg.models.precision"]
    assert len(notices) == 1 and "\n" not in notices[0] and "slow" in notices[0] and "fp32" in notices[0]
    with precision.autocast_context("fp32", "cpu"):
        assert (torch.randn(2, 2) @ torch.randn(2, 2)).dtype == torch.float32
    with pytest.raises(ValueError, match="fp32, bf16"):
        precision.autocast_context("fp16", "cpu")


def test_bf16_convolution_check_matches_what_this_torch_computes():
    """torch 2.13's CPU bf16 grouped Conv1d is wrong for 2 to 8 channels per group: a model with
    such a layer is refused in one line (if a later torch computes it right, it is accepted)."""
    x = torch.randn(2, 32, 200)
    conv = torch.nn.Conv1d(32, 32, kernel_size=16, groups=4)
    exact = conv(x)
    with torch.no_grad(), precision.autocast_context("bf16", "cpu"):
        rounded = conv(x).float()
    wrong = float((exact - rounded).abs().mean() / exact.abs().mean()) > 0.05
    model = torch.nn.Sequential(torch.nn.Conv1d(32, 32, kernel_size=16, groups=2), conv)
    if wrong:
        with pytest.raises(ValueError, match=r"^precision=bf16: .*1 \(Conv1d, 8 channels per group.*precision=fp32"):
            precision.check_bf16_convolutions(model)
    else:
        precision.check_bf16_convolutions(model)
    precision.check_bf16_convolutions(torch.nn.Sequential(torch.nn.Conv1d(32, 32, kernel_size=16, groups=2)))
