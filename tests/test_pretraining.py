"""Pretraining: the model on 12-lead input, random lead masking, the CMSC loss, segment pairs, and
real fairseq-hydra-train runs (every variant, resume after a kill, two CPU workers)."""
import math
import signal
import socket
import subprocess
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


def test_model_rejects_single_channel_input_with_its_shape():
    with pytest.raises(ValueError, match=r"\[batch, leads, time\].*\(2, 800\)"):
        tiny_model()(torch.randn(2, 800))


def test_random_lead_masking_honours_probability_per_segment():
    torch.manual_seed(0)
    source = torch.randn(4000, 12, 4) + 5.0
    keep = random_lead_mask(source, 0.5).squeeze(-1)
    # P(kept) = 0.5 plus the rescue of an all-masked segment (0.5**12 / 12 per lead): about 0.5.
    assert abs(keep.float().mean().item() - 0.5) < 0.02
    assert keep.any(dim=1).all()  # no segment ever loses every lead
    assert len({tuple(row.tolist()) for row in keep[:200]}) > 150  # each segment its own draw


def test_random_lead_masking_leaves_absent_leads_and_never_silences_a_segment():
    source = torch.zeros(500, 12, 8)
    source[:, :2] = 1.0  # a 2-lead record: only I and II present
    keep = random_lead_mask(source, 1.0).squeeze(-1)
    assert keep[:, 2:].sum() == 0
    assert (keep[:, :2].sum(dim=1) == 1).all()  # p=1 would silence all: exactly one lead rescued
    silent = torch.zeros(2, 12, 8)
    assert random_lead_mask(silent, 0.5).sum() == 0  # an empty input stays empty, no NaN


def test_random_lead_masking_only_in_training_and_no_nan():
    model = tiny_model(rlm_prob=1.0)
    source = torch.randn(4, 12, 800)
    model.train()
    assert torch.isfinite(model(source)["global"]).all()
    model.eval()
    captured = {}
    hook = model.feature_extractor.register_forward_pre_hook(lambda _m, args: captured.setdefault("x", args[0]))
    model(source)
    hook.remove()
    assert torch.equal(captured["x"], source)


def test_cmsc_loss_matches_hand_computation_and_is_symmetric():
    torch.manual_seed(0)
    first, second = torch.randn(4, 8), torch.randn(4, 8)
    groups = torch.arange(4)
    loss, correct, count = cmsc_loss(first, second, groups, temperature=0.1)
    a, b = F.normalize(first, dim=-1), F.normalize(second, dim=-1)
    by_hand = 0.0
    for i in range(4):
        sims_ab = [float(a[i] @ b[j]) / 0.1 for j in range(4)]
        sims_ba = [float(b[i] @ a[j]) / 0.1 for j in range(4)]
        by_hand += -sims_ab[i] + math.log(sum(math.exp(s) for s in sims_ab))
        by_hand += -sims_ba[i] + math.log(sum(math.exp(s) for s in sims_ba))
    assert loss.item() == pytest.approx(by_hand / 2, rel=1e-5)
    swapped, _, _ = cmsc_loss(second, first, groups, temperature=0.1)
    assert swapped.item() == pytest.approx(loss.item(), rel=1e-6)
    assert count == 8 and 0 <= correct <= 8
    perfect, correct, _ = cmsc_loss(first, first * 3.0, groups, temperature=0.01)
    assert correct == 8 and perfect.item() < 1e-3


def test_cmsc_patient_positives_count_every_segment_of_the_patient():
    first = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    second = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    # Pairs 0 and 1 share a patient: pair 0's first segment finds a positive in pair 1's second.
    _, correct_record, _ = cmsc_loss(first, second, torch.tensor([0, 1, 2]), 0.1)
    _, correct_patient, _ = cmsc_loss(first, second, torch.tensor([7, 7, 2]), 0.1)
    assert correct_patient > correct_record


def test_pairs_are_adjacent_and_non_overlapping(tmp_path):
    (tmp_path / "waves").mkdir()
    ramp = np.tile(np.arange(2300, dtype=np.float32), (12, 1))  # 4.6 s at 500 Hz -> 2 pairs of 500
    np.save(tmp_path / "waves" / "r.npy", ramp)
    write_manifest(tmp_path / "train.tsv", tmp_path, [ManifestRow("waves/r.npy", 2300)])
    dataset = EcgSegmentDataset(read_manifest(tmp_path / "train.tsv"), 500, cut="pairs", shuffle=True, seed=3)
    assert len(dataset) == 2
    starts = []
    for index in range(len(dataset)):
        first, second = dataset[index]["segments"]
        assert second[0, 0] == first[0, -1] + 1  # adjacent, no overlap
        starts += [int(first[0, 0]), int(second[0, 0])]
    assert starts == sorted(starts) and len(set(starts)) == 4 and starts[-1] + 500 <= 2300
    batch = dataset.collater([dataset[0], dataset[1]])
    assert batch["net_input"]["source"].shape == (4, 12, 500)
    assert batch["group"].tolist() == [0, 0, 0, 0]


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
    assert ("'leads': ['I', 'II', 'V2']" in log) == bool(leads)
    assert ("loss_cmsc" in log) == ("cmsc" in variant)
    assert ("loss_w2v" in log) == ("w2v" in variant)
    if "cmsc" in variant:
        assert "cmsc_accuracy" in log
    if "w2v" in variant:
        assert "prob_perplexity" in log


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
    deadline = time.monotonic() + 120
    while not (tmp_path / "checkpoint3.pt").exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    saved = torch.load(tmp_path / "checkpoint_last.pt", weights_only=True)["optimizer_history"][-1]["num_updates"]
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
