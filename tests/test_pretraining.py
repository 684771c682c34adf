"""Pretraining: the model on 12-lead input, random lead masking, the CMSC loss, segment pairs, and
real fairseq-hydra-train runs (every variant, resume after a kill, two CPU workers)."""
import math
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fairseq_ecg.criterions.wav2vec2_cmsc import cmsc_loss
from fairseq_ecg.data import EcgSegmentDataset
from fairseq_ecg.manifest import ManifestRow, read_manifest, write_manifest
from fairseq_ecg.models.ecg_wav2vec2 import EcgWav2Vec2Config, EcgWav2Vec2Model, random_lead_mask

from conftest import BIN, REPO, run_cli, write_random_manifest

VARIANTS = ["w2v", "cmsc", "w2v_cmsc", "w2v_rlm", "cmsc_rlm", "w2v_cmsc_rlm"]


def tiny_model(**overrides) -> EcgWav2Vec2Model:
    cfg = EcgWav2Vec2Config(
        conv_feature_layers="[(32, 2, 2)] * 4", encoder_layers=1, encoder_embed_dim=32,
        encoder_ffn_embed_dim=64, encoder_attention_heads=2, final_dim=16, quantize_targets=True,
        latent_vars=16, num_negatives=5, mask_length=3, mask_prob=0.3, conv_pos=16, conv_pos_groups=4,
        **overrides,
    )
    return EcgWav2Vec2Model(cfg)


def test_model_reads_twelve_leads_and_returns_global_vector():
    model = tiny_model()
    source = torch.randn(3, 12, 800)
    out = model(source)
    assert model.feature_extractor.conv_layers[0][0].in_channels == 12
    assert out["global"].shape == (3, 32)
    logits = model.get_logits(out)
    assert logits.shape[0] == model.get_targets(None, out).shape[0] and logits.shape[1] == 6  # 1 positive + 5 negatives
    unmasked = model.extract_global(source)
    assert unmasked["x"].shape == (3, 800 // 16, 32)
    assert torch.allclose(unmasked["global"], unmasked["x"].mean(dim=1), atol=1e-6)


def test_training_forward_is_repeatable_for_a_seed():
    """Time masks come from torch's seeded generator (fairseq's own draw uses OS entropy), so two
    runs with the same common.seed train the same model."""
    model = tiny_model().train()
    source = torch.randn(3, 12, 800)
    outputs = []
    for _ in range(2):
        torch.manual_seed(7)
        np.random.seed(7)
        outputs.append(model(source)["x"])
    assert torch.equal(outputs[0], outputs[1])


def test_global_vector_ignores_padding():
    model = tiny_model().eval()
    source = torch.randn(1, 12, 800)
    padded = torch.cat([source, torch.zeros(1, 12, 320)], dim=-1)
    padding_mask = torch.zeros(1, 1120, dtype=torch.bool)
    padding_mask[:, 800:] = True
    with torch.no_grad():
        out = model.extract_global(padded, padding_mask)
    frames = out["padding_mask"]
    assert frames is not None and frames.sum() == 320 // 16
    expected = out["x"][0][~frames[0]].mean(dim=0)
    assert torch.allclose(out["global"][0], expected, atol=1e-5)


def test_a_padded_segment_gets_the_outputs_it_gets_alone():
    """The first layer's group norm takes its statistics over a row's own frames: a short record
    batched beside longer ones (zero-padded) is encoded as it is alone, the other rows unchanged,
    and the batch trains (issue 21 item 1: fairseq's norm over the padding moved a 4.9 s record's
    embedding by 0.05)."""
    model = tiny_model().eval()
    short, full = torch.randn(1, 12, 790), torch.randn(1, 12, 1120)
    batch = torch.cat([torch.cat([short, torch.zeros(1, 12, 330)], dim=-1), full])
    padding_mask = torch.zeros(2, 1120, dtype=torch.bool)
    padding_mask[0, 790:] = True
    with torch.no_grad():
        together = model.extract_global(batch, padding_mask)["global"]
        alone = [model.extract_global(x)["global"][0] for x in (short, full)]
    torch.testing.assert_close(together[0], alone[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(together[1], alone[1], atol=1e-5, rtol=0)
    model.train()
    model(batch, padding_mask=padding_mask)["global"].sum().backward()
    assert model.feature_extractor.conv_layers[0][0].weight.grad.abs().sum() > 0
    assert model.feature_extractor.valid_samples is None  # set for the call only


def test_model_rejects_single_channel_input_with_its_shape():
    with pytest.raises(ValueError, match=r"\[batch, leads, time\].*\(2, 800\)"):
        tiny_model()(torch.randn(2, 800))


def test_infonce_logits_equal_fairseqs_with_their_gradients():
    """compute_preds is fairseq's cosine / temperature with -inf where a negative equals its
    target, only computed as one batched dot product: same logits and gradients."""
    from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Model

    model = tiny_model()
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(2, 7, 32, generator=generator, dtype=torch.float64)
    y = torch.randn(2, 7, 32, generator=generator, dtype=torch.float64)
    negatives = torch.randn(5, 2, 7, 32, generator=generator, dtype=torch.float64)
    negatives[2, 1, 3] = y[1, 3]  # a sampled negative that is the target itself
    grads = []
    for compute in (model.compute_preds, lambda *a: Wav2Vec2Model.compute_preds(model, *a)):
        inputs = [t.clone().requires_grad_() for t in (x, y, negatives)]
        logits = compute(*inputs)
        assert logits.shape == (6, 2, 7) and logits[3, 1, 3] == float("-inf")
        finite = torch.isfinite(logits)
        (logits[finite] * torch.linspace(-1, 1, int(finite.sum()), dtype=logits.dtype)).sum().backward()
        grads.append((logits.detach(), [t.grad for t in inputs]))
    (ours, our_grads), (theirs, their_grads) = grads
    assert torch.equal(torch.isfinite(ours), torch.isfinite(theirs))
    assert torch.allclose(ours[torch.isfinite(ours)], theirs[torch.isfinite(theirs)].to(ours.dtype), atol=1e-6)
    for mine, reference in zip(our_grads, their_grads):
        assert torch.allclose(mine.double(), reference.double(), atol=1e-6)


def lead_keep_rate(present: int, prob: float, mode: str, segments: int = 20000, seed: int = 0) -> torch.Tensor:
    """Per-lead keep rate of ``random_lead_mask`` over ``segments`` records with the first ``present``
    leads recorded (the others absent), from a fixed seed."""
    source = torch.zeros(segments, 12, 4)
    source[:, :present] = 1.0
    keep = random_lead_mask(source, prob, torch.Generator().manual_seed(seed), mode=mode).squeeze(-1)
    assert keep[:, present:].sum() == 0  # absent leads stay absent
    return keep[:, :present].double().mean(dim=0)


def redraw_keep_rate(present: int, prob: float) -> float:
    """P(a present lead is kept | not every present lead is silenced) = (1 - p) / (1 - p**n)."""
    return (1 - prob) / (1 - prob ** present)


@pytest.mark.parametrize("present", [12, 6, 3, 2, 1])
def test_independent_lead_masking_keeps_every_lead_with_one_minus_p_whatever_the_lead_count(present):
    """The paper's RLM (the default): a lead is kept with probability 1 - p on a 1-lead record too
    (the redraw kept it always), and 1 lead at p = 0.5 goes silent half the time."""
    for prob in (0.5, 0.25):
        rate = lead_keep_rate(present, prob, "independent")
        # 20,000 draws per lead: a standard error of at most 0.0035, the tolerance is about 4 of them
        assert (rate - (1 - prob)).abs().max() < 0.015, (present, prob, rate.tolist())
    source = torch.zeros(20000, 12, 4)
    source[:, :present] = 1.0
    keep = random_lead_mask(source, 0.5, torch.Generator().manual_seed(1)).squeeze(-1)
    silent = (~keep.any(dim=1)).double().mean().item()
    assert abs(silent - 0.5 ** present) < 0.01  # all-silent segments allowed, as in fairseq-signals


@pytest.mark.parametrize("present", [12, 6, 3, 2, 1])
def test_redraw_silent_lead_masking_keeps_the_conditional_rate(present):
    """The option: at p = 0.5 a lead is kept with 0.500 / 0.508 / 0.571 / 0.667 / 1.0 for 12 / 6 /
    3 / 2 / 1 present leads, and no segment with a present lead goes silent."""
    rate = lead_keep_rate(present, 0.5, "redraw_silent")
    assert (rate - redraw_keep_rate(present, 0.5)).abs().max() < 0.015, (present, rate.tolist())
    source = torch.zeros(2000, 12, 4)
    source[:, :present] = 1.0
    assert random_lead_mask(source, 0.5, mode="redraw_silent").squeeze(-1).any(dim=1).all()


def test_independent_is_the_default_mode_and_a_model_applies_its_mode():
    assert EcgWav2Vec2Config().rlm_mode == "independent"
    source = torch.zeros(400, 12, 800)
    source[:, 0] = torch.randn(400, 800)  # a 1-lead record
    for mode, silent in (("independent", True), ("redraw_silent", False)):
        model = tiny_model(rlm_prob=0.5, rlm_mode=mode).train()
        captured = {}
        hook = model.feature_extractor.register_forward_pre_hook(lambda _m, args: captured.setdefault("x", args[0]))
        torch.manual_seed(0)
        model(source)
        hook.remove()
        assert bool((captured["x"].abs().amax(dim=(1, 2)) == 0).any()) == silent, mode
    with pytest.raises(ValueError, match="redraw_silent"):
        random_lead_mask(source, 0.5, mode="redraw")


def test_random_lead_masking_two_leads_redraw_gives_each_nonempty_subset_a_third():
    # Independent draws at p=0.5 given a non-empty result: {I}, {II}, {I,II} are 1/3 each
    # (a "put one lead back" rescue gives 0.375 / 0.375 / 0.25).
    torch.manual_seed(1)
    source = torch.zeros(60000, 12, 4)
    source[:, :2] = 1.0
    keep = random_lead_mask(source, 0.5, mode="redraw_silent").squeeze(-1)
    assert keep[:, 2:].sum() == 0  # absent leads stay absent
    subsets = keep[:, 0].long() + 2 * keep[:, 1].long()  # 1 = {I}, 2 = {II}, 3 = {I, II}
    frequencies = torch.bincount(subsets, minlength=4).double() / len(subsets)
    assert frequencies[0] == 0
    assert frequencies[1:].sub(1 / 3).abs().max() < 0.01, frequencies.tolist()


@pytest.mark.parametrize("mode", ["independent", "redraw_silent"])
@pytest.mark.parametrize("prob", [0.5, 0.9])
def test_random_lead_masking_twelve_leads_follows_the_binomial(prob, mode):
    """The number of kept leads is Binomial(12, 1 - p); with the redraw, conditioned on at least one."""
    torch.manual_seed(2)
    source = torch.ones(60000, 12, 4)
    keep = random_lead_mask(source, prob, mode=mode).squeeze(-1)
    kept = torch.bincount(keep.sum(dim=1), minlength=13).double() / len(keep)
    q = 1 - prob
    expected = torch.tensor([math.comb(12, k) * q**k * prob ** (12 - k) for k in range(13)], dtype=torch.float64)
    if mode == "redraw_silent":
        expected[0] = 0
    expected /= expected.sum()
    assert (kept - expected).abs().max() < 0.01, (kept.tolist(), expected.tolist())
    per_lead = keep.double().mean(dim=0)  # exchangeable: every lead survives equally often
    assert (per_lead - per_lead.mean()).abs().max() < 0.012, per_lead.tolist()
    if prob == 0.5:
        assert len({tuple(row.tolist()) for row in keep[:200]}) > 150  # each segment its own draw


@pytest.mark.parametrize("mode", ["independent", "redraw_silent"])
def test_random_lead_masking_leaves_absent_leads_and_an_empty_segment_empty(mode):
    source = torch.zeros(500, 12, 8)
    source[:, :2] = 1.0  # a 2-lead record: only I and II present
    keep = random_lead_mask(source, 0.99, mode=mode).squeeze(-1)
    assert keep[:, 2:].sum() == 0
    assert keep.any(dim=1).all() == (mode == "redraw_silent")
    silent = torch.zeros(2, 12, 8)
    assert random_lead_mask(silent, 0.5, mode=mode).sum() == 0  # an empty input stays empty, no NaN
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        random_lead_mask(source, 1.0, mode=mode)


def test_random_lead_masking_only_in_training_and_no_nan():
    model = tiny_model(rlm_prob=0.95)
    source = torch.randn(4, 12, 800)
    model.train()
    assert torch.isfinite(model(source)["global"]).all()
    out = model(torch.zeros(4, 12, 800))  # every segment all silent (independent draws allow it): finite loss inputs
    assert torch.isfinite(out["global"]).all() and torch.isfinite(model.get_logits(out)[0]).all()
    model.eval()
    captured = {}
    hook = model.feature_extractor.register_forward_pre_hook(lambda _m, args: captured.setdefault("x", args[0]))
    model(source)
    hook.remove()
    assert torch.equal(captured["x"], source)


def test_cmsc_loss_is_the_mean_of_both_directions_cross_entropy():
    torch.manual_seed(0)
    first, second = torch.randn(6, 8), torch.randn(6, 8)
    groups = torch.arange(6)
    loss, correct, count = cmsc_loss(first, second, groups, temperature=0.1)
    a, b = F.normalize(first, dim=-1), F.normalize(second, dim=-1)
    similarity = a @ b.t() / 0.1
    expected = (F.cross_entropy(similarity, groups) + F.cross_entropy(similarity.t(), groups)) / 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    by_hand = 0.0  # the same written out: mean over pairs of -log softmax, both directions
    for i in range(6):
        sims_ab = [float(a[i] @ b[j]) / 0.1 for j in range(6)]
        sims_ba = [float(b[i] @ a[j]) / 0.1 for j in range(6)]
        by_hand += -sims_ab[i] + math.log(sum(math.exp(s) for s in sims_ab))
        by_hand += -sims_ba[i] + math.log(sum(math.exp(s) for s in sims_ba))
    assert loss.item() == pytest.approx(by_hand / 6 / 2, rel=1e-5)
    swapped, _, _ = cmsc_loss(second, first, groups, temperature=0.1)
    assert swapped.item() == pytest.approx(loss.item(), rel=1e-6)
    assert count == 12 and 0 <= correct <= 12
    perfect, correct, _ = cmsc_loss(first, first * 3.0, groups, temperature=0.01)
    assert correct == 12 and perfect.item() < 1e-3


def test_cmsc_patient_positives_average_over_each_anchors_positives():
    torch.manual_seed(3)
    first, second = torch.randn(5, 4), torch.randn(5, 4)
    groups = torch.tensor([7, 7, 7, 2, 3])  # pairs 0-2 are one patient
    loss, _, _ = cmsc_loss(first, second, groups, 0.1)
    a, b = F.normalize(first, dim=-1), F.normalize(second, dim=-1)
    positive = groups[:, None] == groups[None, :]
    total = 0.0
    for anchors, candidates in ((a, b), (b, a)):
        log_prob = (anchors @ candidates.t() / 0.1).log_softmax(dim=-1)
        total += sum(-log_prob[i][positive[i]].mean() for i in range(5)) / 5
    assert loss.item() == pytest.approx(float(total) / 2, rel=1e-5)
    first = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    second = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    # Pairs 0 and 1 share a patient: pair 0's first segment finds a positive in pair 1's second.
    _, correct_record, _ = cmsc_loss(first, second, torch.tensor([0, 1, 2]), 0.1)
    _, correct_patient, _ = cmsc_loss(first, second, torch.tensor([7, 7, 2]), 0.1)
    assert correct_patient > correct_record


def cmsc_sample(batch_pairs: int = 4, samples: int = 800) -> dict:
    torch.manual_seed(4)
    return {"id": torch.arange(batch_pairs).repeat_interleave(2),
            "net_input": {"source": torch.randn(2 * batch_pairs, 12, samples)},
            "group": torch.arange(batch_pairs).repeat_interleave(2), "pairs": True}


def test_criterion_adds_the_cmsc_term_at_full_weight():
    """L = L_local + L_CMSC: fairseq divides the criterion's loss by its sample size, so loss /
    sample_size must equal the local loss per sample plus the cross-entropy of the similarity
    matrix averaged over both directions (not half of it)."""
    from fairseq_ecg.criterions.wav2vec2_cmsc import Wav2Vec2CmscCriterion

    model = tiny_model()
    model.eval()  # no dropout: the forward passes below see the same network
    sample = cmsc_sample()
    cmsc_only = Wav2Vec2CmscCriterion(None, w2v_weight=0.0, cmsc_weight=1.0, cmsc_temperature=0.1)
    loss, sample_size, log = cmsc_only(model, sample)
    vectors = F.normalize(model.extract_global(sample["net_input"]["source"])["global"], dim=-1)
    similarity = vectors[0::2] @ vectors[1::2].t() / 0.1
    target = torch.arange(4)
    expected = (F.cross_entropy(similarity, target) + F.cross_entropy(similarity.t(), target)) / 2
    assert sample_size == 8
    assert (loss / sample_size).item() == pytest.approx(expected.item(), rel=1e-4)
    assert log["loss_cmsc"] / sample_size == pytest.approx(expected.item(), rel=1e-4)

    both = Wav2Vec2CmscCriterion(None, loss_weights=[0.1, 10], log_keys=[], w2v_weight=1.0, cmsc_weight=1.0)
    local = Wav2Vec2CmscCriterion(None, loss_weights=[0.1, 10], log_keys=[], w2v_weight=1.0, cmsc_weight=0.0)
    torch.manual_seed(5)
    total, size, log = both(model, sample)
    torch.manual_seed(5)
    local_loss, local_size, _ = local(model, sample)
    assert size == local_size
    assert (total / size).item() == pytest.approx((local_loss / local_size).item() + log["loss_cmsc"] / size, rel=1e-5)


def test_cmsc_refuses_batches_that_are_not_pairs():
    from fairseq_ecg.criterions.wav2vec2_cmsc import Wav2Vec2CmscCriterion

    sample = cmsc_sample()
    sample["pairs"] = False
    with pytest.raises(ValueError, match="pair_windows"):
        Wav2Vec2CmscCriterion(None, w2v_weight=0.0, cmsc_weight=1.0)(tiny_model(), sample)


def ramp_manifest(folder, lengths) -> None:
    """Records whose lead I is the sample index: a segment's first value is where it starts."""
    (folder / "waves").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, length in enumerate(lengths):
        np.save(folder / "waves" / f"r{i}.npy", np.tile(np.arange(length, dtype=np.float32), (12, 1)) + 1000 * i)
        rows.append(ManifestRow(f"waves/r{i}.npy", length, "1" * 12, f"p{i}", 500.0, f"r{i}"))
    write_manifest(folder / "train.tsv", folder, rows)


def test_pairs_are_one_adjacent_window_per_record(tmp_path):
    ramp_manifest(tmp_path, [2300, 900, 1000, 90000])  # 900 is too short for two 500-sample segments
    dataset = EcgSegmentDataset(read_manifest(tmp_path / "train.tsv"), 500, cut="pairs", shuffle=True, seed=3)
    assert len(dataset) == 3  # one item per record that holds a pair, however long it is
    for index in range(len(dataset)):
        first, second = dataset[index]["segments"]
        assert second[0, 0] == first[0, -1] + 1  # adjacent, no overlap
    batch = dataset.collater([dataset[0], dataset[1]])
    assert batch["net_input"]["source"].shape == (4, 12, 500)
    assert batch["group"].tolist() == [0, 0, 2, 2] and batch["pairs"]


def run_epochs(*jobs: dict) -> list:
    """Per job, its epochs' batches (see tests/epoch_batches.py, run as a fresh process)."""
    import json

    result = subprocess.run([sys.executable, str(REPO / "tests" / "epoch_batches.py"), json.dumps(list(jobs))],
                            capture_output=True, text=True, timeout=600, cwd=REPO)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert result.returncode == 0 and lines, result.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


def to_tuples(epochs: list) -> list:
    return [[tuple(tuple(row) for row in batch) for batch in batches] for batches in epochs]


@pytest.mark.parametrize("workers", [0, 2])
def test_crops_windows_and_batches_change_every_epoch(tmp_path, workers):
    ramp_manifest(tmp_path, [20000] * 9)
    job = {"data": str(tmp_path), "epochs": [1, 2, 3], "workers": workers}
    w2v, cmsc, again = run_epochs({**job, "overrides": {"cmsc": False}}, {**job, "overrides": {"cmsc": True}}, job)
    epochs = to_tuples(cmsc)
    assert epochs == to_tuples(w2v)  # W2V-only and CMSC variants see the same segments and batches
    starts = [{item: start for batch in batches for item, start in batch[::2]} for batches in epochs]
    for a, b in ((0, 1), (1, 2), (0, 2)):
        assert all(starts[a][i] != starts[b][i] for i in range(9)), starts  # a new window per record
    compositions = [{frozenset(item for item, _ in batch) for batch in batches} for batches in epochs]
    assert compositions[0] != compositions[1] != compositions[2]  # items meet other items
    assert epochs == to_tuples(again)  # seeded: the same in every run


def test_crop_mode_with_workers_changes_every_epoch(tmp_path):
    ramp_manifest(tmp_path, [20000] * 6)
    (epochs,) = run_epochs({"data": str(tmp_path), "epochs": [1, 2], "workers": 2,
                            "overrides": {"pair_windows": False}})
    starts = [dict(tuple(row) for batch in batches for row in batch) for batches in epochs]
    assert all(starts[0][i] != starts[1][i] for i in range(6))


def test_resumed_mid_epoch_sees_the_remaining_batches_of_the_uninterrupted_run(tmp_path):
    ramp_manifest(tmp_path, [20000] * 9)
    state = {"version": 2, "epoch": 2, "iterations_in_epoch": 2, "shuffle": True}
    job = {"data": str(tmp_path), "epochs": [2], "workers": 2}
    (uninterrupted,), (resumed,) = run_epochs(job, {**job, "state": state})
    assert resumed == uninterrupted[2:] and len(resumed) == 1


def pretraining_task(data, **overrides):
    from omegaconf import OmegaConf

    from fairseq_ecg.tasks.ecg_pretraining import EcgPretrainingConfig, EcgPretrainingTask

    cfg = OmegaConf.structured(EcgPretrainingConfig(data=str(data), seed=1, segment_seconds=0.2, **overrides))
    task = EcgPretrainingTask.setup_task(cfg)
    task.load_dataset("train")
    return task


def test_validation_masks_repeat_and_leave_the_training_stream_alone(tmp_path):
    """Two validations of one batch mask the same frames; validating does not move the random
    stream that training draws its masks from."""
    from fairseq_ecg.criterions.wav2vec2_cmsc import Wav2Vec2CmscCriterion

    ramp_manifest(tmp_path, [3000] * 4)
    task = pretraining_task(tmp_path)
    model = tiny_model()
    criterion = Wav2Vec2CmscCriterion(task, loss_weights=[0.1, 10], log_keys=[], w2v_weight=1.0)
    sample = cmsc_sample(samples=1600)
    masks, apply_mask = [], model.apply_mask

    def recording_apply_mask(*args, **kwargs):
        x, mask_indices = apply_mask(*args, **kwargs)
        masks.append(mask_indices.clone())
        return x, mask_indices

    model.apply_mask = recording_apply_mask
    torch.manual_seed(11)
    _, _, first = task.valid_step(sample, model, criterion)
    after_validation = torch.rand(3)
    _, _, second = task.valid_step(sample, model, criterion)
    torch.manual_seed(11)
    assert torch.equal(torch.rand(3), after_validation)
    assert torch.equal(masks[0], masks[1]) and masks[0].any()
    assert first["loss"] == second["loss"]  # same masks and same distractors


def test_lead_subset_zeroes_other_leads(tmp_path):
    write_random_manifest(tmp_path, "train", 1)
    dataset = EcgSegmentDataset(read_manifest(tmp_path / "train.tsv"), 1000, leads="[I,II,V2]")
    segment = dataset[0]["segments"][0]
    nonzero = segment.abs().sum(dim=-1) > 0
    assert nonzero.tolist() == [True, True] + [False] * 5 + [True] + [False] * 4


def train(data, save_dir, variant="w2v_cmsc_rlm", *extra, **kwargs):
    return run_cli("fairseq-hydra-train", "--config-dir", "examples/pretrain", "--config-name", variant,
                   "+size=tiny", f"task.data={data}", f"checkpoint.save_dir={save_dir}", *extra, **kwargs)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_trains_end_to_end(variant, pretrain_data, tmp_path):
    # one variant also takes a lead list as users write it on the command line (hydra reads a list)
    leads = ["task.leads=[I,II,V2]"] if variant == "w2v_rlm" else []
    result = train(pretrain_data, tmp_path, variant, "optimization.max_epoch=1", *leads)
    log = result.stdout + result.stderr
    assert (tmp_path / "checkpoint_last.pt").is_file()
    assert ("leads ['I', 'II', 'V2'], precision " in log) == bool(leads)  # the configuration's one line
    assert ("loss_cmsc" in log) == ("cmsc" in variant)
    assert ("loss_w2v" in log) == ("w2v" in variant)
    if "cmsc" in variant:
        assert "cmsc_accuracy" in log
    if "w2v" in variant:
        assert "prob_perplexity" in log
    if leads:  # the saved lead list is read back as a list by fairseq-ecg-embed
        from fairseq_ecg import embed

        out = tmp_path / "embedded.npy"
        assert embed.main(["--checkpoint", str(tmp_path / "checkpoint_last.pt"),
                           str(pretrain_data / "valid.tsv"), "--out", str(out)]) == 0
        assert np.load(out).shape[0] == 8


def test_checkpoint_reloads_with_fairseq_after_importing_plugin(tiny_pretrained):
    import fairseq_ecg  # noqa: F401  (registers the plugin)
    from fairseq import checkpoint_utils

    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(tiny_pretrained)])
    assert isinstance(models[0], EcgWav2Vec2Model)
    assert cfg.model.rlm_prob == 0.5 and task.cfg.cmsc


def test_resume_after_kill_continues_from_saved_update(pretrain_data, tmp_path):
    command = [str(BIN / "fairseq-hydra-train"), "--config-dir", "examples/pretrain", "--config-name", "w2v",
               "+size=tiny", f"task.data={pretrain_data}", f"checkpoint.save_dir={tmp_path}",
               "optimization.max_epoch=40"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def saved_updates() -> int:
        # checkpoint_last.pt is renamed into place whole (resume.py), so when it exists it loads
        last = tmp_path / "checkpoint_last.pt"
        return last.exists() and torch.load(last, weights_only=True)["optimizer_history"][-1]["num_updates"]

    deadline = time.monotonic() + 300  # a safety net only: the wait is on the state asserted below
    while saved_updates() < 3 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    assert process.poll() is None, "the run ended before it was killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    saved = saved_updates()
    assert saved >= 3
    result = train(pretrain_data, tmp_path, "w2v", "optimization.max_epoch=42")
    log = result.stdout + result.stderr
    assert f"@ {saved} updates" in log  # "Loaded checkpoint ... (epoch N @ saved updates)"
    final = torch.load(tmp_path / "checkpoint_last.pt", weights_only=True)["optimizer_history"][-1]["num_updates"]
    assert final == 42  # one update per epoch: it went on from the saved update to the end


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_cpu_workers_train_with_negatives_from_both(pretrain_data, tmp_path):
    port = free_port()
    processes = []
    for rank in range(2):
        command = [str(BIN / "fairseq-hydra-train"), "--config-dir", "examples/pretrain",
                   "--config-name", "w2v_cmsc_rlm", "+size=tiny", f"task.data={pretrain_data}",
                   f"checkpoint.save_dir={tmp_path}", "optimization.max_epoch=1", "common.cpu=true",
                   "distributed_training.distributed_world_size=2", f"distributed_training.distributed_rank={rank}",
                   f"distributed_training.distributed_init_method=tcp://127.0.0.1:{port}",
                   "distributed_training.distributed_no_spawn=true", "distributed_training.distributed_backend=gloo",
                   "distributed_training.device_id=0"]
        processes.append(subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=240)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs[1][-2000:]
    assert "distributed init (rank 1)" in outputs[1]
    # 16 training records = 16 pairs split over two workers; the logged CMSC anchors are all 32
    # segments, and each worker's negatives came from both (the loss runs over the gathered batch).
    assert "bsz 32" in outputs[0]
    assert (tmp_path / "checkpoint_last.pt").is_file()


def test_bad_manifest_row_is_named_before_training(tmp_path):
    write_random_manifest(tmp_path, "train", 4)
    write_random_manifest(tmp_path, "valid", 2)
    (tmp_path / "waves" / "train_2.npy").unlink()
    result = train(tmp_path, tmp_path / "ckpt", "w2v", check=False)
    assert result.returncode != 0
    assert f"{tmp_path / 'train.tsv'}:4" in result.stdout + result.stderr
    assert "train_2.npy is missing" in result.stdout + result.stderr


def test_wrong_task_data_is_named_in_one_line(tmp_path):
    from omegaconf import OmegaConf

    from fairseq_ecg.manifest import ManifestError
    from fairseq_ecg.tasks.ecg_pretraining import EcgPretrainingConfig, EcgPretrainingTask

    root = tmp_path / "cinc"
    for sub in ("pretrain", "finetune", "identify"):
        write_random_manifest(root / sub, "train", 1, samples=2500)

    def error_of(data, build=False) -> str:
        task = EcgPretrainingTask(EcgPretrainingConfig(data=str(data)))
        with pytest.raises(ManifestError) as error:
            if build:  # what fairseq-hydra-train does first: before any subset, fairseq lists task.data
                task.build_model(OmegaConf.structured(EcgWav2Vec2Config(_name="ecg_wav2vec2")))
            else:
                task.load_dataset("train")
        assert "\n" not in str(error.value)
        return str(error.value)

    assert error_of(root) == (f"task.data={root} is the prepared root; use {root / 'pretrain'} for ecg_pretraining "
                              f"({root / 'finetune'} for ecg_classification, {root / 'identify'} for ecg_identification)")
    assert error_of(tmp_path / "cnic", build=True).startswith(f"task.data={tmp_path / 'cnic'}: folder not found;")
    assert error_of(root / "pretrain" / "train.tsv").startswith(
        f"task.data={root / 'pretrain' / 'train.tsv'} is a file; it must be the folder that holds the manifests")
