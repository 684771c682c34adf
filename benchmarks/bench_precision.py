"""Training step in bf16 vs fp32, against fairseq's own fp32 wav2vec 2.0, in one run.

For each size (small 4 x 256, base 12 x 768) and torch thread count: fairseq's Wav2Vec2Model on one
channel (fp32; as shipped it cannot run under autocast), the plugin's W2V and W2V+CMSC+RLM
models in fp32 and in bf16 (``task.precision=bf16``: the forward under bf16 autocast through the
same ``AutocastForward`` the tasks use, fp32 loss, backward and Adam step). Every configuration of
a size runs once per round, the order rotating and the thread counts alternating within the round;
each rate is that of a configuration's fastest block (best of the rounds), which other processes on
a shared machine disturb least. The figures that matter are the ratios in the table.

FLOPs (``--peak-tflops``, e.g. 989 for an H200's dense bf16 peak): counted by torch's
``FlopCounterMode`` over one training step of each model (forward and backward: matrix multiplies,
convolutions and attention; not elementwise ops, norms, softmax or the optimizer), the same count
for fp32 and bf16; MFU = counted FLOPs x steps/s / peak.

    python benchmarks/bench_precision.py [--sizes small,base] [--threads 1,2] [--rounds 3] [--device cpu|cuda]
                                         [--batch N] [--peak-tflops 989] [--tiny]
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pretraining import SIZES, bench_loader, make_runs, step  # noqa: E402

from fairseq_ecg.models.precision import AutocastForward, cpu_bf16_flags, native_bf16  # noqa: E402

FAIRSEQ, W2V, FULL = "c fairseq wav2vec 2.0 (1 channel)", "b plugin W2V", "a plugin W2V+CMSC+RLM"
ROWS = {FAIRSEQ: "fairseq wav2vec 2.0", W2V: "plugin W2V", FULL: "plugin W2V+CMSC+RLM"}
TARGETS = {"small": 1.25, "base": 1.6}  # issue 13: bf16 vs fp32 on a CPU with native bf16
TINY = dict(encoder_layers=1, encoder_embed_dim=64, encoder_ffn_embed_dim=128, encoder_attention_heads=4, conv_pos=32,
            conv_pos_groups=4)


def counted_flops(model, criterion, sample) -> float:
    """Matrix-multiply, convolution and attention FLOPs of one training step (forward + backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        loss, _, _ = criterion(model, sample)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def bench_size(size: str, batch: int, steps: int, rounds: int, threads: list, device: str) -> tuple:
    runs = make_runs(size, batch, device)
    configs = [(FAIRSEQ, "fp32"), (W2V, "fp32"), (W2V, "bf16"), (FULL, "fp32"), (FULL, "bf16")]
    optimizers = {name: torch.optim.Adam(run[0].parameters(), lr=1e-5) for name, run in runs.items()}
    flops = {name: counted_flops(*run) for name, run in runs.items()}

    def run(name: str, precision: str, count: int) -> float:
        model, criterion, sample = runs[name]
        model_view = model if precision == "fp32" else AutocastForward(model, precision)
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(count):
            step(model_view, criterion, optimizers[name], sample)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for config in configs:  # warm-up (first-call allocations, oneDNN kernel selection)
        run(*config, 1)
    elapsed = {(config, n): [] for config in configs for n in threads}
    for round_number in range(rounds):
        shift = round_number % len(configs)
        for config in configs[shift:] + configs[:shift]:
            for n in threads if round_number % 2 == 0 else threads[::-1]:
                if device == "cpu":
                    torch.set_num_threads(n)
                elapsed[(config, n)].append(run(*config, steps))
    # The fastest block of each configuration: what other processes on a shared machine disturb least.
    rates = {key: steps * batch / min(seconds) for key, seconds in elapsed.items()}
    return rates, flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="small,base")
    parser.add_argument("--threads", default="1,2", help="torch thread counts (CPU), interleaved within each round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=0, help="segments per step (default: small 8, base 4; x16 on CUDA)")
    parser.add_argument("--steps", type=int, default=0, help="steps per timed block (default: small 3, base 1; x10 on CUDA)")
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="report MFU against this peak (989: H200 dense bf16)")
    parser.add_argument("--tiny", action="store_true", help="a one-layer model, 1 round: checks that the script runs")
    parser.add_argument("--no-loader", action="store_true", help="skip the data loader measurement")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.tiny:
        SIZES["tiny"] = TINY
        sizes, args.rounds = ["tiny"], 1
    else:
        sizes = [s for s in args.sizes.split(",") if s]
    threads = [int(n) for n in args.threads.split(",")] if args.device == "cpu" else [0]
    native = native_bf16(args.device)
    flags = ", ".join(cpu_bf16_flags()) if args.device == "cpu" else ""
    what = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({flags or 'no native bf16'})"
    print(f"device {args.device}: {what}; torch {torch.__version__}; input 12 x 2500 samples; {args.rounds} interleaved rounds")
    if not native:
        print("  this device has no native bf16: the bf16 columns measure torch's emulation")
    header = f"{'size':6s} {'threads':>7s} {'model':22s} {'fp32 /s':>9s} {'bf16 /s':>9s} {'bf16/fp32':>9s} {'fp32 vs fairseq':>15s}"
    if args.peak_tflops:
        header += f" {'TFLOP/step':>10s} {'MFU fp32':>8s} {'MFU bf16':>8s}"
    print("\ntraining samples/s (full step: forward, loss, backward, Adam)")
    print(header, flush=True)
    checks, consumption = [], {}
    for size in sizes:
        batch, steps = (8, 3) if size != "base" else (4, 1)
        if args.device == "cuda":
            batch, steps = batch * 16, steps * 10
        batch, steps = args.batch or batch, args.steps or steps
        rates, flops = bench_size(size, batch, steps, args.rounds, threads, args.device)
        for n in threads:
            reference = rates[((FAIRSEQ, "fp32"), n)]
            for name, label in ROWS.items():
                fp32 = rates[((name, "fp32"), n)]
                bf16 = rates.get(((name, "bf16"), n))
                line = (f"{size:6s} {n or '-':>7} {label:22s} {fp32:9.2f} " +
                        (f"{bf16:9.2f} {bf16 / fp32:9.2f}" if bf16 else f"{'-':>9s} {'-':>9s}") +
                        f" {fp32 / reference:15.3f}")
                if args.peak_tflops:
                    per_sample = flops[name] / batch
                    mfu = [f"{rate * per_sample / (args.peak_tflops * 1e12):8.1%}" if rate else f"{'-':>8s}"
                           for rate in (fp32, bf16)]
                    line += f" {flops[name] / 1e12:10.3f} {mfu[0]} {mfu[1]}"
                print(line, flush=True)
            w2v, full = rates[((W2V, "fp32"), n)], rates[((FULL, "fp32"), n)]
            where = f"{size}, {n or args.device} thread{'s' if n != 1 else ''}"
            checks.append((f"plugin W2V fp32 vs fairseq ({where})", w2v / reference, ">=", 0.97))
            checks.append((f"CMSC+RLM vs W2V alone, fp32 ({where}): overhead {1 - full / w2v:+.1%}", full / w2v, ">=", 0.97))
            if size in TARGETS and native:
                speedup = rates[((W2V, "bf16"), n)] / w2v
                checks.append((f"bf16 vs fp32, plugin W2V ({where})", speedup, ">=", TARGETS[size]))
        consumption[size] = max(rates.values())
    print("\nratios (targets of issue 13)")
    for label, value, _, target in checks:
        print(f"  {label:66s} {value:6.3f}  target >= {target:.2f}  {'ok' if value >= target else 'BELOW'}")
    if not args.no_loader and not args.tiny:
        torch.set_num_threads(max(threads) if threads[0] else torch.get_num_threads())
        loader = bench_loader(16, 4)
        print(f"\nloader (CMSC pairs, 4 workers): {loader:.0f} samples/s")
        for size, rate in consumption.items():
            print(f"  loader / fastest {size} configuration: {loader / rate:.1f}x")


if __name__ == "__main__":
    main()
