"""The prepared folder's layout, owned in one place: what ``fairseq-ecg-manifest`` writes under
its ``--dest`` and which task reads which part.

    DEST/records.tsv, skipped.tsv, statements.tsv, duplicates.tsv, patient_salt.txt
    DEST/waves/<relative name>.npy
    DEST/pretrain/{train,valid}.tsv                             ecg_pretraining
    DEST/finetune/{train,valid,test}.tsv (+ .lbl), classes.tsv  ecg_classification
    DEST/identify/train.tsv, {valid,test}_{gallery,probe}.tsv   ecg_identification

The format of one manifest, label file or class list is :mod:`fairseq_ecg.manifest`'s; what each
root file holds is :mod:`fairseq_ecg.preparation`'s.
"""
from __future__ import annotations

from pathlib import Path

from .manifest import CLASSES_FILE, LABEL_SUFFIX

WAVES = "waves"
JOURNAL = "records.tsv"
SKIPPED = "skipped.tsv"
STATEMENTS = "statements.tsv"
DUPLICATES = "duplicates.tsv"  # record<TAB>the kept copy<TAB>how the copy was found
SALT_FILE = "patient_salt.txt"  # the salt of the patient hashes (sources.base.resolve_salt); private

SPLITS = ("train", "valid", "test")  # of the patients; pretraining uses train and valid
PRETRAIN_SPLITS = ("train", "valid")
PRETRAIN, FINETUNE, IDENTIFY = "pretrain", "finetune", "identify"
# The subfolder that each registered task reads.
TASK_FOLDERS = {"ecg_pretraining": PRETRAIN, "ecg_classification": FINETUNE, "ecg_identification": IDENTIFY}
IDENTIFY_HELD_OUT = ("valid", "test")  # identify/{split}_gallery.tsv and {split}_probe.tsv
GALLERY, PROBE = "gallery", "probe"


def held_out(split: str, role: str) -> str:
    """The subset name of one role of a held-out identification split: ``test_probe``."""
    return f"{split}_{role}"


def prepared_files() -> dict[str, tuple[str, ...]]:
    """The files preparation writes, by subfolder of the prepared folder ("": its root), besides
    ``waves/``."""
    return {"": (JOURNAL, SKIPPED, STATEMENTS, DUPLICATES, SALT_FILE),
            PRETRAIN: tuple(f"{s}.tsv" for s in PRETRAIN_SPLITS),
            FINETUNE: tuple(f"{s}{x}" for s in SPLITS for x in (".tsv", LABEL_SUFFIX)) + (CLASSES_FILE,),
            IDENTIFY: ("train.tsv",) + tuple(f"{held_out(s, r)}.tsv" for s in IDENTIFY_HELD_OUT for r in (GALLERY, PROBE))}


def identify_test_missing(folder: Path | str) -> str:
    """Why an ``identify/`` folder has no test gallery/probe, in one line with the fix; "" when it
    has them. Folders prepared before the test split existed hold ``valid_gallery``/``valid_probe``
    of the valid and test patients together (scores on them are optimistic: the checkpoint was
    chosen there); re-running the same ``fairseq-ecg-manifest`` command reuses every waveform and
    writes the four files from disjoint patients."""
    folder = Path(folder)
    needed = [folder / f"{held_out('test', role)}.tsv" for role in (GALLERY, PROBE)]
    if all(path.is_file() for path in needed):
        return ""
    return (f"{needed[0]} not found: {folder} was prepared before identification had a test split (its "
            "valid_gallery/valid_probe joined the valid and test patients); re-run the same "
            "fairseq-ecg-manifest command (it reuses the waveforms) to write valid_* and test_* from disjoint patients")
