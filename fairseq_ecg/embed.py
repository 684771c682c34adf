"""``fairseq-ecg-embed``: one global embedding per record, from any checkpoint of the plugin.

    fairseq-ecg-embed --checkpoint CKPT MANIFEST.tsv|WFDB_FOLDER --out FILE.npy [--leads 6] [--batch-size N]
                      [--precision fp32|bf16]

Writes FILE.npy (records x encoder dimension, float32) and FILE.tsv (a header, then one line per
row: record, patient, source (a folder's record key, hashed for MUSE and DICOM exports; a manifest's waveform file), number of segments). A record's embedding is the mean of the encoder's global vectors
(time-averaged context, as CMSC and the downstream heads use) over its consecutive segments.
Pretraining (``ecg_wav2vec2``), classifier and identifier checkpoints all work: only their
encoder is used, so embeddings of all three are comparable in kind (the identifier's projection
head is not applied). Segment length, sampling rate, normalisation and (by default) leads come
from the checkpoint's task settings, so the input is prepared as in training; ``--normalize``
defaults to ``auto`` (the checkpoint's mode) and another mode is refused.

A folder is read with :mod:`fairseq_ecg.sources` (any layout, resampled like the preparation
step) into a temporary manifest; a manifest is taken to be at the checkpoint's sampling rate.
Records are skipped by predict's rules: one that cannot be read (a bad header field, a missing or
truncated waveform file), holds NaN or Inf samples, or is shorter than the encoder's receptive field
is named on stderr with its reason and listed in ``FILE.skipped.tsv`` (record, reason); the others
are embedded. A run that skipped every record writes no embeddings and exits 1. Problems with the
inputs as a whole (unusable checkpoint or manifest) end with one line and exit status 2; a full disk
with exit status 74.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from .errors import EcgError
from .data import EcgSegmentDataset
from .leads import lead_change, mask_to_string, missing_leads_summary, parse_leads
from .manifest import (EXIT_MACHINE_ERROR, MachineError, Manifest, ManifestError, ManifestRow, atomic_save_npy,
                       atomic_write_text, read_manifest, waveform_problem)
from .models.ecg_wav2vec2 import EcgWav2Vec2Model
from .models.loading import load_model
from .normalization import AUTO as NORMALIZE_AUTO
from .normalization import MODES, resolve_normalization
from .precision import PRECISIONS, autocast_context, check_bf16_convolutions
from .predict import unusable_signal, write_skipped
from .preparation import SALT_FROM_HELP, check_outputs, output_salt, salt_beside
from .sources import AUTO, layouts


def wfdb_manifest(folder: Path, sample_rate: float, workdir: Path, layout: str = AUTO,
                  min_samples: int = 1) -> tuple[Manifest, list[str], list[tuple[str, str]]]:
    """Read every record below ``folder`` (any layout), resample to ``sample_rate`` and write the
    usable ones as a manifest in ``workdir``. Returns the manifest, the source of each row (its key
    in ``folder``; MUSE, DICOM: the salted hash, never the export's file name, which carries the
    MRN) and the skipped records (key, reason), by predict's rules (:func:`unusable_signal`)."""
    from .sources import LayoutError, RecordError, discover, read_record, resample

    rows, sources, skipped = [], [], []
    try:
        refs = list(discover(folder, layout))
    except LayoutError as error:
        raise ManifestError(str(error)) from None
    if not refs:
        raise ManifestError(f"{folder}: no records found (layout {layout})")
    for number, ref in enumerate(refs):
        try:
            record = read_record(ref)
            signal = resample(record.signal, record.sample_rate, sample_rate).astype(np.float32)
        except RecordError as error:
            skipped.append((ref.key, error.reason))
            continue
        except MachineError:
            raise
        except Exception as error:  # one record must never stop the run
            skipped.append((ref.key, f"{type(error).__name__}: {' '.join(str(error).split())}"))
            continue
        reason = unusable_signal(signal, sample_rate, min_samples)
        if reason:
            skipped.append((ref.key, reason))
            continue
        relative = f"waves/{number}.npy"
        atomic_save_npy(workdir / relative, signal)
        rows.append(ManifestRow(relative, int(signal.shape[1]), mask_to_string(record.present), record.patient,
                                record.sample_rate, ref.key))
        sources.append(ref.key)
    return Manifest(root=workdir, rows=rows, path=folder), sources, skipped


def usable_rows(manifest: Manifest, sample_rate: float,
                min_samples: int = 1) -> tuple[Manifest, list[str], list[tuple[str, str]]]:
    """The rows of ``manifest`` whose waveform can be embedded, their waveform files and the
    skipped rows (record, reason): a missing or unreadable file, NaN samples or a record shorter than
    the receptive field skips that row only, as in predict."""
    kept, sources, skipped = [], [], []
    for index, row in enumerate(manifest.rows):
        name = row.record or row.relative_path
        reason = waveform_problem(manifest, index)
        if not reason:
            reason = unusable_signal(np.load(manifest.file_of(index), mmap_mode="r"), sample_rate, min_samples)
        if reason:
            skipped.append((name, f"line {index + 2}: {reason}"))
            continue
        kept.append(row)
        sources.append(str(manifest.file_of(index)))
    return Manifest(root=manifest.root, rows=kept, path=manifest.path), sources, skipped


@torch.no_grad()
def embed_records(encoder: EcgWav2Vec2Model, dataset: EcgSegmentDataset, batch_size: int,
                  device: torch.device, precision: str = "fp32") -> tuple[np.ndarray, np.ndarray]:
    """Mean global vector per manifest row [rows, dim] and the segment count per row; the encoder
    runs at ``precision`` (see fairseq_ecg.precision), the averaging in float64."""
    rows = len(dataset.manifest)
    sums = torch.zeros(rows, encoder.cfg.encoder_embed_dim, dtype=torch.float64)
    counts = torch.zeros(rows, dtype=torch.float64)
    encoder.to(device)
    if precision == "bf16":
        check_bf16_convolutions(encoder)
    for start in range(0, len(dataset), batch_size):
        batch = dataset.collater([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        net_input = {k: v.to(device) for k, v in batch["net_input"].items()}
        with autocast_context(precision, device):
            pooled = encoder.extract_global(**net_input)["global"]
        pooled = pooled.double().cpu()
        sums.index_add_(0, batch["row"], pooled)
        counts.index_add_(0, batch["row"], torch.ones(len(pooled), dtype=torch.float64))
    return (sums / counts.clamp(min=1).unsqueeze(1)).float().numpy(), counts.long().numpy()


def note_other_leads(asked: Optional[str], trained) -> None:
    """One line on stderr when ``--leads`` is not the lead set the model was trained on (allowed)."""
    change = lead_change(trained, asked) if asked is not None else ""
    if change:
        print(f"fairseq-ecg-embed: {change} (--leads)", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fairseq-ecg-embed", description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", type=Path, help="a manifest (.tsv) or an archive folder (any --layout)")
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="checkpoint of ecg_wav2vec2, ecg_wav2vec2_classifier or ecg_wav2vec2_identifier")
    parser.add_argument("--out", type=Path, required=True, help="FILE.npy; the record list goes to FILE.tsv")
    parser.add_argument("--leads", default=None,
                        help="leads to keep (others zeroed): preset 12/6/4/3/2/1 or [I,II,V2]; default: the checkpoint's")
    parser.add_argument("--batch-size", type=int, default=32, help="segments per forward pass")
    parser.add_argument("--layout", default=AUTO, choices=(AUTO,) + layouts(),
                        help="archive layout of a folder input (fairseq_ecg.sources; auto: recognised)")
    parser.add_argument("--normalize", default=NORMALIZE_AUTO, choices=(NORMALIZE_AUTO,) + MODES,
                        help="input normalisation; auto (default) = the checkpoint's, anything else must equal it")
    parser.add_argument("--salt-from", type=Path, default=None, metavar="DIR", help=SALT_FROM_HELP)
    parser.add_argument("--cpu", action="store_true", help="stay on the CPU even when a GPU is present")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS,
                        help="bf16: the encoder under bf16 autocast (faster where the CPU or GPU has native bf16)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*weight_norm` is deprecated", category=FutureWarning)
    logging.getLogger().setLevel(logging.WARNING)  # importing fairseq sets the root logger to DEBUG
    if args.out.suffix != ".npy":
        parser.error(f"--out must end in .npy, found {args.out}")
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    try:
        salt_file = [] if args.salt_from else [salt_beside(args.out)]
        check_outputs([args.out, args.out.with_suffix(".tsv"), args.out.with_suffix(".skipped.tsv"), *salt_file],
                      [args.inputs, args.checkpoint])
        loaded = load_model(args.checkpoint, "encoder")
        encoder, expected = loaded.model, loaded.input
        leads = args.leads if args.leads is not None else expected.leads
        parse_leads(leads)
        note_other_leads(args.leads, expected.leads)
        normalize = resolve_normalization(args.normalize, expected.normalize, str(args.checkpoint))
        rate, segment, min_samples = expected.sample_rate, expected.segment_samples, loaded.receptive_field
        skipped_file = args.out.with_suffix(".skipped.tsv")
        with tempfile.TemporaryDirectory(prefix="fairseq-ecg-embed-") as workdir:
            if args.inputs.is_dir():
                with output_salt(args.salt_from, args.out):
                    manifest, sources, skipped = wfdb_manifest(args.inputs, rate, Path(workdir), args.layout,
                                                               min_samples)
            else:
                manifest = read_manifest(args.inputs)
                if not manifest.rows:
                    raise ManifestError(f"{args.inputs}: no records")
                manifest, sources, skipped = usable_rows(manifest, rate, min_samples)
            for name, reason in skipped:
                print(f"fairseq-ecg-embed: skipped {name}: {reason}", file=sys.stderr)
            write_skipped(skipped_file, skipped)
            if not manifest.rows:
                print(f"fairseq-ecg-embed: every record was skipped ({len(skipped)}, reasons in {skipped_file}); "
                      "nothing was embedded", file=sys.stderr)
                return 1
            lacking = missing_leads_summary((row.present_leads for row in manifest.rows), leads)
            if lacking:
                print(f"fairseq-ecg-embed: {lacking}", file=sys.stderr)
            dataset = EcgSegmentDataset(manifest, segment, cut="consecutive", leads=leads,
                                        normalize=normalize, shuffle=False)
            device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
            embeddings, segments = embed_records(encoder, dataset, args.batch_size, device, args.precision)
        lines = ["record\tpatient\tsource\tsegments"] + [
            f"{row.record}\t{row.patient}\t{source}\t{count}"
            for row, source, count in zip(manifest.rows, sources, segments)
        ]
        atomic_save_npy(args.out, embeddings, clean_stale=True)
        atomic_write_text(args.out.with_suffix(".tsv"), "\n".join(lines) + "\n", clean_stale=True)
    except MachineError as error:  # the disk, not the input: nothing half-written is kept
        print(f"fairseq-ecg-embed: error: {error}", file=sys.stderr)
        return EXIT_MACHINE_ERROR
    except (EcgError, OSError) as error:  # the user's input; anything else is a bug: its traceback
        print(f"fairseq-ecg-embed: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    where = f"; skipped records in {skipped_file}" if skipped else ""
    print(f"fairseq-ecg-embed: {embeddings.shape[0]} records x {embeddings.shape[1]} -> {args.out} "
          f"(records listed in {args.out.with_suffix('.tsv')}; {len(skipped)} skipped{where})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
