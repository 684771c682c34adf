"""``fairseq-ecg-synth``: a synthetic archive in any layout (:mod:`fairseq_ecg.synth`)."""
from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from ..errors import EcgError
from ..labels import scored_labels
from .layouts import WRITERS
from .signals import EXTRA_NAMES, CLASSES, LAYOUTS, SynthRecord, assign_patients, make_patient


def synthesize_archive(out: Union[Path, str], records: int, patients: int, seed: int = 0,
                       layout: str = "physionet2021") -> list[SynthRecord]:
    """Write a synthetic archive under ``out`` (which must be empty or absent) and return what
    was written, in record order."""
    out = Path(out)
    if layout not in LAYOUTS:
        raise EcgError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if seed < 0:
        raise EcgError(f"the seed must be >= 0 (got {seed})")
    if records < 1 or not 1 <= patients <= records:
        raise EcgError(f"need records >= 1 and 1 <= patients <= records (got {records}, {patients})")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} already exists and is not an empty folder")
    owner = assign_patients(records, patients, np.random.default_rng([seed, 0]))
    people = [make_patient(seed, p, layout) for p in range(patients)]
    out.mkdir(parents=True, exist_ok=True)
    return WRITERS[layout](out, people, owner.tolist(), seed)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console script ``fairseq-ecg-synth``: write an archive and print a one-line summary."""
    parser = argparse.ArgumentParser(prog="fairseq-ecg-synth", description="Write a synthetic 12-lead ECG archive in the on-disk format of a real one.")
    parser.add_argument("out", type=Path, help="folder to create (must be empty or absent)")
    parser.add_argument("--records", type=int, required=True, help="number of records")
    parser.add_argument("--patients", type=int, help="number of patients (default records/3)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    parser.add_argument("--layout", choices=LAYOUTS, default="physionet2021")
    args = parser.parse_args(argv)
    logging.getLogger().setLevel(logging.WARNING)  # importing fairseq sets the root logger to DEBUG (h5py's lines)
    patients = args.patients if args.patients is not None else max(1, args.records // 3)
    for flag, value, least in (("--records", args.records, 1), ("--patients", patients, 1), ("--seed", args.seed, 0)):
        if value < least:
            parser.error(f"{flag} must be at least {least} (got {value})")
    if patients > args.records:
        parser.error(f"--patients ({patients}) cannot exceed --records ({args.records})")
    start = time.perf_counter()
    try:
        written = synthesize_archive(args.out, args.records, patients, args.seed, args.layout)
    except (OSError, EcgError) as error:
        print(f"fairseq-ecg-synth: error: {error}", file=sys.stderr)
        return 1
    names = {**{code: abbr for code, (abbr, _, _) in CLASSES.items()}, **EXTRA_NAMES}
    scored = scored_labels()  # CODE-15% writes equivalent codes (59118001 for RBBB): name their class
    represent = {code: scored.classes[i][0] for code, i in scored.code_to_index.items()}
    classes_of = [{represent.get(c, c) for c in r.codes} for r in written]
    found = sorted(set().union(*classes_of), key=list(names).index)
    counts = {names[c]: sum(c in codes for codes in classes_of) for c in found}
    rates = sorted(Counter(r.sample_rate for r in written).items())
    print(f"wrote {len(written)} records of {patients} patients to {args.out} ({args.layout}); "
          f"rates {', '.join(f'{fs} Hz: {n}' for fs, n in rates)}; classes "
          f"{', '.join(f'{k}={v}' for k, v in counts.items())}; {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
