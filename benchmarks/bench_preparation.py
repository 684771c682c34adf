"""Throughput and peak memory of ``fairseq-ecg-manifest`` with 1 and 2 workers.

Synthesises archives once into a temporary folder (``fairseq_ecg.synth``): a PhysioNet/CinC 2021
tree (mixed sources: 500 Hz mostly, some 257 Hz INCART 30 s and 1000 Hz PTB records, 10-30 s) and
a PTB-XL tree (10 s at 500 Hz), then runs the console script on each into a fresh output folder,
and once more on the finished folder (everything reused). Each run goes through a small helper
process, so that ``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`` is the peak of that run alone
(the largest single process: the main program or one worker). records/s is over the processing
time that the program reports (after its ~3 s start-up, which is importing fairseq); wall
includes the start-up. Target: >= 100 records/s per worker (core).

    python benchmarks/bench_preparation.py [--records 2000] [--layouts physionet2021 ptbxl]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fairseq_ecg.synth import synthesize_archive

PROGRAM = Path(sys.executable).parent / "fairseq-ecg-manifest"
# runs the command given after it and prints its wall time and the peak RSS of its process tree
_HELPER = (
    "import json, resource, subprocess, sys, time\n"
    "start = time.perf_counter()\n"
    "run = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
    "wall = time.perf_counter() - start\n"
    "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
    "print(json.dumps({'rc': run.returncode, 'wall': wall, 'maxrss_kb': peak, 'out': run.stdout, 'err': run.stderr[-2000:]}))\n"
)


def measure(src: Path, dest: Path, layout: str, workers: int) -> dict:
    command = [str(PROGRAM), str(src), "--dest", str(dest), "--layout", layout, "--workers", str(workers)]
    result = json.loads(subprocess.run([sys.executable, "-c", _HELPER, *command], capture_output=True,
                                       text=True, check=True).stdout)
    if result["rc"] != 0:
        raise SystemExit(f"{' '.join(command)} failed ({result['rc']}): {result['err']}")
    summary = re.search(r"(\d+) records found, (\d+) written, (\d+) reused, (\d+) skipped.* in ([\d.]+) s",
                        result["out"])
    found, written, reused, skipped, seconds = summary.groups()
    return {"found": int(found), "written": int(written), "reused": int(reused), "skipped": int(skipped),
            "seconds": float(seconds), "wall": result["wall"], "peak_mb": result["maxrss_kb"] / 1024}


def _burn(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i
    return total


def machine_ratio(workers: int = 2, jobs: int = 4, size: int = 3_000_000) -> float:
    """How much faster ``workers`` processes run pure-Python work than one: the ceiling of the
    2-vs-1 ratio on this machine (shared or throttled virtual CPUs give much less than 2)."""
    import multiprocessing

    start = time.perf_counter()
    for _ in range(jobs):
        _burn(size)
    serial = time.perf_counter() - start
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        start = time.perf_counter()
        pool.map(_burn, [size] * jobs)
        parallel = time.perf_counter() - start
    return serial / parallel


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--layouts", nargs="+", default=["physionet2021", "ptbxl"], choices=["physionet2021", "ptbxl"])
    parser.add_argument("--keep", type=Path, help="synthesise into this folder and keep it (default: a temp folder)")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench_prep_"))
    rows = []
    try:
        for layout in args.layouts:
            src = root / f"archive_{layout}"
            if not src.exists():
                start = time.perf_counter()
                written = synthesize_archive(src, args.records, max(1, args.records // 3), seed=0, layout=layout)
                rates = sorted({r.sample_rate for r in written})
                seconds = sum(r.num_samples / r.sample_rate for r in written) / len(written)
                print(f"synthesised {len(written)} {layout} records (rates {rates} Hz, mean {seconds:.1f} s) "
                      f"in {time.perf_counter() - start:.0f} s", file=sys.stderr)
            for workers in (1, 2):
                dest = root / f"out_{layout}_{workers}"
                shutil.rmtree(dest, ignore_errors=True)
                rows.append((layout, workers, "fresh", measure(src, dest, layout, workers)))
            rows.append((layout, 2, "re-run", measure(src, dest, layout, 2)))  # all reused
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)

    print(f"fairseq-ecg-manifest on {os.cpu_count()} CPU(s), {args.records} records per archive; "
          f"this machine's own 2-vs-1 ratio for pure CPU work: {machine_ratio():.2f}")
    header = ("layout", "workers", "run", "records", "processing s", "records/s", "per worker", "2 vs 1",
              "wall s", "peak RSS MB")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    single = {}
    for layout, workers, kind, m in rows:
        rate = m["found"] / m["seconds"] if m["seconds"] else float("inf")
        if kind == "fresh" and workers == 1:
            single[layout] = rate
        ratio = f"{rate / single[layout]:.2f}" if kind == "fresh" and layout in single else ""
        print(f"| {layout} | {workers} | {kind} | {m['found']} | {m['seconds']:.1f} | {rate:.0f} | "
              f"{rate / workers:.0f} | {ratio} | {m['wall']:.1f} | {m['peak_mb']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
