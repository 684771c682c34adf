"""Hospital exports leave no identifier behind (issue 20 items 4, 5): patient ids and file names
are hashed with a salt that is never a public constant (a random one kept per prepared folder, or
FAIRSEQ_ECG_PATIENT_SALT), re-runs keep their hashes, two folders link only through the same
explicit salt, and no file that preparation, predict or embed writes holds an MRN, a name, a birth
date, a DICOM UID or the export's path."""
import hashlib
import os
import shutil
from pathlib import Path

import pytest

from fairseq_ecg import embed, importer, predict
from fairseq_ecg.manifest import read_manifest
from fairseq_ecg.prepared import SALT_FILE
from fairseq_ecg.preparation import main
from fairseq_ecg.sources import PATIENT_SALT_ENV
from fairseq_ecg.synth import synthesize_archive
from fairseq_ecg.synth.layouts import SURNAMES
from signals_reference import signals_checkpoint

OLD_PUBLIC_SALT = "fairseq_ecg patient id"  # the default before: anyone could hash guessed MRNs with it
PLANTED_FOLDER = "MRN799999_Doe"  # a folder of the export named after a patient


def _old_hash(value: str) -> str:
    return hashlib.sha256(f"{OLD_PUBLIC_SALT}\0{value}".encode()).hexdigest()[:16]


@pytest.fixture(autouse=True)
def no_salt(monkeypatch):
    monkeypatch.delenv(PATIENT_SALT_ENV, raising=False)


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> Path:
    """A MUSE and a DICOM export (file names MRN..._NNNNN, patient id, name, birth date, accession
    number and UIDs in every file), inside a folder named after a patient."""
    root = tmp_path_factory.mktemp("exports")
    synthesize_archive(root / "muse" / PLANTED_FOLDER, records=4, patients=2, seed=3, layout="muse_xml")
    synthesize_archive(root / "dicom" / PLANTED_FOLDER, records=3, patients=2, seed=4, layout="dicom")
    (root / "muse" / PLANTED_FOLDER / "MRN700009_00099.xml").write_bytes(b"<RestingECG><broken")  # skipped
    return root


def _secrets(exports: Path) -> set[str]:
    """Every identifier the exports hold, as written, and its hash under the old public salt."""
    import pydicom

    # birth dates as the exports write them (MUSE 0N-11-1950, DICOM 19500N11): a bare "1950" turns
    # up in random hex hashes by chance; MUSE also holds the test's date and time
    found = {PLANTED_FOLDER, "Doe", "Pat0", "Pat1", "-11-1950", *(f"19500{k}11" for k in range(1, 10)),
             "03-14-2019", "10:21:07", *SURNAMES}
    for path in exports.rglob("*"):
        if path.is_file():
            found |= {path.name, path.stem, _old_hash(path.stem), _old_hash(path.relative_to(path.parent.parent).as_posix())}
            found |= {_old_hash(path.relative_to(folder).as_posix()) for folder in path.parents if folder != path}
        if path.suffix == ".dcm":
            ds = pydicom.dcmread(path)
            for value in (ds.PatientID, str(ds.PatientName), ds.PatientBirthDate, ds.AccessionNumber,
                          ds.StudyInstanceUID, ds.SOPInstanceUID):
                found |= {str(value), _old_hash(str(value))}
    for number in range(700000, 700010):
        found |= {f"MRN{number}", _old_hash(f"MRN{number}")}
    return found


def _leaks(folder: Path, secrets: set[str], names: tuple[str, ...] = ()) -> list[str]:
    """(file, secret) of every secret found in the bytes or the names of the files written."""
    leaks = []
    files = [p for p in folder.rglob("*") if p.is_file() and (not names or p.name.startswith(names))]
    assert files
    for path in files:
        data = path.read_bytes() + path.relative_to(folder).as_posix().encode()
        leaks += [f"{path}: {s}" for s in secrets if s.encode() in data or s.encode("latin-1", "ignore") in data]
    return leaks


def _prepare(src: Path, dest: Path) -> int:
    return main([str(src), "--dest", str(dest), "--workers", "1", "--valid-percent", "30", "--test-percent", "0"])


def _patients(dest: Path) -> set[str]:
    return {row.patient for split in ("train", "valid") for row in read_manifest(dest / "pretrain" / f"{split}.tsv").rows}


def _texts(dest: Path) -> dict[str, bytes]:
    return {p.relative_to(dest).as_posix(): p.read_bytes() for p in sorted(dest.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("layout", ["muse", "dicom"])
def test_preparation_salt_is_random_per_folder_kept_and_private(exports, tmp_path, layout, capsys):
    src = exports / layout
    dest = tmp_path / "prepared"
    assert _prepare(src, dest) == 0
    assert not _leaks(dest, _secrets(exports))
    salt = dest / SALT_FILE
    assert oct(salt.stat().st_mode & 0o777) == "0o600"
    (kind, value), = [line.split() for line in salt.read_text().splitlines() if not line.startswith("#")]
    assert kind == "random" and len(value) == 64
    before = _texts(dest)
    capsys.readouterr()
    assert _prepare(src, dest) == 0  # a re-run: the same salt, every record reused, the same bytes
    assert " 0 written, " in capsys.readouterr().out
    assert _texts(dest) == before
    other = tmp_path / "other"
    assert _prepare(src, other) == 0  # another folder: another random salt, ids that do not link
    assert _patients(other).isdisjoint(_patients(dest)) and len(_patients(dest)) == 2


def test_same_explicit_salt_links_two_folders_and_other_salts_are_refused(exports, tmp_path, monkeypatch, capsys):
    first, second = tmp_path / "part1", tmp_path / "part2"
    files = sorted((exports / "muse" / PLANTED_FOLDER).glob("MRN70000[01]_*.xml"))
    for folder, chosen in ((first, files[::2]), (second, files[1::2])):  # each patient in both
        (folder / "export").mkdir(parents=True)
        for path in chosen:
            shutil.copy(path, folder / "export" / path.name)
    monkeypatch.setenv(PATIENT_SALT_ENV, "the hospital's own secret")
    assert _prepare(first / "export", first / "prepared") == 0
    assert _prepare(second / "export", second / "prepared") == 0
    assert _patients(first / "prepared") == _patients(second / "prepared")  # the same two patients
    kept = (first / "prepared" / SALT_FILE).read_text()
    assert "explicit" in kept and "secret" not in kept  # the folder keeps a fingerprint, not the salt
    capsys.readouterr()
    monkeypatch.setenv(PATIENT_SALT_ENV, "another salt")
    assert _prepare(first / "export", first / "prepared") == 2
    monkeypatch.delenv(PATIENT_SALT_ENV)
    assert _prepare(first / "export", first / "prepared") == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and all(PATIENT_SALT_ENV in line and str(first / "prepared") in line for line in errors)
    assert _prepare(second / "export", tmp_path / "random") == 0  # a random-salt folder ...
    monkeypatch.setenv(PATIENT_SALT_ENV, "the hospital's own secret")
    assert _prepare(second / "export", tmp_path / "random") == 2  # ... refuses an explicit salt


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("classifier")
    signals_checkpoint(root / "source.pt", "classifier", "parametrizations", seed=2, num_labels=3)
    (root / "labels.txt").write_text("AF\nSNR\nRBBB\n")
    assert importer.main([str(root / "source.pt"), "--out", str(root / "cls.pt"), "--kind", "classifier",
                          "--labels", str(root / "labels.txt")]) == 0
    return root / "cls.pt"


@pytest.mark.parametrize("layout", ["muse", "dicom"])
def test_predict_and_embed_write_no_identifier_and_take_a_folders_salt(exports, classifier, tmp_path, layout):
    src = exports / layout
    secrets = _secrets(exports)
    out = tmp_path / "out"
    common = ["--checkpoint", str(classifier), str(src), "--cpu"]
    assert predict.main([*common, "--out", str(out / "predictions.csv"), "--thresholds", "0.5"]) == 0
    assert embed.main([*common, "--out", str(out / "embeddings.npy")]) == 0
    assert not _leaks(out, secrets)
    assert {p.name for p in out.iterdir()} >= {"predictions.csv", "predictions.patient_salt.txt", "embeddings.npy",
                                               "embeddings.tsv", "embeddings.patient_salt.txt"}
    rows = (out / "embeddings.tsv").read_text().splitlines()[1:]
    again = tmp_path / "again"
    assert embed.main([*common, "--out", str(again / "embeddings.npy")]) == 0
    assert (again / "embeddings.tsv").read_text().splitlines()[1:] != rows  # a new salt: other hashes
    assert embed.main([*common, "--out", str(out / "embeddings.npy")]) == 0
    assert (out / "embeddings.tsv").read_text().splitlines()[1:] == rows  # its own salt kept: the same
    # with a prepared folder's salt, records and patients are named as in its manifests
    dest = tmp_path / "prepared"
    assert _prepare(src, dest) == 0
    linked = tmp_path / "linked"
    assert embed.main([*common, "--out", str(linked / "embeddings.npy"), "--salt-from", str(dest)]) == 0
    assert predict.main([*common, "--out", str(linked / "predictions.csv"), "--salt-from", str(dest)]) == 0
    manifest = {(r.relative_path.removeprefix("waves/").removesuffix(".npy"), r.patient)  # the record's key
                for s in ("train", "valid") for r in read_manifest(dest / "pretrain" / f"{s}.tsv").rows}
    embedded = {tuple(line.split("\t")[:2]) for line in (linked / "embeddings.tsv").read_text().splitlines()[1:]}
    assert embedded == manifest and len(embedded) >= 3
    predicted = {line.split(",")[0] for line in (linked / "predictions.csv").read_text().splitlines()[1:]}
    assert predicted == {record for record, _ in manifest}
    assert not any(linked.glob("*.patient_salt.txt")) and not _leaks(linked, secrets)


def test_a_reason_never_names_the_exports_path(tmp_path):
    """pydicom's error for a file gone between listing and reading names its path: replaced by the key."""
    from fairseq_ecg.sources import RecordError, RecordRef, read_record

    missing = tmp_path / PLANTED_FOLDER / "MRN700123_00001.dcm"
    with pytest.raises(RecordError) as error:
        read_record(RecordRef(path=missing, name="3f2a", key="dicom/3f2a", layout="dicom"))
    assert "MRN700123" not in error.value.reason and PLANTED_FOLDER not in error.value.reason
    assert "dicom/3f2a" in error.value.reason and "FileNotFoundError" in error.value.reason
