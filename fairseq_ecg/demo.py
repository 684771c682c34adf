"""``make demo``: the whole pipeline on the embedded synthetic archive, end to end.

Synthesise a PhysioNet/CinC-2021-style archive, prepare its manifests, then run the demo preset of
experiment 1 (pretraining W2V and W2V+CMSC+RLM, two seeds each; classification fine-tuned from each
and from random initialisation on 12, 6, 3, 2 and 1 leads with thresholds tuned on valid; a
frozen-encoder linear probe and patient identification on 12 and 1 leads) and experiment 3 for
one variant (W2V+CMSC pretrained without RLM, fine-tuned on each lead set), and print the tables.
Every step resumes: run it again after an interruption and finished work is kept.
"""
import argparse
import shutil
import sys
import time
from pathlib import Path

from . import experiments, preparation
from .synth import synthesize_archive


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fairseq-ecg-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("demo"), help="folder for everything the demo makes")
    parser.add_argument("--records", type=int, default=1500, help="records in the synthetic archive")
    parser.add_argument("--patients", type=int, default=500)
    parser.add_argument("--labeled", type=int, default=200, help="labeled training records for fine-tuning")
    parser.add_argument("--seeds", type=int, default=None, help="fine-tuning seeds (default: the demo preset's)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time")
    args = parser.parse_args(argv)
    start = time.time()
    archive, data, results = args.out / "archive", args.out / "data", args.out / "results"
    if not (archive / "patients.csv").exists():
        print(f"[demo] synthesising {args.records} records of {args.patients} patients into {archive}", flush=True)
        if archive.exists():  # an interrupted synthesis: start it again
            shutil.rmtree(archive)
        synthesize_archive(archive, records=args.records, patients=args.patients, seed=0)
    print(f"[demo] preparing manifests in {data}", flush=True)
    code = preparation.main([str(archive), "--dest", str(data), "--workers", "2", "--test-percent", "20",
                             "--finetune-train-limit", str(args.labeled)])
    if code:
        return code
    command = ["--data", str(data), "--out", str(results), "--preset", "demo", "--jobs", str(args.jobs),
               *(["--seeds", str(args.seeds)] if args.seeds else [])]
    print(f"[demo] fairseq-ecg-experiments {' '.join(command)}", flush=True)
    code = experiments.main(command)
    print(f"[demo] finished in {(time.time() - start) / 60:.1f} min; report: {results / 'report.md'}; "
          f"pretrained checkpoints: {results / 'runs' / 'pretrain'}")
    return code


if __name__ == "__main__":
    sys.exit(main())
