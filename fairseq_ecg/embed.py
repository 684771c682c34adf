"""``fairseq-ecg-embed``: one global embedding per record, from any checkpoint of the plugin.

    fairseq-ecg-embed --checkpoint CKPT MANIFEST.tsv|FOLDER|RECORD --out FILE.npy [--leads 6] [--batch-size N]
                      [--precision fp32|bf16]

Writes FILE.npy (records x encoder dimension, float32) and FILE.tsv (a header, then one line per
row: record, patient, source (a folder's record key, hashed for MUSE and DICOM exports; a manifest's waveform file), number of segments). A record's embedding is the mean of the encoder's global vectors
(time-averaged context, as CMSC and the downstream heads use) over its consecutive segments.
Pretraining (``ecg_wav2vec2``), classifier and identifier checkpoints all work: only their
encoder is used, so embeddings of all three are comparable in kind (the identifier's projection
head is not applied). Segment length, sampling rate, normalisation and (by default) leads come
from the checkpoint's task settings, so the input is prepared as in training; ``--normalize``
defaults to ``auto`` (the checkpoint's mode) and another mode is refused.

Records are read, cut and batched as ``fairseq-ecg-predict`` reads them (:mod:`fairseq_ecg.inference`):
a folder in any layout (resampled like the preparation step), a manifest (taken to be at the
checkpoint's sampling rate) or one record's file.
Records are skipped by predict's rules: one that cannot be read (a bad header field, a missing or
truncated waveform file), holds NaN or Inf samples, or is shorter than the encoder's receptive field
is named on stderr with its reason and listed in ``FILE.skipped.tsv`` (record, reason); the others
are embedded. A run that skipped every record writes no embeddings and exits 1. Problems with the
inputs as a whole (unusable checkpoint or manifest) end with one line and exit status 2; a full disk
with exit status 74.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

import numpy as np
import torch

from .inference import (RecordBatcher, check_program_outputs, iter_records, program_parser, run_over_records,
                        run_program, write_skipped)
from .leads import lead_change, missing_leads_summary, parse_leads
from .manifest import atomic_save_npy, atomic_write_text
from .models.ecg_wav2vec2 import EcgWav2Vec2Model
from .models.loading import load_model
from .normalization import resolve_normalization
from .models.precision import PRECISIONS, autocast_context, check_bf16_convolutions
from .preparation import output_salt


def encoder_batcher(encoder: EcgWav2Vec2Model, batch_size: int, device: torch.device,
                    precision: str = "fp32") -> RecordBatcher:
    """The encoder's global vectors [segments, dim], at ``precision`` (fairseq_ecg.models.precision),
    averaged per record in float64."""
    encoder.to(device)
    if precision == "bf16":
        check_bf16_convolutions(encoder)

    def forward(net_input: dict) -> np.ndarray:
        with autocast_context(precision, device):
            return encoder.extract_global(**net_input)["global"].double().cpu().numpy()
    return RecordBatcher(forward, lambda parts: parts.mean(axis=0), batch_size, device)


def build_parser() -> argparse.ArgumentParser:
    parser = program_parser("fairseq-ecg-embed", __doc__.split("\n\n")[0],
                            "checkpoint of ecg_wav2vec2, ecg_wav2vec2_classifier or ecg_wav2vec2_identifier",
                            "FILE.npy; the record list goes to FILE.tsv")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS,
                        help="bf16: the encoder under bf16 autocast (faster where the CPU or GPU has native bf16)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.out.suffix != ".npy":
        parser.error(f"--out must end in .npy, found {args.out}")
    return run_program("fairseq-ecg-embed", parser, args, lambda say: _command(args, say))


def _command(args: argparse.Namespace, say) -> int:
    rows_file, skipped_file = args.out.with_suffix(".tsv"), args.out.with_suffix(".skipped.tsv")
    check_program_outputs([args.out, rows_file, skipped_file], [args.inputs, args.checkpoint], args.salt_from)
    loaded = load_model(args.checkpoint, "encoder")
    expected = loaded.input
    leads = args.leads if args.leads is not None else expected.leads
    parse_leads(leads)
    change = lead_change(expected.leads, args.leads) if args.leads is not None else ""
    if change:
        say(f"{change} (--leads)")
    resolve_normalization(args.normalize, expected.normalize, str(args.checkpoint))
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    embedded, vectors, skipped = [], [], []
    with output_salt(args.salt_from, args.out):
        total, records = iter_records(args.inputs, expected.sample_rate, args.layout, args.sample_rate, say)
        batcher = encoder_batcher(loaded.model, args.batch_size, device, args.precision)
        for record, vector, count in run_over_records(records, total, expected, loaded.receptive_field, batcher,
                                                      leads, progress_seconds=float("inf"), say=say):
            if count:  # the row, not the waveform: memory holds one record at a time
                embedded.append((record._replace(wave=""), count))
                vectors.append(vector)
            else:
                skipped.append((record.name, vector))
    write_skipped(skipped_file, skipped)
    if not embedded:
        say(f"every record was skipped ({len(skipped)}, reasons in {skipped_file}); nothing was embedded")
        return 1
    lacking = missing_leads_summary((record.present for record, _ in embedded), leads)
    if lacking:
        say(lacking)
    embeddings = np.stack(vectors).astype(np.float32)
    lines = ["record\tpatient\tsource\tsegments"] + [
        f"{record.name}\t{record.patient}\t{record.source}\t{count}" for record, count in embedded]
    atomic_save_npy(args.out, embeddings, clean_stale=True)
    atomic_write_text(rows_file, "\n".join(lines) + "\n", clean_stale=True)
    where = f"; skipped records in {skipped_file}" if skipped else ""
    print(f"fairseq-ecg-embed: {embeddings.shape[0]} records x {embeddings.shape[1]} -> {args.out} "
          f"(records listed in {rows_file}; {len(skipped)} skipped{where})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
