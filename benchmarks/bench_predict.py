"""Prediction throughput of fairseq-ecg-predict at ECG-FM's size (12 layers x 768, 90.9M parameters).

Writes a classifier checkpoint of that architecture (random weights: speed does not depend on
them) and a manifest of synthetic 10 s records (two 5 s segments each), then runs the same code
as ``fairseq-ecg-predict`` (record reading, record normalisation, batching, CSV writing) and
reports records/s and segments/s, with the threads given (2 by default, as the machine of the
project's figures). ``--explain``: the same records again with ``--explain`` of one class per
record (integrated gradients at the default steps, the .npy and the PNG), and the ratio.

    python benchmarks/bench_predict.py [--records 48] [--threads 2] [--batch-size 32] [--size base|tiny] [--explain]
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fairseq_ecg  # noqa: F401,E402
from bench_pretraining import SIZES as PRETRAINING_SIZES  # noqa: E402
from fairseq_ecg.importer import full_config, save_checkpoint
from fairseq_ecg.labels import SCORED_CLASSES
from fairseq_ecg.manifest import ManifestRow, write_manifest
from fairseq_ecg.models.ecg_classifier import EcgClassifierConfig, EcgClassifierModel
from fairseq_ecg.predict import load_predictor, predict

# ECG-FM's size is bench_pretraining's base: one table of model sizes for the bench scripts
SIZES = {"base": PRETRAINING_SIZES["base"],
         "tiny": dict(encoder_layers=2, encoder_embed_dim=64, encoder_ffn_embed_dim=128, encoder_attention_heads=2)}
# ECG-FM's encoder (fairseq-signals' w2v_cmsc_rlm settings); dropouts off as in inference.
COMMON = dict(_name="ecg_wav2vec2", conv_feature_layers="[(256, 2, 2)] * 4", input_leads=12, final_dim=256,
              quantize_targets=False, conv_pos=128, conv_pos_groups=16, dropout=0.0, attention_dropout=0.0)


def write_checkpoint(path: Path, size: str) -> int:
    encoder_args = {**COMMON, **SIZES[size]}
    model_args = {"_name": "ecg_wav2vec2_classifier", "encoder_args": encoder_args, "num_classes": len(SCORED_CLASSES)}
    model = EcgClassifierModel.build_model(EcgClassifierConfig(**{k: v for k, v in model_args.items() if k != "_name"}))
    cfg = full_config("ecg_classification", {"data": "???", "normalize": "record"}, model_args, "ecg_bce")
    save_checkpoint({"args": None, "cfg": cfg, "model": model.state_dict(), "criterion": None,
           "optimizer_history": [{"criterion_name": "none", "optimizer_name": "none", "lr_scheduler_state": {},
                                  "num_updates": 0}],
           "task_state": {"normalize": "record", "classes": SCORED_CLASSES}, "extra_state": {},
           "last_optimizer_state": None}, path)
    return sum(p.numel() for p in model.parameters())


def write_records(folder: Path, count: int, samples: int = 5000) -> Path:
    rng = np.random.default_rng(0)
    (folder / "waves").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        np.save(folder / "waves" / f"{i}.npy", (rng.standard_normal((12, samples)) * 0.3).astype(np.float32))
        rows.append(ManifestRow(f"waves/{i}.npy", samples, "1" * 12, f"p{i}", 500.0, f"r{i}"))
    write_manifest(folder / "night.tsv", folder, rows)
    return folder / "night.tsv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=48)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--size", choices=tuple(SIZES), default="base")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--explain", action="store_true", help="also time predict --explain (one class per record)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
        root = Path(tmp)
        parameters = write_checkpoint(root / "classifier.pt", args.size)
        manifest = write_records(root, args.records)
        predictor = load_predictor(root / "classifier.pt")
        thresholds = np.full(len(predictor.class_names), 0.5)
        warm = write_records(root / "warm", 2)  # first-call costs (allocator, kernels) left out
        predict(predictor, warm, root / "warm.csv", thresholds, device=torch.device(args.device), log=lambda _: None)
        started = time.perf_counter()
        written, skipped = predict(predictor, manifest, root / "night.csv", thresholds, batch_size=args.batch_size,
                                   device=torch.device(args.device), log=lambda _: None)
        seconds = time.perf_counter() - started
        if args.explain:
            started = time.perf_counter()
            predict(predictor, manifest, root / "explained.csv", thresholds, batch_size=args.batch_size,
                    device=torch.device(args.device), log=lambda _: None, explain=root / "explain",
                    explain_classes=[predictor.columns[0]])
            explained = time.perf_counter() - started
    assert written == args.records and not skipped
    print(f"size {args.size} ({parameters / 1e6:.1f}M parameters), {args.threads} threads, batch {args.batch_size}: "
          f"{written} records of 10 s ({2 * written} segments of 5 s) in {seconds:.1f} s = "
          f"{written / seconds:.2f} records/s, {2 * written / seconds:.2f} segments/s")
    if args.explain:
        print(f"with --explain (one class per record): {explained:.1f} s = {written / explained:.3f} records/s, "
              f"{explained / seconds:.1f}x the time without")


if __name__ == "__main__":
    main()
