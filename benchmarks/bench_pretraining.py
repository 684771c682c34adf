"""Training throughput of the plugin against fairseq's own wav2vec 2.0, in one run.

(a) ecg_wav2vec2 with W2V+CMSC+RLM, (b) ecg_wav2vec2 with W2V alone, (c) fairseq's Wav2Vec2Model with
the same dimensions on 1-channel input of the same length; each a full training step (forward,
loss, backward, Adam). Rounds are interleaved so that machine noise hits all three alike; the
figures that matter are the ratios a/c and b/c. Also: the data loader's samples/s alone.

    python benchmarks/bench_pretraining.py [--sizes small,base] [--rounds 5] [--device cpu|cuda]
"""
import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import fairseq_ecg  # noqa: F401
from fairseq.criterions.wav2vec_criterion import Wav2vecCriterion
from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model
from fairseq_ecg.criterions.wav2vec2_cmsc import Wav2Vec2CmscCriterion
from fairseq_ecg.data import EcgSegmentDataset
from fairseq_ecg.manifest import ManifestRow, read_manifest, write_manifest
from fairseq_ecg.models.ecg_wav2vec2 import EcgWav2Vec2Config, EcgWav2Vec2Model

SAMPLES = 2500  # 5 s at 500 Hz
SIZES = {
    "small": dict(encoder_layers=4, encoder_embed_dim=256, encoder_ffn_embed_dim=1024, encoder_attention_heads=4),
    "base": dict(encoder_layers=12, encoder_embed_dim=768, encoder_ffn_embed_dim=3072, encoder_attention_heads=12),
}
COMMON = dict(conv_feature_layers="[(256, 2, 2)] * 4", final_dim=256, quantize_targets=True, latent_vars=320,
              latent_groups=2, num_negatives=100, feature_grad_mult=0.1, mask_prob=0.65, mask_length=10,
              encoder_layerdrop=0.0)
LOSS = dict(infonce=True, loss_weights=[0.1, 10], log_keys=["prob_perplexity", "code_perplexity", "temp"])


def make_runs(size: str, batch: int, device: str):
    dims = {**COMMON, **SIZES[size]}
    pairs = torch.randn(batch, 12, SAMPLES, device=device)
    runs = {
        "a plugin W2V+CMSC+RLM": (EcgWav2Vec2Model(EcgWav2Vec2Config(**dims, rlm_prob=0.5)),
                                  Wav2Vec2CmscCriterion(None, **LOSS, w2v_weight=1.0, cmsc_weight=1.0),
                                  {"id": torch.arange(batch), "group": torch.arange(batch) // 2, "pairs": True,
                                   "net_input": {"source": pairs}}),
        "b plugin W2V": (EcgWav2Vec2Model(EcgWav2Vec2Config(**dims)), Wav2Vec2CmscCriterion(None, **LOSS),
                         {"id": torch.arange(batch), "net_input": {"source": pairs}}),
        "c fairseq wav2vec 2.0 (1 channel)": (Wav2Vec2Model(Wav2Vec2Config(**dims)), Wav2vecCriterion(None, **LOSS),
                                              {"id": torch.arange(batch),
                                               "net_input": {"source": torch.randn(batch, SAMPLES, device=device)}}),
    }
    for model, _, _ in runs.values():
        model.to(device).train()
    return runs


def step(model, criterion, optimizer, sample) -> None:
    optimizer.zero_grad()
    loss, _, _ = criterion(model, sample)
    loss.backward()
    optimizer.step()


def bench_models(size: str, batch: int, steps: int, rounds: int, device: str) -> dict:
    runs = make_runs(size, batch, device)
    optimizers = {name: torch.optim.Adam(run[0].parameters(), lr=1e-5) for name, run in runs.items()}
    for name, (model, criterion, sample) in runs.items():  # warm-up
        step(model, criterion, optimizers[name], sample)
    elapsed = {name: 0.0 for name in runs}
    names = list(runs)
    for round_number in range(rounds):
        # Rotate the order every round so that no configuration always runs first.
        for name in names[round_number % len(names):] + names[: round_number % len(names)]:
            model, criterion, sample = runs[name]
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(steps):
                step(model, criterion, optimizers[name], sample)
            if device == "cuda":
                torch.cuda.synchronize()
            elapsed[name] += time.perf_counter() - start
    return {name: rounds * steps * batch / seconds for name, seconds in elapsed.items()}


def bench_loader(batch: int, workers: int) -> float:
    """Samples/s of the CMSC pair loader alone through fairseq's batch iterator."""
    from fairseq.data import iterators

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "waves").mkdir()
        rows = []
        rng = np.random.default_rng(0)
        for i in range(256):
            np.save(folder / "waves" / f"{i}.npy", rng.standard_normal((12, 5000)).astype(np.float32))
            rows.append(ManifestRow(f"waves/{i}.npy", 5000))
        write_manifest(folder / "train.tsv", folder, rows)
        dataset = EcgSegmentDataset(read_manifest(folder / "train.tsv"), SAMPLES, cut="pairs")
        order = dataset.ordered_indices()
        batches = [order[i:i + batch // 2] for i in range(0, len(order), batch // 2)]
        iterator = iterators.EpochBatchIterator(dataset, dataset.collater, batches, num_workers=workers)
        start, count = time.perf_counter(), 0
        for _ in range(3):
            for sample in iterator.next_epoch_itr(shuffle=True):
                count += sample["net_input"]["source"].shape[0]
        return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="small,base")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--loader-workers", type=int, default=4, help="the pretraining YAML's dataset.num_workers")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, input 12 x {SAMPLES} samples")
    consumption = {}
    for size in args.sizes.split(","):
        batch, steps = (8, 6) if size == "small" else (4, 1)  # blocks of seconds: less timer noise
        if args.device == "cuda":
            batch, steps = batch * 8, steps * 5
        rates = bench_models(size, batch, steps, args.rounds, args.device)
        reference = rates["c fairseq wav2vec 2.0 (1 channel)"]
        print(f"\n{size}: training samples/s (batch {batch}, {args.rounds} interleaved rounds)")
        for name, rate in rates.items():
            print(f"  {name:36s} {rate:8.2f}   ratio to c: {rate / reference:.3f}")
        consumption[size] = max(rates.values())
    loader = bench_loader(16, args.loader_workers)
    print(f"\nloader (CMSC pairs, {args.loader_workers} workers): {loader:.0f} samples/s")
    for size, rate in consumption.items():
        print(f"  loader / {size} model consumption: {loader / rate:.1f}x")


if __name__ == "__main__":
    main()
