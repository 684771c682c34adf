"""Throughput and peak memory of ``fairseq-ecg-manifest`` for each archive source, one worker.

Synthesises an archive per layout (``fairseq-ecg-synth --layout``) into a temporary folder, then
runs the console script on it with ``--workers 1`` through the helper of ``bench_preparation``
(peak RSS of that run alone; records/s over the processing time the program reports, after its
start-up). For CODE-15%, one HDF5 file at two sizes (``--code15-exams`` and a quarter of it):
a flat peak memory shows that the file is read one exam at a time, not loaded. Target: at least
100 records/s per worker (core) for every source.

    python benchmarks/bench_sources.py [--records 2000] [--code15-exams 20000] [--layouts ...]
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_preparation import machine_ratio, measure  # noqa: E402

from fairseq_ecg.synth import LAYOUTS, assign_patients, make_patient, synthesize_archive  # noqa: E402


def code15_single_file(out: Path, exams: int) -> None:
    """One ``exams_part0.hdf5`` of ``exams`` exams (the real files hold about 20,000 each)."""
    from fairseq_ecg.synth.layouts import write_code15

    patients = max(1, exams // 2)
    owner = assign_patients(exams, patients, np.random.default_rng([0, 0])).tolist()
    people = [make_patient(0, p, "code15") for p in range(patients)]
    out.mkdir(parents=True)
    write_code15(out, people, owner, 0, parts=1)


def main() -> int:
    logging.getLogger().setLevel(logging.WARNING)  # importing fairseq sets DEBUG: h5py would log each converter
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=2000, help="records per synthetic archive")
    parser.add_argument("--code15-exams", type=int, default=20000, help="exams in the one-file CODE-15%% run")
    parser.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=list(LAYOUTS))
    parser.add_argument("--keep", type=Path, help="synthesise into this folder and keep it (default: a temp folder)")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench_sources_"))
    rows = []
    try:
        for layout in args.layouts:
            src = root / f"archive_{layout}"
            if not src.exists():
                start = time.perf_counter()
                synthesize_archive(src, args.records, max(1, args.records // 3), seed=0, layout=layout)
                print(f"synthesised {args.records} {layout} records in {time.perf_counter() - start:.0f} s",
                      file=sys.stderr, flush=True)
            dest = root / f"out_{layout}"
            shutil.rmtree(dest, ignore_errors=True)
            rows.append((layout, args.records, measure(src, dest, layout, 1)))
            shutil.rmtree(dest, ignore_errors=True)
        for exams in (args.code15_exams // 4, args.code15_exams):
            src = root / f"code15_one_file_{exams}"
            if not src.exists():
                code15_single_file(src, exams)
            dest = root / f"out_code15_{exams}"
            shutil.rmtree(dest, ignore_errors=True)
            rows.append((f"code15, one file of {exams}", exams, measure(src, dest, "code15", 1)))
            shutil.rmtree(dest, ignore_errors=True)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    print(f"fairseq-ecg-manifest --workers 1 on {os.cpu_count()} CPU(s); this machine's 2-vs-1 ratio for pure "
          f"CPU work: {machine_ratio():.2f}")
    header = ("source", "records", "processing s", "records/s per worker", "peak RSS MB", "skipped")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for name, _, m in rows:
        rate = m["found"] / m["seconds"] if m["seconds"] else float("inf")
        print(f"| {name} | {m['found']} | {m['seconds']:.1f} | {rate:.0f} | {m['peak_mb']:.0f} | {m['skipped']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
