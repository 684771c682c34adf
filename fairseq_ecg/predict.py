"""``fairseq-ecg-predict``: class probabilities and labels for new records, from a classifier checkpoint.

    fairseq-ecg-predict --checkpoint CLASSIFIER.pt INPUT --out predictions.csv [--leads 6]
                        [--thresholds valid|0.5|FILE] [--calibration valid|none]
                        [--normalize auto|none|segment|record]

INPUT is a manifest (``.tsv`` of fairseq-ecg-manifest) or a folder of records in any layout the
preparation reads (``--layout``, default ``auto``: recognised, :mod:`fairseq_ecg.sources`). Each record is prepared as in training (resampled to the
checkpoint's rate, its normalisation, the checkpoint's leads unless ``--leads``), cut into every
consecutive segment, and the segment probabilities combined per record as in validation (the
checkpoint's ``task.aggregate``). The CSV has one row per record: ``record``, ``segments``,
``leads`` (the leads the record has, e.g. ``I,II``: a lead the model is fed that the record lacks
goes in as zeros, and a closing line counts such records), ``quality`` (``ok``, or the signal-quality
checks that leads the model uses fail, e.g. ``flat:V4;noisy:II``: :mod:`fairseq_ecg.signal_quality`;
``--withhold-poor-quality`` leaves such a record's labels empty), one probability column per class named by the checkpoint's class names (a CinC 2021 class as its code
and abbreviation, e.g. ``426783006 SNR``), and ``labels``, the classes at or above their threshold
joined by ``;``.

Explanations (``--explain DIR``): per record and per class it predicts (or ``--explain-classes``),
``DIR/RECORD__CLASS.npy``, the integrated-gradients attribution [12 leads, 0.1 s bins], and
``DIR/RECORD__CLASS.png``, the record in the clinical layout with the attribution shaded
(:mod:`fairseq_ecg.deploy.explain`); ``DIR/explanations.tsv`` lists them with probability, threshold,
the baseline's probability and the integration gap.

Calibration: ``valid`` (default) passes each record's probabilities through the calibration fitted
on the validation patients and saved in the checkpoint (``task.calibration``; a checkpoint without
one gives its probabilities as trained, said in one line); ``none`` gives them as trained.

Thresholds: ``valid`` (default) takes those tuned on the validation subset and saved in the
checkpoint (``task.tune_thresholds``), on the scale of the probabilities written (tuned on the
calibrated ones, mapped back for ``--calibration none``), or 0.5 when it has none (said in one
line); a number is used for every class; a FILE holds one threshold per class, one per line
(``value`` or ``name,value``); a number or a file applies to the probabilities as written.

A record that cannot be used (unreadable, NaN, shorter than the encoder's receptive field, or one
the model fails on: a failing batch is scored again record by record) is listed on stderr and in
``OUT.skipped.tsv`` (record, reason) and the run goes on; a run that skipped every record exits 1. Records stream through: memory holds one record and one batch of segments,
whatever the number of records; progress goes to stderr. Input problems that stop everything (an
unusable checkpoint, manifest or threshold file) end with one line and exit status 2.
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from .errors import EcgError
from .deploy.explain import STEPS, explained_classes, file_stem, write_explanations
from .checkpoints import CheckpointError, is_probability
from .data.model_input import ModelInput
from .inference import (RecordBatcher, check_program_outputs, iter_records, program_parser, record_file_layout,
                        run_over_records, run_program, unusable_signal, write_skipped)
from .labels import column_names
from .signal_quality import FLAGS, GOOD, quality_text, record_flags
from .leads import NUM_LEADS, lead_change, lead_list, missing_leads_summary, parse_leads
from .manifest import atomic_output
from .metrics.calibration import CALIBRATIONS
from .metrics.classification import aggregate_by_record
from .models.loading import load_model
from .normalization import AUTO, resolve_normalization
from .preparation import output_salt
from .sources import AUTO as SOURCE_AUTO
from .spreadsheet import csv_writer


@dataclass
class Predictor:
    """A classifier checkpoint ready to score records, with how its inputs must be prepared."""

    model: torch.nn.Module
    input: ModelInput  # rate, segment length, leads, normalisation, aggregation, classes, thresholds, calibration
    class_names: list[str]
    columns: list[str]
    min_samples: int = 1  # the encoder's receptive field: a shorter record gives no frame to classify
    calibrated: bool = True  # the checkpoint's calibration applies (where it has one)

    @property
    def calibration(self):
        """The calibration in force (None: the probabilities as trained)."""
        return self.input.calibration if self.calibrated else None

    @property
    def sample_rate(self) -> float:
        return self.input.sample_rate

    @property
    def leads(self):
        return self.input.leads

    @property
    def tuned_thresholds(self) -> Optional[np.ndarray]:
        """The checkpoint's thresholds on the scale of :meth:`probabilities` (tuned on the calibrated one)."""
        tuned = self.input.tuned_thresholds(len(self.class_names))
        if tuned is not None and self.input.calibration is not None and not self.calibrated:
            return self.input.calibration.uncalibrated(tuned)
        return tuned

    def probabilities(self, wave: np.ndarray, sample_rate: float, leads=None) -> np.ndarray:
        """Class probabilities of one record, as ``fairseq-ecg-predict`` computes them.

        Args:
            wave: [12, T] in mV, leads in the canonical order (I, II, III, aVR, aVL, aVF, V1-V6),
                an absent lead as zeros.
            sample_rate: of ``wave``, in Hz; resampled to the model's.
            leads: the leads fed to the model (others zeroed); default: the checkpoint's.
        Returns:
            [num_classes] float64, in the order of ``class_names``, calibrated where :attr:`calibration` is set.
        """
        from .sources import resample

        wave = np.asarray(wave, dtype=np.float64)
        if wave.ndim != 2 or wave.shape[0] != NUM_LEADS:
            raise EcgError(f"expected a [{NUM_LEADS}, samples] array, got shape {wave.shape}")
        wave = resample(wave, sample_rate, self.sample_rate).astype(np.float32)
        reason = unusable_signal(wave, self.sample_rate, self.min_samples)
        if reason:
            raise EcgError(f"the record cannot be classified: {reason}")
        batcher = self.batcher(32, next(self.model.parameters()).device)
        batcher.add(0, self.input.segments(wave, leads))
        batcher.flush()
        (_, probs, _), = batcher.finished()
        if isinstance(probs, str):
            raise ValueError(f"the model could not score the record ({probs})")
        return np.asarray(probs, dtype=np.float64)

    def batcher(self, batch_size: int, device: torch.device) -> RecordBatcher:
        """Segment probabilities [segments, classes] combined per record by the checkpoint's
        ``aggregate`` (mean or max), as validation combines them, then calibrated (:attr:`calibration`)."""
        def forward(net_input: dict) -> np.ndarray:
            return torch.sigmoid(self.model(**net_input)["logits"].float()).cpu().numpy()

        def combine(parts: np.ndarray) -> np.ndarray:
            record = aggregate_by_record(parts, np.zeros(len(parts), dtype=np.int64), self.input.aggregate)[1][0]
            return record if self.calibration is None else self.calibration.apply(record)
        return RecordBatcher(forward, combine, batch_size, device)

    def labels(self, probabilities: np.ndarray, thresholds: Optional[np.ndarray] = None) -> list[str]:
        """The class names at or above their threshold (default: those tuned on valid, else 0.5)."""
        if thresholds is None:
            thresholds = self.tuned_thresholds if self.tuned_thresholds is not None else np.full(len(self.class_names), 0.5)
        return [name for name, p, t in zip(self.class_names, probabilities, thresholds) if p >= t]


def load_predictor(path: Path, normalize: str = AUTO, calibration: str = "valid") -> Predictor:
    """Read a classifier checkpoint (safely) and build its model in eval mode (``load_model``);
    ``normalize`` other than ``auto`` must be the checkpoint's own mode; ``calibration``: ``valid``
    (the checkpoint's, where it has one) or ``none``."""
    if calibration not in CALIBRATIONS:
        raise EcgError(f"calibration {calibration!r}: use one of {', '.join(CALIBRATIONS)}")
    loaded = load_model(path, "classifier")
    resolve_normalization(normalize, loaded.input.normalize, str(path))
    num = loaded.model.cfg.num_classes
    names = list(loaded.input.classes or [])
    if len(names) != num:
        raise CheckpointError(f"{path}: {len(names)} class names for {num} outputs; the checkpoint was edited or damaged")
    return Predictor(model=loaded.model, input=loaded.input, class_names=names, columns=column_names(names),
                     min_samples=loaded.receptive_field, calibrated=calibration == "valid")


def read_thresholds(spec: str, predictor: Predictor, log=print) -> np.ndarray:
    """``valid``, a number, or a file (one threshold per class: ``value`` or ``name,value`` lines)."""
    num = len(predictor.class_names)
    if spec == "valid":
        if predictor.tuned_thresholds is not None:
            return predictor.tuned_thresholds
        log("--thresholds valid: the checkpoint holds no thresholds tuned on validation "
            "(it was trained without a valid subset, or with task.tune_thresholds=false); using 0.5 for every class")
        return np.full(num, 0.5)
    try:
        number = float(spec)
    except ValueError:
        number = None
    if number is not None:
        if not is_probability(number):
            raise EcgError(f"--thresholds {spec}: a threshold is a probability in [0, 1]")
        return np.full(num, number)
    path = Path(spec)
    try:
        lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except OSError as error:
        raise EcgError(f"--thresholds {spec}: not 'valid', a number, or a readable file ({error.strerror})") from None
    values = []
    for number, line in enumerate(lines, start=1):
        cells = next(csv.reader([line.replace("\t", ",")]))
        if number == 1 and len(lines) == num + 1:  # a header line
            continue
        try:
            value = float(cells[-1])
        except ValueError:
            raise EcgError(f"{path}:{number}: {cells[-1]!r} is not a number") from None
        if not is_probability(value):
            raise EcgError(f"{path}:{number}: threshold {cells[-1].strip()} is not a probability in [0, 1]")
        if len(cells) > 1:
            k = len(values)
            if k < num and cells[0].strip() not in (predictor.class_names[k], predictor.columns[k]):
                raise EcgError(f"{path}:{number}: class {cells[0].strip()!r}, expected {predictor.class_names[k]!r} "
                                 "(one line per class, in the checkpoint's order)")
        values.append(value)
    if len(values) != num:
        raise EcgError(f"{path}: {len(values)} thresholds, the classifier has {num} classes")
    return np.asarray(values, dtype=np.float64)


def predict(predictor: Predictor, inputs: Path, out: Path, thresholds: np.ndarray, leads=None,
            batch_size: int = 32, layout: str = SOURCE_AUTO, device: Optional[torch.device] = None,
            progress_seconds: float = 10.0, log=print, input_rate: Optional[float] = None,
            withhold_poor_quality: bool = False, explain: Optional[Path] = None,
            explain_classes: Optional[Sequence[str]] = None,
            explain_steps: int = STEPS) -> tuple[int, list[tuple[str, str]]]:
    """Write the predictions CSV (and ``OUT.skipped.tsv``); returns (records written, skipped).
    A record whose signal quality fails a check (:mod:`fairseq_ecg.signal_quality`) gets no labels
    with ``withhold_poor_quality``; its probabilities are written either way. ``explain``: the
    folder for the explanations of each record's labels (or of ``explain_classes``)."""
    device = device or torch.device("cpu")
    predictor.model.to(device)
    fed = leads if leads is not None else predictor.leads
    total, records = iter_records(inputs, predictor.sample_rate, layout, input_rate, log)
    skipped: list[tuple[str, str]] = []
    predicted_leads: list[np.ndarray] = []
    flagged: Counter = Counter()  # check -> records failing it
    poor = 0
    explained: list[list] = []
    with atomic_output(out, newline="", clean_stale=True) as handle:
        writer = csv_writer(handle)
        writer.writerow(["record", "segments", "leads", "quality", *predictor.columns, "labels"])
        for record, probs, count in run_over_records(records, total, predictor.input, predictor.min_samples,
                                                     predictor.batcher(batch_size, device), fed, progress_seconds, log):
            if not count:
                skipped.append((record.name, probs))
                continue
            flags = record_flags(record.wave, predictor.sample_rate, record.present, fed)
            flagged.update(list(flags))  # one count per record and check
            poor += bool(flags)
            labels = "" if flags and withhold_poor_quality else \
                ";".join(c for c, p, t in zip(predictor.columns, probs, thresholds) if p >= t)
            predicted_leads.append(record.present)
            writer.writerow([record.name, count, lead_list(record.present), quality_text(flags),
                             *(f"{p:.6f}" for p in probs), labels])
            chosen = explained_classes(probs, thresholds, predictor.columns, explain_classes) if explain else []
            if chosen and not (flags and withhold_poor_quality and not explain_classes):
                for found in write_explanations(explain, predictor, record.name, record.wave, chosen, thresholds,
                                                leads, explain_steps):
                    explained.append([found.record, found.column, f"{found.probability:.6f}", f"{found.threshold:.6f}",
                                      f"{found.baseline:.6f}", f"{found.gap:.3g}", file_stem(found.record, found.column)])
    if explain:
        with atomic_output(explain / "explanations.tsv", newline="") as handle:
            writer = csv_writer(handle, delimiter="\t")
            writer.writerow(["record", "class", "probability", "threshold", "baseline_probability", "gap", "files"])
            writer.writerows(explained)
        log(f"{len(explained)} explanations -> {explain} (RECORD__CLASS.npy and .png; explanations.tsv lists them)")
    lacking = missing_leads_summary(predicted_leads, fed, "predicted records")
    if lacking:
        log(f"{lacking} (the CSV's leads column names each record's)")
    if poor:
        checks = ", ".join(f"{flag} {flagged[flag]}" for flag in FLAGS if flagged[flag])
        withheld = "; their labels are withheld" if withhold_poor_quality else " (--withhold-poor-quality leaves their labels out)"
        log(f"{poor} of {len(predicted_leads)} records fail a signal-quality check ({checks}; the quality column "
            f"names the leads){withheld}")
    write_skipped(out.with_suffix(".skipped.tsv"), skipped)
    return len(predicted_leads), skipped


def record_summary(path: Path, predictor: Predictor, thresholds: np.ndarray) -> str:
    """The one row of a single-record CSV, for the terminal: its labels with probability and
    threshold, or the three most probable classes when none reaches its threshold."""
    with open(path, newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    probs = [(float(row[column]), column, t) for column, t in zip(predictor.columns, thresholds)]
    above = [f"{column} {p:.3f} (threshold {t:.3f})" for p, column, t in probs if p >= t]
    top = ", ".join(f"{column} {p:.3f}" for p, column, _ in sorted(probs, reverse=True)[:3])
    said = "; ".join(above) if above else f"no class reaches its threshold; most probable: {top}"
    quality = "" if row["quality"] == GOOD else f"; signal quality: {row['quality']}"
    return f"{row['record']}: {said} ({row['segments']} segments, leads {row['leads']}{quality})"


def build_parser() -> argparse.ArgumentParser:
    parser = program_parser("fairseq-ecg-predict", __doc__.split("\n\n")[0], "an ecg_wav2vec2_classifier checkpoint",
                            "predictions CSV to write")
    parser.add_argument("--withhold-poor-quality", action="store_true",
                        help="no labels for a record that fails a signal-quality check (flat, clipped, noisy, wander; "
                             "the quality column names them either way)")
    parser.add_argument("--thresholds", default="valid",
                        help="valid (tuned on validation, saved in the checkpoint; else 0.5), a number, or a file "
                             "with one threshold per class")
    parser.add_argument("--explain", type=Path, default=None, metavar="DIR",
                        help="write per record and predicted class an integrated-gradients attribution (.npy) and "
                             "the ECG in the clinical layout with it shaded (.png) into DIR")
    parser.add_argument("--explain-classes", default=None, metavar="CLASSES",
                        help="with --explain: these classes (comma-separated codes or column names) for every record, "
                             "instead of each record's predicted ones")
    parser.add_argument("--explain-steps", type=int, default=STEPS, help="integration steps of the explanations")
    parser.add_argument("--calibration", choices=CALIBRATIONS, default="valid",
                        help="valid: the calibration fitted on validation and saved in the checkpoint (where it has "
                             "one); none: the probabilities as trained")
    parser.add_argument("--progress-seconds", type=float, default=10.0, help="seconds between progress lines")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_program("fairseq-ecg-predict", parser, args, lambda say: _command(args, say))


def _command(args: argparse.Namespace, say) -> int:
    check_program_outputs([args.out, args.out.with_suffix(".skipped.tsv"),
                           *([args.explain / "explanations.tsv"] if args.explain else [])],
                          [args.inputs, args.checkpoint, *(p for p in [Path(args.thresholds or "")] if p.is_file())],
                          args.salt_from)
    if args.leads is not None:
        parse_leads(args.leads)
    predictor = load_predictor(args.checkpoint, args.normalize, args.calibration)
    if args.calibration == "valid" and predictor.calibration is None:
        say(f"{args.checkpoint}: no calibration saved (trained before calibration, or with task.calibration=none): "
            "probabilities as trained")
    change = lead_change(predictor.leads, args.leads) if args.leads is not None else ""
    if change:
        say(f"{change} (--leads)")
    thresholds = read_thresholds(args.thresholds, predictor, log=say)
    wanted = [c.strip() for c in args.explain_classes.split(",") if c.strip()] if args.explain_classes else None
    unknown = [c for c in wanted or [] if not explained_classes([], [], predictor.columns, [c])]
    if unknown:
        raise EcgError(f"--explain-classes: {unknown[0]!r} is not a class of the checkpoint (its columns: "
                       f"{', '.join(predictor.columns[:4])} ...; a code or a whole column name)")
    if wanted and not args.explain:
        raise EcgError("--explain-classes needs --explain DIR")
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    started = time.monotonic()
    with output_salt(args.salt_from, args.out):
        written, skipped = predict(predictor, args.inputs, args.out, thresholds, args.leads, args.batch_size,
                                   args.layout, device, args.progress_seconds, log=say, input_rate=args.sample_rate,
                                   withhold_poor_quality=args.withhold_poor_quality, explain=args.explain,
                                   explain_classes=wanted, explain_steps=args.explain_steps)
    seconds = time.monotonic() - started
    if written and record_file_layout(args.inputs) is not None:  # one ECG: its row on the terminal too
        print(record_summary(args.out, predictor, thresholds))
    where = f"; skipped records in {args.out.with_suffix('.skipped.tsv')}" if skipped else ""
    say(f"{written} records -> {args.out} ({len(skipped)} skipped, {seconds:.1f} s, "
        f"{written / max(seconds, 1e-9):.1f} records/s, normalize={predictor.input.normalize}, "
        f"calibration={'valid' if predictor.calibration is not None else 'none'}){where}")
    return 0 if written else 1  # every record skipped: nothing was predicted


if __name__ == "__main__":
    sys.exit(main())
