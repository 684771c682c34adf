"""A trained model run over records: what ``fairseq-ecg-predict`` and ``fairseq-ecg-embed`` share.

Records come from a manifest, a folder in any layout (:mod:`fairseq_ecg.sources`, read and
resampled as the preparation reads them) or one record's own file; each is cut into the model's
input by :meth:`~fairseq_ecg.data.model_input.ModelInput.segments` (evaluation's cut, the
checkpoint's normalisation and leads), batched with the dataset's collation, and the outputs of
its segments are combined per record. Records stream through: memory holds one record and one
batch of segments. One record's failure (unreadable, NaN, shorter than the receptive field, or one
the model fails on) is that record's skip reason, never the run's end.
"""
from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple, Optional, Sequence, Union

import numpy as np
import torch

from .data.ecg_dataset import collate_segments
from .data.model_input import ModelInput
from .errors import EcgError
from .leads import NUM_LEADS, LeadSpec, parse_leads
from .manifest import (EXIT_MACHINE_ERROR, MachineError, ManifestError, atomic_write_text, read_manifest,
                       waveform_problem)
from .normalization import AUTO as NORMALIZE_AUTO
from .normalization import MODES
from .preparation import SALT_FROM_HELP, check_outputs, salt_beside
from .sources import AUTO as SOURCE_AUTO
from .sources import LayoutError, RecordError, RecordRef, detect_layout, discover, layouts, read_record, resample

# One record given as a file, by suffix: the layout that reads it (".npy": an array, --sample-rate)
RECORD_FILES = {".hea": "wfdb", ".mat": "wfdb", ".dat": "wfdb", ".xml": "muse_xml", ".dcm": "dicom", ".npy": "array"}


class RecordInput(NamedTuple):
    """One input record: its name (a folder's record key, hashed for MUSE and DICOM exports), its
    waveform [12, T] float32 at the model's rate or the reason it is unusable, the leads it has
    [12] bool (None when unusable), its patient and where it came from."""

    name: str
    wave: Union[np.ndarray, str]
    present: Optional[np.ndarray]
    patient: str = ""
    source: str = ""


def _error_text(error: Exception) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


def _from_record(key: str, record, sample_rate: float) -> RecordInput:
    wave = resample(record.signal, record.sample_rate, sample_rate).astype(np.float32)
    return RecordInput(key, wave, np.asarray(record.present, bool), record.patient or "", key)


def record_file_layout(path: Path) -> Optional[str]:
    """The layout of ``path`` when it names one record (a file of ``RECORD_FILES``, or a WFDB
    record name whose ``.hea`` is beside it), else None (a manifest, a folder)."""
    if path.is_dir():
        return None
    if path.suffix.lower() in RECORD_FILES:
        return RECORD_FILES[path.suffix.lower()]
    return "wfdb" if path.with_name(path.name + ".hea").is_file() else None


def read_record_file(path: Path, sample_rate: float, input_rate: Optional[float] = None) -> RecordInput:
    """One record from its file, read as its layout reads it in a folder, at ``sample_rate``. A
    ``.npy`` array is [12, T] or [T, 12], leads in the canonical order, in mV, at ``input_rate``."""
    layout = record_file_layout(path)
    try:
        if layout == "array":
            if input_rate is None:
                raise EcgError(f"{path}: a .npy record needs --sample-rate HZ (its sampling rate; leads "
                               f"{','.join(parse_leads('12'))} in that order, in mV)")
            wave = np.load(path, allow_pickle=False)
            if wave.ndim != 2 or NUM_LEADS not in wave.shape:
                shape = f"array of shape {wave.shape}, expected ({NUM_LEADS}, samples) or (samples, {NUM_LEADS})"
                return RecordInput(path.stem, shape, None)
            wave = np.asarray(wave if wave.shape[0] == NUM_LEADS else wave.T, dtype=np.float64)
            resampled = resample(wave, input_rate, sample_rate).astype(np.float32)
            return RecordInput(path.stem, resampled, np.any(wave != 0, axis=1), "", path.stem)
        if layout == "wfdb":
            stem = path.name if path.suffix.lower() not in RECORD_FILES else path.stem
            return _from_record(stem, read_record(RecordRef(path=path.parent / stem, name=stem, layout="wfdb")),
                                sample_rate)
        with tempfile.TemporaryDirectory() as folder:  # the layout's own discovery, over this file alone
            shutil.copyfile(path, Path(folder) / path.name)
            refs = list(discover(Path(folder), layout))
            if not refs:
                return RecordInput(path.name, f"not a record of the {layout} layout", None)
            return _from_record(refs[0].key, read_record(refs[0]), sample_rate)
    except RecordError as error:
        return RecordInput(path.stem, error.reason, None)
    except ValueError:
        raise
    except Exception as error:  # a record's failure is said, never a traceback
        return RecordInput(path.stem, _error_text(error), None)


def iter_records(inputs: Path, sample_rate: float, layout: str = SOURCE_AUTO, input_rate: Optional[float] = None,
                 say: Callable[[str], None] = print) -> tuple[int, Iterator[RecordInput]]:
    """(count, the records) of a folder, a manifest (taken to be at ``sample_rate``) or one
    record's file, each at ``sample_rate``; what ``auto`` recognised in a folder is said once."""
    if record_file_layout(inputs) is not None:
        return 1, iter([read_record_file(inputs, sample_rate, input_rate)])
    if not inputs.exists():
        raise ManifestError(f"{inputs}: no such file or folder")
    if inputs.is_dir():
        try:
            if layout == SOURCE_AUTO:
                say(f"{inputs}: layout {detect_layout(inputs)} (recognised; --layout NAME reads it otherwise)")
            refs = list(discover(inputs, layout))
        except LayoutError as error:
            raise ManifestError(str(error)) from None
        if not refs:
            raise ManifestError(f"{inputs}: no records found (layout {layout})")

        def from_folder() -> Iterator[RecordInput]:
            for ref in refs:
                try:
                    yield _from_record(ref.key, read_record(ref), sample_rate)
                except RecordError as error:
                    yield RecordInput(ref.key, error.reason, None)
                except Exception as error:  # a record must never stop the run
                    yield RecordInput(ref.key, _error_text(error), None)
        return len(refs), from_folder()
    manifest = read_manifest(inputs)
    if not manifest.rows:
        raise ManifestError(f"{inputs}: no records")

    def from_manifest() -> Iterator[RecordInput]:
        for number, row in enumerate(manifest.rows):
            name = row.record or row.relative_path
            problem = waveform_problem(manifest, number)
            if problem:
                yield RecordInput(name, f"line {number + 2}: {problem}", None)
                continue
            wave = np.asarray(np.load(manifest.file_of(number), mmap_mode="r"), dtype=np.float32)
            yield RecordInput(name, wave, row.present_leads, row.patient, str(manifest.file_of(number)))
    return len(manifest), from_manifest()


def unusable_signal(wave: np.ndarray, sample_rate: float, min_samples: int) -> Optional[str]:
    """Why a waveform [leads, T] cannot go through the model, or None: a NaN would poison its batch;
    a record shorter than the encoder's receptive field gives no frame, a convolution error."""
    if not np.isfinite(wave).all():
        return "NaN or Inf samples"
    if wave.shape[1] < min_samples:
        return (f"{wave.shape[1]} samples ({wave.shape[1] / sample_rate:.3g} s) is shorter than "
                f"the model's receptive field of {min_samples} samples")
    return None


def write_skipped(path: Path, skipped: Sequence[tuple[str, str]]) -> None:
    """``OUT.skipped.tsv`` (record, reason) when records were skipped; an earlier run's is removed."""
    if skipped:
        rows = "".join(f"{n}\t{' '.join(r.split())}\n" for n, r in skipped)
        atomic_write_text(path, "record\treason\n" + rows, clean_stale=True)
    elif path.exists():
        path.unlink()


class RecordBatcher:
    """Collects the segments of consecutive records into batches of ``batch_size``, runs
    ``forward`` (``net_input`` -> [segments, D]) on each and returns the finished records in
    order, their segment outputs combined by ``combine`` ([segments, D] -> [D])."""

    def __init__(self, forward: Callable[[dict], np.ndarray], combine: Callable[[np.ndarray], np.ndarray],
                 batch_size: int, device: torch.device) -> None:
        self.forward, self.combine, self.batch_size, self.device = forward, combine, batch_size, device
        self.pending: list[tuple[int, torch.Tensor]] = []
        self.outputs: dict[int, list[np.ndarray]] = {}
        self.expected: dict[int, int] = {}
        self.failed: dict[int, str] = {}  # record -> why the model could not run on it

    def flush(self) -> None:
        """Run the pending segments; a batch that fails is run again record by record, so that one
        record's failure (its reason kept in ``failed``) loses no other record's output."""
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        try:
            with torch.no_grad():
                net_input = {k: v.to(self.device) for k, v in collate_segments([s for _, s in pending]).items()}
                outputs = self.forward(net_input)
        except (RuntimeError, ValueError) as error:
            if len({record for record, _ in pending}) == 1:
                self.failed[pending[0][0]] = _error_text(error)
                return
            for record in dict.fromkeys(r for r, _ in pending):
                self.pending = [(r, s) for r, s in pending if r == record]
                self.flush()
            return
        for (record, _), output in zip(pending, outputs):
            if record in self.outputs:  # not a record that failed in an earlier batch
                self.outputs[record].append(output)

    def add(self, record: int, segments: Sequence[torch.Tensor]) -> None:
        self.expected[record] = len(segments)
        self.outputs[record] = []
        for segment in segments:
            self.pending.append((record, segment))
            if len(self.pending) >= self.batch_size:
                self.flush()

    def finished(self) -> Iterator[tuple[int, Union[np.ndarray, str], int]]:
        """(record, combined output or the reason it failed, segments) of each record whose
        segments have all run, in order."""
        for record in sorted(self.outputs):
            if record in self.failed:
                del self.outputs[record]
                yield record, self.failed.pop(record), self.expected.pop(record)
                continue
            if len(self.outputs[record]) < self.expected[record]:
                break
            yield record, self.combine(np.stack(self.outputs.pop(record))), self.expected.pop(record)


def run_over_records(records: Iterable[RecordInput], total: int, expected: ModelInput, min_samples: int,
                     batcher: RecordBatcher, leads: LeadSpec = None, progress_seconds: float = 10.0,
                     say: Callable[[str], None] = print) -> Iterator[tuple[RecordInput, Union[np.ndarray, str], int]]:
    """Each record with its combined output and segment count, in order, or with the reason it
    was skipped (said through ``say``) and 0; progress every ``progress_seconds``."""
    waiting: dict[int, RecordInput] = {}
    skipped = 0
    started = last = time.monotonic()

    def finished() -> Iterator[tuple[RecordInput, Union[np.ndarray, str], int]]:
        nonlocal skipped
        for number, output, count in batcher.finished():
            record = waiting.pop(number)
            if isinstance(output, str):
                output, count = f"the model failed on it ({output})", 0
            if count == 0:
                skipped += 1
                say(f"skipped {record.name}: {output}")
            yield record, output, count

    for number, record in enumerate(records):
        reason = record.wave if isinstance(record.wave, str) else unusable_signal(record.wave, expected.sample_rate,
                                                                                  min_samples)
        if reason:
            yield from finished()
            skipped += 1
            say(f"skipped {record.name}: {reason}")
            yield record, reason, 0
        else:
            waiting[number] = record
            batcher.add(number, expected.segments(record.wave, leads))
            yield from finished()
        now = time.monotonic()
        if now - last >= progress_seconds:
            last = now
            say(f"{number + 1}/{total} records ({skipped} skipped), {(number + 1) / (now - started):.1f} records/s")
    batcher.flush()
    yield from finished()


def run_program(program: str, parser: argparse.ArgumentParser, args: argparse.Namespace,
                command: Callable[[Callable[[str], None]], int]) -> int:
    """The frame of a program that runs a model (``fairseq-ecg-predict``, ``fairseq-ecg-embed``):
    fairseq's import noise off, ``--batch-size`` checked, ``command(say)`` run with ``say`` writing
    the program's lines to stderr; an input error ends with one line and exit status 2, a machine
    error (the disk, not the input) with one line and 74, anything else (a bug) with its traceback."""
    warnings.filterwarnings("ignore", message=".*weight_norm` is deprecated", category=FutureWarning)
    logging.getLogger().setLevel(logging.WARNING)  # importing fairseq sets the root logger to DEBUG
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    try:
        return command(lambda text: print(f"{program}: {text}", file=sys.stderr, flush=True))
    except MachineError as error:  # nothing half-written is kept
        print(f"{program}: error: {error}", file=sys.stderr)
        return EXIT_MACHINE_ERROR
    except (EcgError, OSError) as error:
        print(f"{program}: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2


def program_parser(program: str, description: str, checkpoint_help: str, out_help: str) -> argparse.ArgumentParser:
    """The command line that ``fairseq-ecg-predict`` and ``fairseq-ecg-embed`` share: the input,
    the checkpoint, the output, how records are read and how the model is fed."""
    parser = argparse.ArgumentParser(prog=program, description=description)
    parser.add_argument("inputs", type=Path,
                        help="a manifest (.tsv), a folder of records (any --layout) or one record's file: .hea, "
                             ".mat or the WFDB record name, MUSE .xml, DICOM .dcm, .npy (with --sample-rate)")
    parser.add_argument("--sample-rate", type=float, default=None, metavar="HZ",
                        help="the sampling rate of a .npy input ([12, T] or [T, 12], canonical lead order, mV)")
    parser.add_argument("--checkpoint", type=Path, required=True, help=checkpoint_help)
    parser.add_argument("--out", type=Path, required=True, help=out_help)
    parser.add_argument("--leads", default=None,
                        help="leads to keep (others zeroed): preset 12/6/4/3/2/1 or [I,II,V2]; default: the checkpoint's")
    parser.add_argument("--normalize", default=NORMALIZE_AUTO, choices=(NORMALIZE_AUTO,) + MODES,
                        help="input normalisation; auto (default) = the checkpoint's, anything else must equal it")
    parser.add_argument("--layout", default=SOURCE_AUTO, choices=(SOURCE_AUTO,) + layouts(),
                        help="archive layout of a folder input (fairseq_ecg.sources; auto: recognised)")
    parser.add_argument("--batch-size", type=int, default=32, help="segments per forward pass")
    parser.add_argument("--cpu", action="store_true", help="stay on the CPU even when a GPU is present")
    parser.add_argument("--salt-from", type=Path, default=None, metavar="DIR", help=SALT_FROM_HELP)
    return parser


def check_program_outputs(outputs: Sequence[Path], inputs: Sequence[Path], salt_from: Optional[Path]) -> None:
    """Refuse, in one line, outputs that are inputs or a prepared folder's files; the salt file
    beside the first output counts as an output unless ``--salt-from`` names the salt's folder."""
    check_outputs([*outputs, *([] if salt_from else [salt_beside(outputs[0])])], inputs)
