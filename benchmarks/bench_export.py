"""Time per batch of an exported classifier (fairseq-ecg-export) against the PyTorch model it came from.

Writes a classifier checkpoint (bench_predict's: random weights, ``tiny`` by default, ``base`` is
ECG-FM's size), exports it to ONNX and TorchScript, and times one batch of 5 s segments in mV
(default 32) through: onnxruntime (``intra_op_num_threads`` = ``--threads``, one inter-op
thread), the TorchScript file, and the PyTorch model in eager mode (``torch.set_num_threads``,
``torch.no_grad``) computing the same graph (normalisation, model, sigmoid, aggregation). Each
after two warm-up batches, ``--repeats`` batches interleaved; the median per batch and the ratio
eager / exported are printed, with the CPU named.

    python benchmarks/bench_export.py [--size tiny|base] [--threads 1] [--batch-size 32] [--repeats 20]
"""
import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_predict import SIZES, write_checkpoint  # noqa: E402
from fairseq_ecg.deploy.export import ExportedClassifier, example_segments, export  # noqa: E402
from fairseq_ecg.models.loading import load_model  # noqa: E402


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=tuple(SIZES), default="tiny")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    import onnxruntime

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        root = Path(tmp)
        parameters = write_checkpoint(root / "classifier.pt", args.size)
        started = time.perf_counter()
        export(root / "classifier.pt", "onnx", root / "classifier.onnx")
        onnx_seconds = time.perf_counter() - started
        export(root / "classifier.pt", "torchscript", root / "classifier.ts")
        loaded = load_model(root / "classifier.pt", "classifier")
        eager = ExportedClassifier(loaded.model, loaded.input).eval()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
        session = onnxruntime.InferenceSession(str(root / "classifier.onnx"), options,
                                               providers=["CPUExecutionProvider"])
        scripted = torch.jit.load(str(root / "classifier.ts"))
        batch = example_segments(loaded.input, args.batch_size)
        array = batch.numpy()
        runs = {"onnxruntime": lambda: session.run(None, {"segments": array}),
                "torchscript": lambda: scripted(batch), "pytorch eager": lambda: eager(batch)}
        times: dict[str, list[float]] = {name: [] for name in runs}
        with torch.no_grad():
            for run in runs.values():
                run(), run()  # first-call costs (allocator, kernels, graph optimisation) left out
            for _ in range(args.repeats):  # interleaved: a slower stretch of a shared machine hits all three
                for name, run in runs.items():
                    started = time.perf_counter()
                    run()
                    times[name].append(time.perf_counter() - started)
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"{cpu_name()}, {args.threads} thread(s); size {args.size} ({parameters / 1e6:.1f}M parameters), batch of "
          f"{args.batch_size} segments of {loaded.input.segment_samples} samples, median of {args.repeats}; "
          f"ONNX export {onnx_seconds:.1f} s (onnxruntime {onnxruntime.__version__}, torch {torch.__version__})")
    for name, seconds in median.items():
        print(f"  {name:>13}: {seconds * 1e3:8.1f} ms per batch, {args.batch_size / seconds:8.1f} segments/s, "
              f"eager / this {median['pytorch eager'] / seconds:.2f}")


if __name__ == "__main__":
    main()
