"""The manifest format: the one place that reads and writes it (documented in ``manifests/README.md``).

A manifest follows fairseq's audio convention: the first line is the root folder, then one row per
record, tab-separated::

    relative_path  num_samples  lead_mask  patient  source_rate  record  [derived]

``relative_path`` points (from the root) to a float32 ``.npy`` array of shape (12, num_samples) in
mV at the manifest's sampling rate, leads in canonical order; ``lead_mask`` is 12 characters of 0/1
(0: the record lacks that lead and the channel is zeros); ``source_rate`` is the rate before
resampling; the optional ``derived`` column lists leads the source computed from others. Labels
may mark a class unknown (``?CODE``, see ``fairseq_ecg.labels.UNKNOWN_MARK``). Classification labels sit beside the manifest in ``SPLIT.lbl`` (one line per row,
comma-separated class codes) with the class list in ``classes.tsv`` (one class per line, in column
order; equivalent codes joined by ``|``).
"""
from __future__ import annotations

import glob
import errno
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterable, Iterator, Optional, Sequence

import numpy as np

from .errors import EcgError
from .leads import NUM_LEADS, mask_from_string, mask_to_string

COLUMNS = ("relative_path", "num_samples", "lead_mask", "patient", "source_rate", "record")
LABEL_SUFFIX = ".lbl"
CLASSES_FILE = "classes.tsv"


class ManifestError(EcgError):
    """A manifest (or its label file) that cannot be used as it is; the message names file and line."""


@dataclass(frozen=True)
class ManifestRow:
    relative_path: str
    num_samples: int
    lead_mask: str = "1" * NUM_LEADS
    patient: str = ""
    source_rate: float = 0.0
    record: str = ""
    derived: str = ""  # optional 7th column: leads the source computed from others, e.g. III,aVR,aVL,aVF

    @property
    def present_leads(self) -> np.ndarray:
        return mask_from_string(self.lead_mask)

    def to_line(self) -> str:
        rate = f"{self.source_rate:g}"
        fields = [self.relative_path, str(self.num_samples), self.lead_mask, self.patient, rate, self.record]
        return "\t".join(fields + ([self.derived] if self.derived else []))


@dataclass
class Manifest:
    root: Path
    rows: list[ManifestRow]
    path: Optional[Path] = None

    def __len__(self) -> int:
        return len(self.rows)

    def file_of(self, index: int) -> Path:
        return self.root / self.rows[index].relative_path


# The process's umask, read once at import (reading it means setting it; one thread runs imports).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


# Errors of the machine, not of a record: writing cannot succeed until the user frees space, fixes
# the disk or the quota. They stop a run (a record that failed this way is not a bad record).
MACHINE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG})
EXIT_MACHINE_ERROR = 74  # the exit status of every command stopped by one (sysexits' EX_IOERR)


class MachineError(OSError):
    """A write the machine refused (``MACHINE_ERRNOS``); the message names the file being written.
    Commands stop on it with that one line and a non-zero exit, keeping nothing half-written."""

    def __str__(self) -> str:
        return (f"{os.strerror(self.errno).lower()} writing {self.filename}; nothing half-written was kept: "
                "free space (or fix the disk or quota) and run the same command again")


def machine_error(error: BaseException, path: Path | str) -> Optional[MachineError]:
    """``error`` as a :class:`MachineError` writing ``path`` when it is one, else None."""
    if isinstance(error, MachineError):
        return error
    if isinstance(error, OSError) and error.errno in MACHINE_ERRNOS:
        return MachineError(error.errno, os.strerror(error.errno), str(path))
    return None


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_dead_temporaries(path: Path, prefix: str, suffix: str) -> int:
    """Delete the temporary files of ``path`` (``PREFIX<pid>.XXXX<suffix>``) whose writer is no
    longer running on this machine: what a kill of an earlier run left (a 243 MB import, an
    8 KB prediction). A writer still running keeps its file. Returns how many were removed."""
    removed = 0
    for candidate in path.parent.glob(f"{glob.escape(prefix)}*{glob.escape(suffix)}"):
        pid = candidate.name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and not _process_alive(int(pid)):
            candidate.unlink(missing_ok=True)
            removed += 1
    return removed


@contextmanager
def atomic_output(path: Path | str, mode: str = "w", *, suffix: str = ".tmp", prefix: Optional[str] = None,
                  fsync: bool = False, clean_stale: bool = False, **open_args) -> Iterator[IO]:
    """A file for writing under a temporary name beside ``path`` (``.NAME.PID.XXXX.tmp``), renamed
    onto ``path`` when the block ends and removed if it raises: a crash or a kill leaves no half
    file, and the file gets the mode a plain ``open(path, "w")`` would. ``clean_stale``: first
    remove the temporaries of ``path`` that killed writers left (``remove_dead_temporaries``; the
    programs' outputs, not preparation's many waveforms, which cleans its own folder once)."""
    path = Path(path)
    prefix = prefix or f".{path.name}."
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if clean_stale:
            remove_dead_temporaries(path, prefix, suffix)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{prefix}{os.getpid()}.", suffix=suffix)
    except OSError as error:
        raise (machine_error(error, path) or error) from None
    in_block = False
    try:
        # the mode a plain open(path, "w") gives (0666 less the umask): mkstemp's 0600 would survive the rename
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, mode, **open_args) as handle:
            in_block = True
            yield handle
            in_block = False
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        if os.path.exists(tmp):
            os.unlink(tmp)
        # From the caller's block, an I/O error may be a read of its input (a bad record, not the
        # machine): only the errors writing alone gives (no space, quota, too large, read-only) count.
        refused = machine_error(error, path)
        if refused is not None and refused is not error and not (in_block and error.errno == errno.EIO):
            raise refused from None
        raise


def atomic_write_text(path: Path | str, text: str, clean_stale: bool = False) -> None:
    """Write a text file through a temporary name and a rename, so a crash leaves no half file."""
    with atomic_output(path, fsync=True, clean_stale=clean_stale) as handle:
        handle.write(text)


def atomic_save_npy(path: Path | str, array: np.ndarray, clean_stale: bool = False) -> None:
    """Save an array as ``.npy`` through a temporary name (``.STEM.PID.XXXX.npy.tmp``, which
    preparation cleans up after a kill) and a rename."""
    path = Path(path)
    with atomic_output(path, "wb", prefix=f".{path.stem}.", suffix=".npy.tmp", clean_stale=clean_stale) as handle:
        np.save(_PlainWrites(handle), array)


class _PlainWrites:
    """A file numpy writes through ``write`` in chunks, not ``ndarray.tofile``: a short ``tofile``
    raises an OSError without errno ("60000 requested and 24968 written"), which would hide a full
    disk; ``write`` raises it with its errno (ENOSPC, EFBIG, ...)."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.write = handle.write


def write_manifest(path: Path | str, root: Path | str, rows: Iterable[ManifestRow]) -> None:
    lines = [str(Path(root).resolve())] + [row.to_line() for row in rows]
    atomic_write_text(path, "\n".join(lines) + "\n")


def _parse_row(fields: list[str], where: str) -> ManifestRow:
    if len(fields) < 2:
        raise ManifestError(f"{where}: expected 'relative_path<TAB>num_samples[...]', found {len(fields)} column(s); "
                            "re-create the manifest with fairseq-ecg-manifest")
    try:
        num_samples = int(fields[1])
    except ValueError:
        raise ManifestError(f"{where}: num_samples {fields[1]!r} is not an integer") from None
    if num_samples <= 0:
        raise ManifestError(f"{where}: num_samples must be positive, found {num_samples}")
    record = fields[5] if len(fields) > 5 else Path(fields[0]).stem
    fields = fields + [""] * (len(COLUMNS) + 1 - len(fields))  # the optional columns: "" where absent
    lead_mask = fields[2] or "1" * NUM_LEADS
    try:
        mask_from_string(lead_mask)
    except ValueError as error:
        raise ManifestError(f"{where}: {error}") from None
    try:
        rate = float(fields[4]) if fields[4] else 0.0
    except ValueError:
        raise ManifestError(f"{where}: source_rate {fields[4]!r} is not a number") from None
    return ManifestRow(fields[0], num_samples, lead_mask, patient=fields[3], source_rate=rate, record=record,
                       derived=fields[6])


def _read_lines(path: Path, what: str) -> list[str]:
    try:
        return path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ManifestError(f"{path}: cannot read {what} ({error})") from None


def read_manifest(path: Path | str) -> Manifest:
    """Read a manifest; any malformed line raises a ``ManifestError`` naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found; create it with fairseq-ecg-manifest SRC --dest DIR")
    lines = _read_lines(path, "manifest")
    if not lines or not lines[0].strip():
        raise ManifestError(f"{path}:1: the first line must be the root folder of the waveform files")
    root = Path(lines[0].strip())
    if not root.is_absolute():
        try:
            root = (path.parent / root).resolve()
        except (OSError, ValueError) as error:  # a NUL byte, a symlink loop
            raise ManifestError(f"{path}:1: root folder {lines[0].strip()!r} is not a usable path ({error})") from None
    rows = [_parse_row(line.split("\t"), f"{path}:{number}") for number, line in enumerate(lines[1:], start=2)
            if line.strip()]
    return Manifest(root=root, rows=rows, path=path)


def label_path(manifest_path: Path | str) -> Path:
    return Path(manifest_path).with_suffix(LABEL_SUFFIX)


def write_labels(manifest_path: Path | str, labels: Sequence[Sequence[str]]) -> None:
    atomic_write_text(label_path(manifest_path), "".join(",".join(codes) + "\n" for codes in labels))


def read_labels(manifest: Manifest) -> list[list[str]]:
    """Codes per row from ``SPLIT.lbl`` beside the manifest; the row counts must agree."""
    path = label_path(manifest.path)
    if not path.is_file():
        raise ManifestError(f"{path}: label file missing for manifest {manifest.path}; "
                            "re-create the manifests with fairseq-ecg-manifest")
    lines = _read_lines(path, "label file")
    if len(lines) != len(manifest.rows):
        raise ManifestError(f"{path}:{min(len(lines), len(manifest.rows)) + 1}: {len(lines)} label lines for "
                            f"{len(manifest.rows)} manifest rows in {manifest.path}; they must match one to one")
    return [[code for code in line.strip().split(",") if code] for line in lines]


def write_classes(directory: Path | str, names: Sequence[str]) -> None:
    atomic_write_text(Path(directory) / CLASSES_FILE, "".join(f"{name}\n" for name in names))


def read_classes(directory: Path | str) -> list[str]:
    path = Path(directory) / CLASSES_FILE
    if not path.is_file():
        raise ManifestError(f"{path}: class list missing; re-create the manifests with fairseq-ecg-manifest")
    names = [line.strip() for line in _read_lines(path, "class list") if line.strip()]
    if not names:
        raise ManifestError(f"{path}: no classes listed")
    return names


def waveform_problem(manifest: Manifest, index: int) -> Optional[str]:
    """Why row ``index``'s waveform file cannot be read as the manifest states (array header only:
    missing, unreadable, not 12 channels, another length), with the fix; None when it can."""
    file = manifest.root / manifest.rows[index].relative_path
    try:
        array = np.load(file, mmap_mode="r")
    except FileNotFoundError:
        return f"waveform file {file} is missing; re-run fairseq-ecg-manifest or remove the row"
    except (OSError, ValueError) as error:
        return f"waveform file {file} is unreadable or truncated ({error}); re-run fairseq-ecg-manifest"
    if array.ndim != 2 or array.shape[0] != NUM_LEADS:
        return f"{file} has shape {tuple(array.shape)}, expected ({NUM_LEADS}, samples)"
    if array.shape[1] != manifest.rows[index].num_samples:
        return (f"{file} holds {array.shape[1]} samples but the manifest says "
                f"{manifest.rows[index].num_samples}; re-run fairseq-ecg-manifest")
    return None


def check_waveforms(manifest: Manifest) -> None:
    """Cheap load-time check (array headers only) that every row's file exists with 12 channels
    and at least the stated number of samples, so a bad row fails before training starts."""
    for index in range(len(manifest.rows)):
        if problem := waveform_problem(manifest, index):
            raise ManifestError(f"{manifest.path}:{index + 2}: {problem}")


def load_waveform(path: Path | str, start: int = 0, length: Optional[int] = None) -> np.ndarray:
    """Read (12, length) samples from ``start`` without loading the whole file (memory map)."""
    array = np.load(path, mmap_mode="r")
    stop = array.shape[1] if length is None else start + length
    return np.array(array[:, start:stop], dtype=np.float32)


__all__ = [
    "COLUMNS", "Manifest", "ManifestError", "ManifestRow", "atomic_save_npy", "atomic_write_text",
    "check_waveforms", "label_path", "load_waveform", "mask_to_string", "read_classes", "read_labels",
    "read_manifest", "write_classes", "write_labels", "write_manifest",
]
