"""``fairseq-ecg-manifest``: turn ECG archives into waveform files and the manifests of every task.

    fairseq-ecg-manifest SRC [SRC ...] --dest DIR [--layout auto|NAME] [--labels CSV]
        [--workers N] [--sample-rate 500] [--split-by auto|strat-fold|patient-hash]
        [--valid-percent 10] [--test-percent 10] [--seed S]
        [--min-seconds 5] [--finetune-train-limit N] [--ptbxl-labels TASK] [--skip-poor-quality] [--force]

Records stream through a process pool one at a time (memory stays bounded whatever the archive
size): each is read (:mod:`fairseq_ecg.sources`), resampled with an anti-aliasing polyphase
filter and written as ``DIR/waves/<relative name>.npy``. ``DIR/records.tsv`` is a journal,
appended as records finish: a re-run (after a crash or Ctrl-C) reuses every record it lists whose
``.npy`` is there with the listed shape, and the final files come out byte for byte as an
uninterrupted run writes them (they are written in the sorted record order at the end). Bad
records never stop the run: each becomes one line of ``DIR/skipped.tsv`` with its reason. A
recording present twice (CinC 2021's copy of PTB-XL, identical files under two names) goes to one
split only: :func:`find_duplicates` keeps one copy before the split and ``DIR/duplicates.tsv``
lists the others.
The folder layout and formats are documented in ``manifests/README.md``.

``--ptbxl-labels`` picks the classes of ``finetune/``: ``snomed`` (default) the CinC 2021 scored
classes, or one of PTB-XL's benchmark tasks (``all``, ``diagnostic``, ...,
:func:`fairseq_ecg.labels.ptbxl_task_labels`) with the classes present in the archive; a record
without a label in that task stays in ``pretrain/`` and ``identify/`` only, counted in the summary.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import math
import multiprocessing
import os
import re
import sys
import time
from collections import Counter
from contextlib import closing, suppress
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np

from .labels import PTBXL_TASKS, SNOMED_TASK, LabelSet, scored_labels
from .leads import NUM_LEADS, mask_to_string
from .signal_quality import FLAGS, GOOD, quality_text, record_flags
from .manifest import (
    CLASSES_FILE, EXIT_MACHINE_ERROR, LABEL_SUFFIX, MachineError, ManifestError, ManifestRow, atomic_save_npy,
    atomic_write_text, label_path, machine_error, read_manifest, write_classes, write_labels, write_manifest,
)
from .prepared import (DUPLICATES, FINETUNE, IDENTIFY, IDENTIFY_HELD_OUT, GALLERY, JOURNAL, PRETRAIN, PRETRAIN_SPLITS,
                       PROBE, SALT_FILE, SKIPPED, SPLITS, STATEMENTS, WAVES, held_out, prepared_files)
from .sources.physionet2021 import ptbxl_ecg_id
from .sources import (
    AUTO, DEFAULT_BOUNDS, DEFAULT_MIN_SECONDS, MAT_NAMED_NOTE, Bounds, PATIENTS_CSV, UNKNOWN_LEAD_NOTE, PTBXL_DATABASE, LayoutError, RecordError, RecordRef, detect_layout, unread_files, MIXED_LAYOUTS,
    discover, get_source, layouts, patient_salt_from, read_record, resample,
)
from .sources.ptbxl import ptbxl_task_refs

PROG = "fairseq-ecg-manifest"
JOURNAL_MARK = f"# {PROG} journal"  # how a journal's first line starts: a folder holding one is prepared
JOURNAL_COLUMNS = ("key", "status", "num_samples", "lead_mask", "source_rate", "record", "dx", "derived",
                   "statement", "sha256", "quality", "note")
DIGEST, QUALITY = JOURNAL_COLUMNS.index("sha256"), JOURNAL_COLUMNS.index("quality")
SPLIT_BY = ("auto", "strat-fold", "patient-hash")


@dataclass(frozen=True)
class Settings:
    dest: Path
    sample_rate: float = 500.0
    min_seconds: float = DEFAULT_MIN_SECONDS
    force: bool = False
    sources: tuple[str, ...] = ()
    layout: str = ""
    bounds: Bounds = DEFAULT_BOUNDS

    @property
    def signature(self) -> str:
        """First line of the journal: a journal written for other sources or settings is not reused."""
        return (f"{JOURNAL_MARK}: sample_rate={self.sample_rate:g} min_seconds={self.min_seconds:g} "
                f"layout={self.layout} sources={','.join(self.sources)} bounds={self.bounds.describe()}")


@dataclass(frozen=True)
class Outcome:
    """What became of one record: ``written``, ``reused`` or ``skipped`` (``note`` is then the
    reason and ``kind`` its category); ``dx`` are the header's codes."""

    key: str
    status: str
    num_samples: int = 0
    lead_mask: str = ""
    source_rate: float = 0.0
    record: str = ""
    dx: tuple[str, ...] = ()
    note: str = ""
    kind: str = ""
    derived: str = ""  # leads the source computed from others (MUSE: III,aVR,aVL,aVF)
    statement: str = ""  # free text kept in statements.tsv (machine report, diagnosis statements)
    digest: str = ""  # sha256 of the prepared waveform (see waveform_digest): finds recordings present twice
    quality: str = ""  # the signal-quality checks its present leads fail (fairseq_ecg.signal_quality), or "ok"

    @property
    def ok(self) -> bool:
        return self.status != "skipped"

    def journal_line(self) -> str:
        return "\t".join([_field(self.key), "ok" if self.ok else "skipped", str(self.num_samples), self.lead_mask,
                          f"{self.source_rate:g}", _field(self.record), ",".join(self.dx), self.derived,
                          _one_line(self.statement), self.digest, self.quality, _one_line(self.note)])

    @classmethod
    def from_journal(cls, line: str) -> Optional["Outcome"]:
        """A journal line, or None when it is not a complete ``ok`` line (those are recomputed)."""
        fields = line.split("\t")
        if len(fields) != len(JOURNAL_COLUMNS) or fields[1] != "ok":
            return None
        try:
            num_samples, rate = int(fields[2]), float(fields[4])
        except ValueError:
            return None
        if (num_samples <= 0 or len(fields[3]) != NUM_LEADS or set(fields[3]) - {"0", "1"}
                or not re.fullmatch(r"[0-9a-f]{64}", fields[DIGEST])):
            return None
        dx = tuple(code for code in fields[6].split(",") if code)
        return cls(fields[0], "reused", num_samples, fields[3], rate, fields[5], dx, fields[-1],
                   derived=fields[7], statement=fields[8], digest=fields[DIGEST], quality=fields[QUALITY])


def _one_line(text: str) -> str:
    return _field(" ".join(str(text).split()))


def _field(text: str) -> str:
    """``text`` as one TSV field in UTF-8: tabs and line breaks escaped, and so are the bytes of a
    file name in another encoding (lone surrogates). Only names skipped for that reason have any."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text.replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


SALT_FROM_HELP = (f"a folder prepared by {PROG}: hash MUSE/DICOM patient ids and file names with its salt, so "
                  "the ids match its manifests (default: FAIRSEQ_ECG_PATIENT_SALT, else a new random salt kept in "
                  "OUT's .patient_salt.txt)")


def output_salt(salt_from: Optional[Path], out: Path):
    """The salt context of a command that writes no prepared folder (predict, embed): the salt of
    the prepared folder ``salt_from``, else (or ``FAIRSEQ_ECG_PATIENT_SALT``) one kept beside ``out``
    (``OUT.patient_salt.txt``), created on first need, so that re-runs give the same hashes."""
    if salt_from is not None:
        return patient_salt_from(Path(salt_from) / SALT_FILE, create=False)
    return patient_salt_from(salt_beside(out))


def salt_beside(out: Path) -> Path:
    """Where predict and embed keep the salt they made for ``out`` (see :func:`output_salt`)."""
    return Path(out).with_suffix(".patient_salt.txt")


def wave_relative_path(key: str) -> str:
    return f"{WAVES}/{key}.npy"


def _npy_shape(path: Path) -> Optional[tuple[int, ...]]:
    """Shape of a float32 C-order ``.npy`` from its header alone; None if absent or otherwise."""
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(handle)
            expected = handle.tell() + int(np.prod(shape)) * dtype.itemsize
        if fortran or dtype != np.float32 or os.path.getsize(path) != expected:
            return None
        return tuple(shape)
    except (OSError, ValueError):
        return None


def waveform_digest(signal: np.ndarray) -> str:
    """sha256 of a prepared waveform (float32 (12, T) after resampling, C order, with its shape):
    two records with the same digest are the same recording, whatever their names or sources."""
    signal = np.ascontiguousarray(signal, dtype=np.float32)
    return hashlib.sha256(repr(signal.shape).encode() + signal.tobytes()).hexdigest()


def process_record(settings: Settings, task: tuple[RecordRef, Optional[Outcome]]) -> Outcome:
    """Read, resample and save one record (in a worker process), or reuse its earlier result.

    Never raises for a bad record: the reason comes back as a ``skipped`` outcome."""
    ref, cached = task
    target = settings.dest / wave_relative_path(ref.key)
    if cached is not None and not settings.force and _npy_shape(target) == (NUM_LEADS, cached.num_samples):
        return cached
    try:
        record = read_record(ref, settings.min_seconds, settings.bounds)
        signal = resample(record.signal, record.sample_rate, settings.sample_rate)
        atomic_save_npy(target, signal)
        return Outcome(ref.key, "written", int(signal.shape[1]), mask_to_string(record.present),
                       record.sample_rate, record.name, record.header_codes, "; ".join(record.notes),
                       derived=",".join(record.derived), statement=record.statement,
                       digest=waveform_digest(signal),
                       quality=quality_text(record_flags(signal, settings.sample_rate, np.asarray(record.present, bool))))
    except RecordError as error:
        return Outcome(ref.key, "skipped", record=ref.name, note=error.reason, kind=error.kind)
    except MachineError:  # the disk, not the record: the run stops (main)
        raise
    except Exception as error:  # a bad record must not stop the run; say what happened instead
        return Outcome(ref.key, "skipped", record=ref.name, kind="unexpected error",
                       note=_one_line(f"unexpected error ({type(error).__name__}: {error})"))


def split_of(patient: str, seed: int, valid_percent: float, test_percent: float) -> str:
    """``train``/``valid``/``test`` from a hash of (seed, patient): deterministic, the same for
    every record of a patient, and independent of which other patients the archive holds."""
    digest = hashlib.sha256(f"{seed}\0{patient}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0 ** 64 * 100.0
    if u < test_percent:
        return "test"
    return "valid" if u < test_percent + valid_percent else "train"


SAME_WAVEFORM = "identical waveform"
SAME_ECG_ID = "CinC 2021 HR{0:05d} is PTB-XL ecg_id {0}"


def find_duplicates(refs: Sequence[RecordRef], outcomes: Sequence[Outcome]) -> dict[str, tuple[str, str]]:
    """``copy key -> (kept key, how)`` for every usable record that is another's recording: the
    same prepared waveform (:func:`waveform_digest`, across and within sources) or CinC 2021's
    ``HRnnnnn`` beside PTB-XL's ecg_id ``nnnnn`` (:func:`~fairseq_ecg.sources.physionet2021.ptbxl_ecg_id`).
    Each group of copies keeps one: PTB-XL's (it carries the patient id and the fold), else the
    first in the order of ``refs``. It depends on the journal's digests only, so a resumed run
    finds the same. Near-duplicates (a recording cut or filtered differently) are not looked for."""
    usable = [(index, ref, outcome) for index, (ref, outcome) in enumerate(zip(refs, outcomes)) if outcome.ok]
    parent = {ref.key: ref.key for _, ref, _ in usable}

    def root(key: str) -> str:
        while parent[key] != key:
            parent[key] = key = parent[parent[key]]
        return key

    first_of: dict[object, str] = {}
    for _, ref, outcome in usable:
        name = ptbxl_ecg_id(ref)
        links = [("sha256", outcome.digest)] if outcome.digest else []
        for link in links + ([("ecg_id", name[1])] if name else []):
            parent[root(ref.key)] = root(first_of.setdefault(link, ref.key))
    groups: dict[str, list] = {}
    for item in usable:
        groups.setdefault(root(item[1].key), []).append(item)
    duplicates = {}
    for members in [group for group in groups.values() if len(group) > 1]:
        _, kept, kept_outcome = min(members, key=lambda m: (m[1].layout != "ptbxl", m[0]))
        kept_id = ptbxl_ecg_id(kept)
        for _, ref, outcome in members:
            if ref is kept:
                continue
            how = [SAME_WAVEFORM] if outcome.digest == kept_outcome.digest else []
            ecg_id = ptbxl_ecg_id(ref)
            if ecg_id and kept_id and ecg_id[1] == kept_id[1] and ecg_id[0] != kept_id[0]:
                how.append(SAME_ECG_ID.format(ecg_id[1]))
            duplicates[ref.key] = (kept.key, "; ".join(how) or "a copy of a copy of it")
    return duplicates


def load_journal(path: Path, settings: Settings) -> dict[str, Outcome]:
    """``ok`` entries of an earlier run with the same settings. A line cut short by a crash (no
    final newline) is ignored; skipped records are always tried again."""
    if settings.force or not path.is_file():
        return {}
    lines = path.read_text(errors="replace").split("\n")[:-1]  # after the last newline: incomplete (or empty)
    if not lines or lines[0] != settings.signature:
        return {}
    outcomes = (Outcome.from_journal(line) for line in lines[1:])
    return {outcome.key: outcome for outcome in outcomes if outcome is not None}


def journal_sources(path: Path) -> tuple[str, ...]:
    """The source folders a journal's run prepared (its signature line); () without a journal."""
    try:
        with open(path, errors="replace") as handle:
            first = handle.readline()
    except FileNotFoundError:
        return ()
    found = re.search(r" sources=(.*) bounds=", first)
    return tuple(s for s in found.group(1).split(",") if s) if first.startswith(JOURNAL_MARK) and found else ()


def _other_archive(journal: Path, sources: Sequence[str]) -> str:
    """Why ``--dest`` may not be prepared from ``sources``: it holds another archive, whose waveforms
    would stay behind as orphans and whose journal would be replaced. Listing the folder's sources
    with the new one adds to it deliberately (duplicates across sources are then checked)."""
    before = journal_sources(journal)
    if all(s in sources for s in before):
        return ""
    return (f"{journal.parent} was prepared from {', '.join(before)}, not from {', '.join(sources)}: "
            "choose another --dest (or empty this one), or name its sources too to add to it "
            f"({PROG} {' '.join(dict.fromkeys((*before, *sources)))} --dest {journal.parent})")


def journal_text(settings: Settings, outcomes: Iterable[Outcome]) -> str:
    lines = [settings.signature, "\t".join(JOURNAL_COLUMNS)] + [o.journal_line() for o in outcomes]
    return "\n".join(lines) + "\n"


def check_outputs(outputs: Sequence[Path], inputs: Sequence[Path]) -> None:
    """:class:`ManifestError` (one line) when a command that uses a trained model would write over
    what it reads or over a prepared folder: an input file (a manifest with its label file and
    class list, a checkpoint), an existing file inside an input folder, a file preparation wrote
    (journal, manifests, labels, waveforms), or any existing manifest, label file or class list.
    Paths are resolved, so a link to an input counts as the input."""
    protected: dict[Path, str] = {}
    folders = []
    for given in inputs:
        path = Path(given).resolve()
        if path.is_dir():
            folders.append(path)
            continue
        protected[path] = f"the input {given}"
        if path.suffix == ".tsv":  # a manifest's own side files
            protected[label_path(path)] = f"the label file of {given}"
            protected[path.parent / CLASSES_FILE] = f"the class list beside {given}"
    for out in outputs:
        target = Path(out).resolve()
        if target.is_dir():
            raise ManifestError(f"--out {out} is a folder; name the file to write in it, e.g. {Path(out) / 'out'}"
                                f"{Path(outputs[0]).suffix or '.csv'}")
        why = protected.get(target, "")
        if not why and target.exists():
            inside = next((folder for folder in folders if target.is_relative_to(folder)), None)
            why = f"a file of the input folder {inside}" if inside else _format_file(target)
        if why:
            raise ManifestError(f"{out} would overwrite {why}; choose another --out")


def _format_file(path: Path) -> str:
    """What ``path`` (an existing file) is in the manifest format or a prepared folder; "" if neither."""
    for root in list(path.parents)[:3]:  # the prepared folder, its subfolder, or waves/'s subfolder
        if journal_sources(root / JOURNAL):
            relative = path.relative_to(root)
            if relative.parts[0] == WAVES or relative.name in prepared_files().get(relative.parent.as_posix().strip("."), ()):
                return f"{relative} of the prepared folder {root}"
    if path.suffix == LABEL_SUFFIX or path.name == CLASSES_FILE:
        return f"the {'label file' if path.suffix == LABEL_SUFFIX else 'class list'} {path}"
    if path.suffix == ".tsv":
        try:
            read_manifest(path)
        except (ManifestError, OSError, UnicodeDecodeError):
            return ""
        return f"the manifest {path}"
    return ""


def remove_stale_temporaries(dest: Path) -> int:
    """Delete the temporary files that a killed run of the atomic writers left: ``.NAME.*.npy.tmp``
    under ``waves/`` and ``.NAME.*.tmp`` beside our own outputs (nothing else in ``dest``)."""
    removed = 0
    for folder, _, files in os.walk(dest / WAVES):
        for name in files:
            if name.startswith(".") and name.endswith(".npy.tmp"):
                os.unlink(os.path.join(folder, name))
                removed += 1
    for sub, names in prepared_files().items():
        for path in (dest / sub).iterdir() if (dest / sub).is_dir() else ():
            if path.name.endswith(".tmp") and any(path.name.startswith(f".{n}.") for n in names):
                path.unlink()
                removed += 1
    return removed


class Progress:
    """A tqdm bar on a terminal, otherwise a plain line every few seconds (logs stay readable)."""

    def __init__(self, total: int, every_s: float = 5.0) -> None:
        self.total, self.done, self.every_s = total, 0, every_s
        self.start = self.last = time.perf_counter()
        self.counts: Counter = Counter()
        self.bar = None
        if sys.stderr.isatty():
            with suppress(ImportError):
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit="rec", file=sys.stderr, desc=PROG)

    def update(self, outcome: Outcome) -> None:
        self.done += 1
        self.counts[outcome.status] += 1
        if self.bar is not None:
            self.bar.update(1)
            return
        now = time.perf_counter()
        if now - self.last >= self.every_s or self.done == self.total:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            print(f"{PROG}: {self.done}/{self.total} records ({self.counts['written']} written, "
                  f"{self.counts['reused']} reused, {self.counts['skipped']} skipped), {rate:.0f}/s",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_pool(tasks: Sequence[tuple[RecordRef, Optional[Outcome]]], settings: Settings,
             workers: int) -> Iterator[Outcome]:
    """Outcomes as records finish. Only metadata travels back: each worker holds one record."""
    work = partial(process_record, settings)
    if workers <= 1 or len(tasks) <= 1:
        yield from map(work, tasks)
        return
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    chunksize = max(1, min(16, len(tasks) // (workers * 32)))
    with context.Pool(workers) as pool:
        yield from pool.imap_unordered(work, tasks, chunksize=chunksize)


@dataclass(frozen=True)
class Good:
    row: ManifestRow
    codes: tuple[str, ...]
    split: str
    known: Optional[tuple[str, ...]] = None  # codes whose presence the source records; None: all

    @property
    def labelled(self) -> bool:
        """False for a source without labels (MIMIC-IV-ECG): pretraining and identification only."""
        return self.known is None or bool(self.known)


def labeled_subset(goods: Sequence[Good], limit: Optional[int], seed: int) -> list[Good]:
    """At most ``limit`` records, whole patients at a time, in a seeded order: the small labeled
    set of a semi-supervised study (the other training records still serve pretraining)."""
    if limit is None or limit >= len(goods):
        return list(goods)
    chosen, total = set(), 0
    per_patient = Counter(g.row.patient for g in goods)
    for patient in sorted(per_patient, key=lambda p: hashlib.sha256(f"labeled:{seed}:{p}".encode()).hexdigest()):
        if total + per_patient[patient] <= limit:
            chosen.add(patient)
            total += per_patient[patient]
    return [g for g in goods if g.row.patient in chosen]


def task_classes(goods: Sequence[Good]) -> list[str]:
    """The classes of a PTB-XL benchmark task: those present among the records, sorted (the
    benchmark's MultiLabelBinarizer order). Where this differs from the benchmark's ``select_data``:
    it counts every row of the database, here only the records that were read (a class whose
    records were all skipped is not listed: a class without records cannot be trained or scored)."""
    return sorted({code for good in goods if good.labelled for code in good.codes})


def write_outputs(dest: Path, goods: Sequence[Good], finetune_train_limit: Optional[int] = None,
                  seed: int = 1, classes: Optional[Sequence[str]] = None) -> dict[str, int]:
    """All manifests (pretrain, finetune, identify) from the good records in sorted order;
    ``classes``: those of ``finetune/classes.tsv`` (default: the CinC scored classes)."""
    counts: dict[str, int] = {}

    def manifest(relative: str, rows: list[ManifestRow]) -> Path:
        path = dest / relative
        write_manifest(path, dest, rows)
        counts[relative] = len(rows)
        return path

    by_split = {split: [g for g in goods if g.split == split] for split in SPLITS}
    for split in PRETRAIN_SPLITS:
        manifest(f"{PRETRAIN}/{split}.tsv", [g.row for g in by_split[split]])
    labels = scored_labels() if classes is None else LabelSet(tuple((name,) for name in classes))
    write_classes(dest / FINETUNE, labels.names)
    for split in SPLITS:
        labelled = [g for g in by_split[split] if g.labelled]
        chosen = labeled_subset(labelled, finetune_train_limit, seed) if split == "train" else labelled
        path = manifest(f"{FINETUNE}/{split}.tsv", [g.row for g in chosen])
        write_labels(path, [labels.label_tokens(g.codes, g.known) for g in chosen])
    records_of: dict[str, list[Good]] = {}
    for good in goods:
        records_of.setdefault(good.row.patient, []).append(good)
    repeated = {p: rs for p, rs in records_of.items() if len(rs) >= 2}  # each in sorted record order
    manifest(f"{IDENTIFY}/train.tsv", [g.row for g in goods if g.row.patient in repeated and g.split == "train"])
    # valid patients choose the checkpoint, test patients (never seen in that choice) are reported
    for split in IDENTIFY_HELD_OUT:
        gallery, probe = [], []
        for good in by_split[split]:  # the first record (sorted) of each held-out patient is its gallery record
            if rows := repeated.get(good.row.patient):
                (gallery if good is rows[0] else probe).append(good.row)
        manifest(f"{IDENTIFY}/{held_out(split, GALLERY)}.tsv", gallery)
        manifest(f"{IDENTIFY}/{held_out(split, PROBE)}.tsv", probe)
    return counts


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + message
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Prepare ECG archives: one float32 .npy per record and "
                     "the pretrain/finetune/identify manifests (see manifests/README.md).")
    parser.add_argument("sources", nargs="+", type=Path, metavar="SRC", help="archive folder(s)")
    parser.add_argument("--dest", type=Path, required=True, metavar="DIR", help="output folder")
    parser.add_argument("--layout", default=AUTO, metavar="|".join((AUTO,) + layouts()),
                        help="auto (default): recognise each source folder's layout on its own; "
                             # argparse %-formats help strings: a summary's "%" (CODE-15%) is escaped
                             + "; ".join(f"{name}: {get_source(name).summary}" for name in layouts()).replace("%", "%%"))
    parser.add_argument("--labels", type=Path, metavar="CSV",
                        help="CSV with columns record[,patient][,codes] (physionet2021, wfdb) or the "
                             "ptbxl_database.csv to use (ptbxl)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="worker processes (default: CPUs, at most 8)")
    parser.add_argument("--sample-rate", type=float, default=500.0, help="target rate in Hz")
    parser.add_argument("--valid-percent", type=float, default=10.0, help="share of patients")
    parser.add_argument("--test-percent", type=float, default=10.0, help="share of patients")
    parser.add_argument("--split-by", choices=SPLIT_BY, default="auto",
                        help="auto: an archive's own recommended split where it has one (PTB-XL's strat_fold: "
                             "folds 1-8 train, 9 valid, 10 test), else patient-hash; strat-fold: require it; "
                             "patient-hash: a hash of (--seed, patient) with --valid-percent/--test-percent")
    parser.add_argument("--seed", type=int, default=1, help="seed of the patient split")
    parser.add_argument("--min-seconds", type=float, default=DEFAULT_MIN_SECONDS,
                        help="records shorter than this are skipped")
    bounds = parser.add_argument_group("plausible records (outside these bounds a record is skipped, the bound in "
                                       "its reason; the defaults pass every archive the project reads)")
    bounds.add_argument("--min-rate", type=float, default=DEFAULT_BOUNDS.min_rate, metavar="HZ",
                        help="lowest sampling rate (default %(default)g Hz: PTB-XL's 100 Hz files pass)")
    bounds.add_argument("--max-rate", type=float, default=DEFAULT_BOUNDS.max_rate, metavar="HZ",
                        help="highest sampling rate (default %(default)g Hz)")
    bounds.add_argument("--max-seconds", type=float, default=DEFAULT_BOUNDS.max_seconds, metavar="S",
                        help="longest record (default %(default)g s = 2 h: INCART's 30 min pass)")
    bounds.add_argument("--max-mv", type=float, default=DEFAULT_BOUNDS.max_mv, metavar="MV",
                        help="largest |sample| of a kept lead (default %(default)g mV; int16 at 1000/mV reaches "
                             "32.8 mV, at 200/mV 164 mV when saturated)")
    parser.add_argument("--finetune-train-limit", type=int, default=None, metavar="N",
                        help="keep at most N records (whole patients) in finetune/train.tsv, for a small "
                             "labeled set; pretraining still uses every training record")
    parser.add_argument("--ptbxl-labels", choices=PTBXL_TASKS, default=SNOMED_TASK,
                        help="classes of finetune/: snomed (default): PTB-XL's statements mapped to the CinC 2021 "
                             "classes; all, diagnostic, subdiagnostic, superdiagnostic, form, rhythm: the PTB-XL "
                             "benchmark task (Strodthoff et al. 2021) from the archive's scp_statements.csv, split by "
                             "its folds; records without a label in the task are left out of finetune/")
    parser.add_argument("--skip-poor-quality", action="store_true",
                        help="leave out of every manifest the records whose present leads fail a signal-quality check "
                             "(flat, clipped, noisy, wander: fairseq_ecg/signal_quality.py); without it they are kept "
                             "and counted; records.tsv's quality column names the leads either way")
    parser.add_argument("--force", action="store_true", help="recompute every record (ignore records.tsv)")
    return parser


def _fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def resolve_layouts(sources: Sequence[Path], layout: str) -> list[str]:
    """The layout of each source folder: ``layout``, or each recognised on its own for ``auto``."""
    return [detect_layout(src) if layout == AUTO else layout for src in sources]


def _discover_all(sources: Sequence[Path], layout: str, labels: Optional[Path],
                  split_by: str = "auto", ptbxl_labels: str = SNOMED_TASK) -> list[RecordRef]:
    """Records of every source; with several sources, keys are prefixed with the folder name.
    ``layout`` is one name for all or ``auto``; ``split_by``: see ``--split-by``; with
    ``patient-hash`` the archives' own splits are unused. ``ptbxl_labels``: see ``--ptbxl-labels``
    (a benchmark task needs PTB-XL sources only)."""
    refs: list[RecordRef] = []
    for src, name in zip(sources, resolve_layouts(sources, layout)):
        if layout == AUTO:  # what auto chose, so that a wrong guess shows before the records do
            print(f"{PROG}: {src}: layout {name} (recognised; --layout NAME reads it otherwise)", flush=True)
        use_folds = split_by != "patient-hash"
        if ptbxl_labels == SNOMED_TASK:
            found = list(discover(src, name, labels, use_folds=use_folds))
        elif name == "ptbxl":
            found = list(ptbxl_task_refs(src, labels, use_folds, ptbxl_labels))
        else:
            raise LayoutError(f"--ptbxl-labels {ptbxl_labels}: {src} is not a PTB-XL archive (layout {name}); "
                              "prepare it in a run of its own, or use --ptbxl-labels snomed (the CinC classes)")
        if not found:
            summary = "; ".join(get_source(part).summary for part in name.split(MIXED_LAYOUTS))
            raise LayoutError(f"no records found in {src} (layout {name}: {summary}); "
                              "check the folder, or pick the right --layout")
        if split_by == "strat-fold" and not any(ref.split for ref in found):
            way_out = ("use --ptbxl-labels snomed to split by patient hash" if ptbxl_labels != SNOMED_TASK
                       else "use --split-by patient-hash")
            raise LayoutError(f"--split-by strat-fold: {src} has no recommended split (PTB-XL's "
                              f"{PTBXL_DATABASE} with a strat_fold column); {way_out}")
        if len(sources) > 1:  # names and patient ids of different archives never meet
            found = [replace(ref, key=f"{src.name}/{ref.key}", patient=f"{src.name}:{ref.patient}" if ref.patient else "")
                     for ref in found]
        refs.extend(found)
    return refs


def _bad_key(ref: RecordRef) -> str:
    parts = ref.key.split("/")
    if any(c in ref.key for c in "\t\n\r") or ref.key.startswith("/") or ".." in parts or "" in parts:
        return f"record name {ref.key!r} cannot be an output file name (tab, newline, '..' or empty part)"
    try:
        ref.key.encode("utf-8")
    except UnicodeEncodeError:
        return f"record name {ref.key!r} is not valid UTF-8 (a file name in another encoding); rename it"
    return ""


def _check_arguments(args: argparse.Namespace) -> str:
    """What is wrong with the command line, in one line that names the folder and the fix; "" if nothing."""
    if args.layout != AUTO and args.layout not in layouts():
        return (f"unknown layout {args.layout!r} for {', '.join(map(str, args.sources))}; pass --layout "
                f"{' or '.join((AUTO,) + layouts())}")
    for src in args.sources:
        if not src.is_dir():
            return (f"source folder {src} does not exist or is not a folder; pass the folder that "
                    "holds the archive (e.g. the one with training/ or ptbxl_database.csv)")
    for src in args.sources:
        if args.layout not in (AUTO, "ptbxl") and (src / PTBXL_DATABASE).is_file():
            return (f"{src} holds {PTBXL_DATABASE}, a PTB-XL archive, but --layout is {args.layout}; "
                    "pass --layout ptbxl (it reads the patient ids and labels from that file)")
    if len({src.resolve().name for src in args.sources}) != len(args.sources):
        return (f"source folders {', '.join(map(str, args.sources))} share a folder name; "
                "outputs are named after it, so give each source a distinct folder name")
    if args.labels is not None and not args.labels.is_file():
        return f"labels CSV {args.labels} does not exist; pass an existing file or leave --labels out"
    if args.dest.exists() and not args.dest.is_dir():
        return f"--dest {args.dest} is a file; pass a folder (it is created if absent)"
    if not (args.sample_rate > 0 and args.min_seconds >= 0 and args.workers >= 1):
        return "--sample-rate must be > 0, --min-seconds >= 0 and --workers >= 1"
    if not (0 < args.min_rate <= args.max_rate < math.inf and args.max_seconds > args.min_seconds
            and 0 < args.max_mv < math.inf):
        return ("--min-rate must be > 0 and at most --max-rate, --max-seconds above --min-seconds and --max-mv > 0 "
                "(all finite)")
    if not (args.valid_percent >= 0 and args.test_percent >= 0 and args.valid_percent + args.test_percent < 100):
        return "--valid-percent and --test-percent must be >= 0 and add up to less than 100"
    if args.ptbxl_labels != SNOMED_TASK and args.finetune_train_limit is not None:
        return (f"--ptbxl-labels {args.ptbxl_labels} is PTB-XL's benchmark, which trains on every record of folds "
                "1-8; drop --finetune-train-limit (or use --ptbxl-labels snomed for a small labeled set)")
    if args.ptbxl_labels != SNOMED_TASK and args.split_by == "patient-hash":
        return (f"--ptbxl-labels {args.ptbxl_labels} is PTB-XL's benchmark, split by its strat_fold (1-8 train, "
                "9 valid, 10 test); drop --split-by patient-hash")
    return ""


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console script; returns 0 on success, 1 when no record was usable, 2 for a bad command line,
    74 when the machine refused a write (no space, quota, read-only, I/O error): then no manifest is
    written from the records done so far, which the journal keeps, so the same command resumes."""
    try:
        return _prepare(argv)
    except MachineError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return EXIT_MACHINE_ERROR


def _prepare(argv: Optional[Sequence[str]] = None) -> int:
    # importing fairseq (through the package) sets the root logger to DEBUG; wfdb's file system
    # layer would then log every file it opens
    logging.getLogger().setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    if problem := _check_arguments(args):
        return _fail(problem)
    try:
        args.layouts = resolve_layouts(args.sources, args.layout)
        split_by = "strat-fold" if args.ptbxl_labels != SNOMED_TASK else args.split_by  # the benchmark's folds
        with patient_salt_from(args.dest / SALT_FILE):  # hashes of MUSE/DICOM ids: this folder's salt
            refs = _discover_all(args.sources, args.layout, args.labels, split_by, args.ptbxl_labels)
    except LayoutError as error:
        return _fail(str(error))
    duplicate = next((key for key, n in Counter(ref.key for ref in refs).items() if n > 1), None)
    if duplicate is not None:
        return _fail(f"record {duplicate!r} is listed twice in {', '.join(map(str, args.sources))}; "
                     "remove the duplicate row or file")

    dest = args.dest.resolve()
    dest.mkdir(parents=True, exist_ok=True)
    settings = Settings(dest=dest, sample_rate=args.sample_rate, min_seconds=args.min_seconds, force=args.force,
                        sources=tuple(str(src.resolve()) for src in args.sources), layout=",".join(args.layouts),
                        bounds=Bounds(args.min_rate, args.max_rate, args.max_seconds, args.max_mv))
    journal_path = dest / JOURNAL
    if problem := _other_archive(journal_path, settings.sources):
        return _fail(problem)
    start = time.perf_counter()
    remove_stale_temporaries(dest)
    cached = load_journal(journal_path, settings)
    outcomes: dict[str, Outcome] = {}
    tasks = []
    for ref in refs:
        if problem := _bad_key(ref):
            outcomes[ref.key] = Outcome(ref.key, "skipped", record=ref.name, note=problem, kind="bad name")
        else:
            tasks.append((ref, cached.get(ref.key)))
    # the journal restarts from the usable lines of the last run, then grows as records finish
    atomic_write_text(journal_path, journal_text(settings, [cached[r.key] for r, _ in tasks if r.key in cached]))
    progress = Progress(len(refs))
    for outcome in outcomes.values():
        progress.update(outcome)
    try:
        with closing(progress), open(journal_path, "a") as journal:
            for outcome in run_pool(tasks, settings, args.workers):
                outcomes[outcome.key] = outcome
                if outcome.status == "written":
                    journal.write(outcome.journal_line() + "\n")
                    journal.flush()
                progress.update(outcome)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except OSError as error:  # the journal's own appends; a MachineError from a record's write as it is
        raise (machine_error(error, journal_path) or error) from None

    ordered = [outcomes[ref.key] for ref in refs]
    atomic_write_text(journal_path, journal_text(settings, ordered))
    poor = {o.key: o.quality for o in ordered if o.ok and o.quality not in ("", GOOD)}
    left_out = poor if args.skip_poor_quality else {}
    atomic_write_text(dest / SKIPPED, "".join(
        f"{_field(o.key)}\t{_one_line(o.note)}\n" if not o.ok else
        f"{_field(o.key)}\tsignal quality: {left_out[o.key]} (--skip-poor-quality)\n"
        for o in ordered if not o.ok or o.key in left_out))
    duplicates = find_duplicates(refs, ordered)  # before the split: one copy of each recording goes on
    atomic_write_text(dest / DUPLICATES, "".join(f"{_field(key)}\t{_field(kept)}\t{how}\n"
                                                 for key, (kept, how) in duplicates.items()))
    stated = [o for o in ordered if o.ok and o.statement]
    if stated or (dest / STATEMENTS).exists():
        atomic_write_text(dest / STATEMENTS, "".join(f"{_field(o.key)}\t{_one_line(o.statement)}\n" for o in stated))
    goods = []
    for ref, outcome in zip(refs, ordered):
        if not outcome.ok or ref.key in duplicates or ref.key in left_out:
            continue
        patient = _one_line(ref.patient) or ref.key
        row = ManifestRow(wave_relative_path(ref.key), outcome.num_samples, outcome.lead_mask, patient,
                          outcome.source_rate, _one_line(ref.name), outcome.derived)
        codes = ref.codes if ref.codes is not None else outcome.dx
        split = ref.split or split_of(patient, args.seed, args.valid_percent, args.test_percent)
        # no label in the task, or neither table codes nor a #Dx code (unknown, not a negative): no finetune
        known = () if not codes and (args.ptbxl_labels != SNOMED_TASK or ref.codes is None) else ref.known
        goods.append(Good(row, tuple(codes), split, known))
    elapsed = time.perf_counter() - start
    if not goods:
        print(f"{PROG}: no usable record among {len(refs)} found; reasons in {dest / SKIPPED}", file=sys.stderr)
        _print_summary(dest, refs, ordered, goods, {}, elapsed, duplicates=duplicates)
        return 1
    classes = None if args.ptbxl_labels == SNOMED_TASK else task_classes(goods)
    counts = write_outputs(dest, goods, args.finetune_train_limit, args.seed, classes)
    _print_summary(dest, refs, ordered, goods, counts, elapsed, _notices(args, refs) + _quality_lines(args, poor),
                   duplicates, args.ptbxl_labels, classes)
    return 0


def _quality_lines(args: argparse.Namespace, poor: dict[str, str]) -> list[str]:
    """The summary's count of the records that fail a signal-quality check, by check."""
    if not poor:
        return []
    checks = Counter(check.split(":")[0] for quality in poor.values() for check in quality.split(";"))
    what = ", ".join(f"{flag} {checks[flag]}" for flag in FLAGS if checks[flag])
    fate = (f"left out of every manifest (--skip-poor-quality; listed in {SKIPPED})" if args.skip_poor_quality
            else "kept (--skip-poor-quality leaves them out)")
    return [f"  signal quality: {len(poor)} record(s) fail a check ({what}; {JOURNAL}'s quality column names the "
            f"leads), {fate}"]


def _notices(args: argparse.Namespace, refs: Sequence[RecordRef] = ()) -> list[str]:
    """Summary lines about the inputs: the archive's own split in use, a PhysioNet/CinC 2021
    source without patient ids, files of another layout that ``--layout NAME`` leaves unread."""
    lines = []
    for src, name in zip(args.sources, getattr(args, "layouts", ())):
        if unread := unread_files(src, name):
            lines.append(f"  notice: {src} also holds files that --layout {name} does not read ({unread}); "
                         "--layout auto reads MUSE and DICOM exports side by side, or prepare the others as a "
                         "source of their own")
    if any(ref.split for ref in refs):
        lines.append("  splits: PTB-XL's strat_fold (folds 1-8 train, 9 valid, 10 test; --valid-percent and "
                     "--test-percent unused); "
                     + ("--split-by patient-hash splits by a hash of the patient instead" if args.ptbxl_labels == SNOMED_TASK
                        else f"records500/ at {args.sample_rate:g} Hz (PTB-XL's literature often reports "
                             "its 100 Hz records100/)"))
    return lines + [f"  notice: no {PATIENTS_CSV} in {src} (it is read from the folder given, the one that holds "
            "training/): each record is treated as its own patient, so the identify manifests are empty and "
            f"the splits are per record; put {PATIENTS_CSV} (columns record,patient) there or pass --labels CSV"
            for src, name in zip(args.sources, getattr(args, "layouts", [args.layout] * len(args.sources)))
            if args.labels is None and name == "physionet2021" and not (src / PATIENTS_CSV).is_file()]


def _print_summary(dest: Path, refs: Sequence[RecordRef], ordered: Sequence[Outcome], goods: Sequence[Good],
                   counts: dict[str, int], elapsed: float, notices: Sequence[str] = (),
                   duplicates: Optional[dict[str, tuple[str, str]]] = None,
                   ptbxl_labels: str = SNOMED_TASK, classes: Optional[Sequence[str]] = None) -> None:
    status = Counter(o.status for o in ordered)
    kinds = Counter(o.kind for o in ordered if not o.ok)
    reasons = ", ".join(f"{kind}: {n}" for kind, n in sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0])))
    lines = [f"{PROG}: {len(refs)} records found, {status['written']} written, {status['reused']} reused, "
             f"{status['skipped']} skipped{f' ({reasons}; see {SKIPPED})' if reasons else ''} "
             f"in {elapsed:.1f} s"]
    if dropped := sum(1 for o in ordered if o.ok and UNKNOWN_LEAD_NOTE in o.note):
        lines.append(f"  {dropped} record(s) had channels with unknown lead names, dropped (see {JOURNAL})")
    if mat_named := sum(1 for o in ordered if o.ok and MAT_NAMED_NOTE in o.note):
        lines.append(f"  {mat_named} record(s) have a header whose record line names the record NAME.mat (as the "
                     "CinC 2021 Georgia headers do); read as NAME")
    if duplicates:
        same = sum(1 for _, how in duplicates.values() if SAME_WAVEFORM in how)
        named = sum(1 for _, how in duplicates.values() if "PTB-XL ecg_id" in how)
        lines.append(f"  duplicates: {len(duplicates)} record(s) are copies of another record's recording ({same} "
                     f"identical waveform(s), {named} CinC 2021 HRnnnnn = PTB-XL ecg_id nnnnn) and are left out of "
                     "every manifest; each keeps one copy, with its labels and patient (PTB-XL's where there is "
                     f"one, which has the patient id and fold; else the first by name); see {DUPLICATES}")
    if counts:
        labels = scored_labels()
        unlabeled = sum(1 for g in goods if g.known is None and not labels.canonical_codes(g.codes))
        partial = sum(1 for g in goods if g.known)
        without = sum(1 for g in goods if not g.labelled)
        if classes is not None:  # a PTB-XL benchmark task
            shown = ", ".join(classes[:12]) + (f", ... ({len(classes) - 12} more)" if len(classes) > 12 else "")
            labelling = (f"{len(classes)} classes of PTB-XL's {ptbxl_labels} task present in the archive "
                         f"({shown}; see finetune/classes.tsv); {without} record(s) with no {ptbxl_labels} "
                         "label are left out (pretrain/identify only)")
        else:
            labelling = (f"{len(labels)} classes; {unlabeled} record(s) with no scored class are included with "
                         "an all-zero label line"
                         + (f"; {partial} record(s) label only some classes (the others are marked unknown, ?CODE)"
                            if partial else "")
                         + (f"; {without} record(s) without labels (a source without labels, or a header without "
                            "a #Dx code and no codes in --labels) are left out as unlabeled (pretrain/identify only)"
                            if without else ""))
        patients = {split: len({g.row.patient for g in goods if g.split == split and g.labelled}) for split in SPLITS}
        tested = sum(1 for g in goods if g.split == "test")
        lines += [
            f"  pretrain: train {counts['pretrain/train.tsv']}, valid {counts['pretrain/valid.tsv']} records "
            f"(the {tested} test records are kept out)",
            f"  finetune: train {counts['finetune/train.tsv']}, valid {counts['finetune/valid.tsv']}, "
            f"test {counts['finetune/test.tsv']} records of {patients['train']}/{patients['valid']}/"
            f"{patients['test']} patients, {labelling}",
            f"  identify: train {counts['identify/train.tsv']}, "
            + ", ".join(f"{s}_{r} {counts[f'identify/{s}_{r}.tsv']}" for s in IDENTIFY_HELD_OUT
                        for r in ("gallery", "probe"))
            + " records (patients with >= 2 records; valid selects the checkpoint, test is reported)",
        ]
        if classes is not None and not classes:
            lines.append(f"  warning: no record has a label of PTB-XL's {ptbxl_labels} task; finetune/ is empty")
        if empty := [name for name, n in counts.items() if n == 0]:
            lines.append(f"  warning: empty manifest(s): {', '.join(empty)}")
    lines += notices
    lines.append(f"  outputs in {dest}")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    sys.exit(main())
