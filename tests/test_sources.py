"""The archive sources of fairseq_ecg.sources: the registry and --layout auto, a round trip per
source from its synthetic archive (fairseq-ecg-synth --layout) through fairseq-ecg-manifest, bad
inputs with their reasons in skipped.tsv, CODE-15%'s label mapping and unknown labels, which the
loss and every metric leave out."""
import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fairseq_ecg.labels import UNKNOWN, scored_labels
from fairseq_ecg.manifest import read_labels, read_manifest
from fairseq_ecg.metrics.classification import classification_metrics
from fairseq_ecg.prepared import SALT_FILE
from fairseq_ecg.preparation import main
from fairseq_ecg.sources import (LayoutError, RecordError, detect_layout, discover, layouts, patient_salt_from, read_record,
                                 resample)
from fairseq_ecg.synth import synthesize_archive, synthesize_signal

SPLITS = ("train", "valid", "test")


def prepared_rows(dest: Path) -> dict:
    """record name -> (wave, row, label tokens) over the finetune splits."""
    out = {}
    for split in SPLITS:
        manifest = read_manifest(dest / "finetune" / f"{split}.tsv")
        for row, tokens in zip(manifest.rows, read_labels(manifest)):
            out[row.record] = (np.load(manifest.root / row.relative_path), row, tokens)
    return out


def skipped(dest: Path) -> dict:
    return dict(line.split("\t", 1) for line in (dest / "skipped.tsv").read_text().splitlines())


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    written = {}
    for layout in ("numpy", "code15"):
        written[layout] = (root / layout, synthesize_archive(root / layout, records=24, patients=8, seed=7, layout=layout))
    return written


def test_every_source_is_registered_and_recognised_on_its_own(archives, tmp_path):
    assert {"physionet2021", "ptbxl", "wfdb", "numpy", "code15"} <= set(layouts())
    for layout, (src, _) in archives.items():
        assert detect_layout(src) == layout
    (tmp_path / "empty").mkdir()
    with pytest.raises(LayoutError, match="no known archive layout recognised.*numpy"):
        detect_layout(tmp_path / "empty")


# --- NumPy folder ---------------------------------------------------------------------------

def test_numpy_round_trip_both_axes_and_npz(archives, tmp_path):
    src, written = archives["numpy"]
    assert {Path(w.path).suffix for w in written} == {".npy", ".npz"}
    dest = tmp_path / "out"
    assert main([str(src), "--dest", str(dest), "--workers", "2"]) == 0
    rows = prepared_rows(dest)
    assert set(rows) == {w.name for w in written}
    labels = scored_labels()
    for record in written:  # 500 Hz float32 mV: nothing to resample
        wave, row, tokens = rows[record.name]
        np.testing.assert_allclose(wave, synthesize_signal(record), atol=1e-6)
        assert row.patient == record.patient and row.lead_mask == "1" * 12
        assert tokens == labels.canonical_codes(record.codes)


def test_numpy_bad_rows_and_arrays_are_skipped_with_their_reason(tmp_path):
    src = tmp_path / "arrays"
    src.mkdir()
    good = np.random.default_rng(0).standard_normal((3, 3000)).astype(np.float32)
    np.save(src / "good.npy", good)
    np.save(src / "wrong_axis.npy", good)
    np.save(src / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(src / "flat.npy", good[0])
    (src / "cut.npy").write_bytes((src / "good.npy").read_bytes()[:200])
    rows = [("good.npy", "500", "I,II,V1", "leads-first"), ("wrong_axis.npy", "500", "I,II,V1", "samples-first"),
            ("pickled.npy", "500", "I", "leads-first"), ("flat.npy", "500", "I", "leads-first"),
            ("cut.npy", "500", "I,II,V1", "leads-first"), ("absent.npy", "500", "I", "leads-first"),
            ("rate.npy", "fast", "I", "leads-first"), ("unknown.npy", "500", "I,II,MLII", "leads-first")]
    np.save(src / "unknown.npy", good)
    with open(src / "records.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["record", "sample_rate", "leads", "axis", "patient", "codes"])
        writer.writerows([[*row, f"P{i}", ""] for i, row in enumerate(rows)])
    dest = tmp_path / "out"
    assert main([str(src), "--dest", str(dest), "--workers", "1"]) == 0
    reasons = skipped(dest)
    assert set(reasons) == {"wrong_axis", "pickled", "flat", "cut", "absent", "rate"}
    assert "3000 channels along the samples-first axis, records.csv names 3 leads" in reasons["wrong_axis"]
    assert "unreadable array pickled.npy" in reasons["pickled"] and "1-D" in reasons["flat"]
    assert "unreadable array cut.npy" in reasons["cut"] and "array file absent.npy is missing" in reasons["absent"]
    assert "sample_rate 'fast' is not a positive number" in reasons["rate"]
    rows = prepared_rows(dest)
    assert rows["good"][1].lead_mask == "110000100000"
    assert rows["unknown"][1].lead_mask == "110000000000"  # MLII dropped, noted in records.tsv
    assert "dropped unknown lead 'MLII'" in (dest / "records.tsv").read_text()


# --- CODE-15% -------------------------------------------------------------------------------

def test_code15_round_trip_lengths_amplitudes_and_padding_row(archives, tmp_path):
    src, written = archives["code15"]
    refs = list(discover(src, "code15"))
    assert len(refs) == len(written)  # the padding row (exam_id 0) of each file is not an exam
    by_name = {w.name: w for w in written}
    assert {r.num_samples for r in written} == {2800, 4000}  # 7 and 10 s at 400 Hz
    amplitudes = []
    for ref in refs:
        record = read_record(ref)
        expected = synthesize_signal(by_name[ref.name])
        assert record.sample_rate == 400 and record.num_samples == expected.shape[1]  # cut by length
        np.testing.assert_allclose(record.signal, expected, atol=1e-6)
        amplitudes.append(np.ptp(record.signal[1]))
    # read as mV: QRS amplitudes in lead II of a few tenths of a mV to a few mV, as in real ECGs
    assert 0.3 < np.median(amplitudes) < 3.0 and max(amplitudes) < 5.0
    dest = tmp_path / "out"
    assert main([str(src), "--dest", str(dest), "--workers", "2"]) == 0
    rows = prepared_rows(dest)
    for record in written:
        wave, row, tokens = rows[record.name]
        assert row.source_rate == 400 and row.patient == record.patient
        np.testing.assert_allclose(wave, resample(synthesize_signal(record), 400, 500), atol=1e-5)


def test_code15_labels_map_to_six_scored_classes_and_the_rest_are_unknown(archives, tmp_path):
    from fairseq_ecg.sources.code15 import CODE15_TO_SNOMED

    labels = scored_labels()
    classes = {labels.index_of(code) for code in CODE15_TO_SNOMED.values()}
    assert len(classes) == 6  # each of the six lands on its own CinC 2021 scored class
    src, written = archives["code15"]
    dest = tmp_path / "out"
    assert main([str(src), "--dest", str(dest), "--workers", "1"]) == 0
    rows = prepared_rows(dest)
    for record in written:
        tokens = rows[record.name][2]
        positives = [t for t in tokens if not t.startswith("?")]
        unknown = [t[1:] for t in tokens if t.startswith("?")]
        assert positives == labels.canonical_codes(record.codes)
        assert len(unknown) == 20 and not {labels.index_of(c) for c in unknown} & classes
        target = labels.encode(tokens)
        assert (target == UNKNOWN).sum() == 20 and set(np.flatnonzero(target >= 0)) == classes
    assert sum(bool(w.codes) for w in written) >= 3  # the CSV's True cells come through


def test_code15_exam_that_starts_at_zero_keeps_its_length(tmp_path):
    """Cut by the documented lengths, not by stripping zeros."""
    from fairseq_ecg.sources.code15 import exam_length

    tracing = np.zeros((4096, 12))
    tracing[648:3448] = np.sin(np.arange(2800) / 20.0)[:, None]
    tracing[648:700] = 0.0  # the recording itself begins flat
    assert exam_length(tracing) == 2800
    full = np.ones((4096, 12))
    assert exam_length(full) == 4096


def test_code15_bad_label_cell_is_skipped_with_its_line(archives, tmp_path):
    import shutil

    src = tmp_path / "code15"
    shutil.copytree(archives["code15"][0], src)
    with open(src / "exams.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    rows[0]["AF"] = "maybe"
    with open(src / "exams.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    dest = tmp_path / "out"
    assert main([str(src), "--dest", str(dest), "--workers", "1"]) == 0
    reasons = skipped(dest)
    assert len(reasons) == 1 and "exams.csv line 2: AF 'maybe' is not True/False" in next(iter(reasons.values()))


# --- unknown labels: not negatives ------------------------------------------------------------

class _Logits(torch.nn.Module):
    """A model that answers with the given logits (the criterion only reads them)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, **_):
        return {"logits": self.logits}


def test_the_loss_leaves_unknown_labels_out():
    from fairseq_ecg.criterions.ecg_bce import EcgBceCriterion

    class Task:  # what the criterion reads from its task
        num_classes = 4

    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0], [-2.0, 1.0, 0.0, -3.0]])
    target = torch.tensor([[1.0, UNKNOWN, 0.0, UNKNOWN], [0.0, 1.0, UNKNOWN, 0.0]])
    criterion = EcgBceCriterion(Task())
    criterion.train()
    loss, _, log = criterion(_Logits(logits), {"net_input": {}, "target": target})
    known = target >= 0
    expected = F.binary_cross_entropy_with_logits(logits[known], target[known], reduction="sum")
    assert torch.isclose(loss, expected) and log["nlabels"] == 5
    everything = F.binary_cross_entropy_with_logits(logits, target.clamp(min=0), reduction="sum")
    assert not torch.isclose(loss, everything)  # unknown as negatives would differ


def test_every_metric_leaves_unknown_labels_out():
    rng = np.random.default_rng(3)
    labels = rng.random((40, 26)) < 0.3
    scores = np.clip(labels * 0.4 + rng.random((40, 26)) * 0.6, 0, 1)
    known = np.ones_like(labels)
    known[:20, 5:] = False  # 20 records (CODE-15%-like) know only 5 classes
    masked = classification_metrics(labels, scores, 0.5, known=known)
    # flipping every unknown label changes nothing
    flipped = classification_metrics(np.where(known, labels, ~labels), scores, 0.5, known=known)
    assert masked == flipped
    # the Challenge metric uses the fully known records only
    full = classification_metrics(labels[20:], scores[20:], 0.5)
    assert masked["challenge_metric"] == full["challenge_metric"]
    assert classification_metrics(labels, scores, 0.5, known=np.ones_like(labels)) == classification_metrics(
        labels, scores, 0.5)


# --- MIMIC-IV-ECG -----------------------------------------------------------------------------

def test_mimic_round_trip_patients_with_several_studies_reach_identification(tmp_path):
    src = tmp_path / "mimic"
    written = synthesize_archive(src, records=40, patients=10, seed=3, layout="mimic_iv_ecg")
    assert detect_layout(src) == "mimic_iv_ecg"
    dest = tmp_path / "out"
    assert main([str(src), "--dest", str(dest), "--workers", "2", "--valid-percent", "20",
                 "--test-percent", "20"]) == 0
    for split in SPLITS:  # no labels: nothing in finetune/
        assert read_manifest(dest / "finetune" / f"{split}.tsv").rows == []
    pretrain = {r.record: r for split in ("train", "valid") for r in read_manifest(dest / "pretrain" / f"{split}.tsv").rows}
    by_name = {w.name: w for w in written}
    for name, row in pretrain.items():  # WFDB 200/mV in MIMIC's lead order, back in canonical order
        wave = np.load(dest / row.relative_path)
        np.testing.assert_allclose(wave, synthesize_signal(by_name[name]), atol=0.5 / 200 + 1e-6)
        assert row.patient == by_name[name].patient
    held_out = [r for split in ("valid", "test") for role in ("gallery", "probe")
                for r in read_manifest(dest / "identify" / f"{split}_{role}.tsv").rows]
    train = read_manifest(dest / "identify" / "train.tsv").rows
    assert train and held_out and len({r.patient for r in train}) >= 3
    statements = dict(line.split("\t", 1) for line in (dest / "statements.tsv").read_text().splitlines())
    assert len(statements) == len(written) and all("Normal ECG" in text for text in statements.values())


# --- GE MUSE XML --------------------------------------------------------------------------------

def _discovered(src: Path, layout: str, dest: Path) -> list:
    """The records of ``src`` named as the preparation into ``dest`` named them (its salt)."""
    with patient_salt_from(dest / SALT_FILE, create=False):
        return list(discover(src, layout))


def _all_output_text(dest: Path) -> str:
    return "\n".join(p.read_bytes().decode("utf-8", "replace") for p in dest.rglob("*") if p.is_file()
                     and p.suffix != ".npy") + "\n".join(p.as_posix() for p in dest.rglob("*"))


def test_muse_round_trip_derives_the_limb_leads_and_copies_nothing_identifying(tmp_path):
    from fairseq_ecg.synth.layouts import SURNAMES

    src = tmp_path / "muse"
    written = synthesize_archive(src, records=12, patients=4, seed=5, layout="muse_xml")
    dest = tmp_path / "out"
    assert main([str(src), "--dest", str(dest), "--workers", "2", "--valid-percent", "25", "--test-percent", "25"]) == 0
    rows = {r.record: r for split in ("train", "valid") for r in read_manifest(dest / "pretrain" / f"{split}.tsv").rows}
    refs = {ref.name: ref for ref in _discovered(src, "muse_xml", dest)}
    by_path = {w.path: w for w in written}
    step = 4.88e-3  # mV per bit
    checked = 0
    for name, row in rows.items():
        record = by_path[refs[name].path]
        wave, expected = np.load(dest / row.relative_path), synthesize_signal(record)
        stored = [0, 1, 6, 7, 8, 9, 10, 11]
        np.testing.assert_allclose(wave[stored], expected[stored], atol=step / 2 + 1e-6)
        # III, aVR, aVL, aVF from I and II: Einthoven and Goldberger reproduce the synthetic 12 leads
        np.testing.assert_allclose(wave[[2, 3, 4, 5]], expected[[2, 3, 4, 5]], atol=step + 1e-6)  # III = II - I: two roundings
        assert row.derived == "III,aVR,aVL,aVF"
        checked += 1
    assert checked >= 6
    patients = {r.patient for r in rows.values()}
    assert len(patients) >= 2 and all(len(p) == 16 and int(p, 16) >= 0 for p in patients)  # salted hashes
    text = _all_output_text(dest)
    # birth dates as written (0N-11-1950): a bare "1950" also turns up in hex hashes by chance
    for secret in ["MRN7000", "-11-1950", "Pat1", *SURNAMES]:
        assert secret not in text, secret
    assert "Sinus rhythm" in (dest / "statements.tsv").read_text() or "Abnormal rhythm" in (dest / "statements.tsv").read_text()


def _without_last(data: bytes, part: bytes) -> bytes:
    at = data.rindex(part)  # in the Rhythm waveform, which follows the Median one
    return data[:at] + data[at + len(part):]


def test_muse_exports_it_cannot_read_faithfully_are_skipped_with_the_reason(tmp_path):
    from fairseq_ecg.synth.layouts import muse_document

    src = tmp_path / "muse"
    src.mkdir()
    signal = np.sin(np.arange(5000) / 30.0)[None].repeat(12, 0) * 0.5
    good = muse_document(signal, 500, "MRN1", ("Doe", "Jane"), "01-01-1950", ["Sinus rhythm"])
    cases = {
        "good": good,
        "median_only": good.replace(b"<WaveformType>Rhythm</WaveformType>", b"<WaveformType>Median</WaveformType>"),
        "no_rate": good.replace(b"<SampleBase>500</SampleBase>", b""),
        "no_scale": _without_last(good, b"<LeadAmplitudeUnitsPerBit>4.88</LeadAmplitudeUnitsPerBit>"),
        "unit": good.replace(b"MICROVOLTS", b"NANOFARADS"),
        "lead": good.replace(b"<LeadID>V3</LeadID>", b"<LeadID>X7</LeadID>"),
        "truncated": good.replace(b"<LeadSampleCountTotal>5000</LeadSampleCountTotal>",
                                  b"<LeadSampleCountTotal>9000</LeadSampleCountTotal>"),
        "broken": good[: len(good) // 2],
    }
    for name, data in cases.items():
        (src / f"{name}.xml").write_bytes(data)
    dest = tmp_path / "out"
    assert main([str(src), "--dest", str(dest), "--workers", "1", "--layout", "muse_xml"]) == 0
    reasons = {next(ref.path.stem for ref in _discovered(src, "muse_xml", dest) if ref.key == key): why
               for key, why in skipped(dest).items()}
    assert set(reasons) == set(cases) - {"good"}
    assert "0 Waveform(s) with WaveformType Rhythm (found: Median, Median)" in reasons["median_only"]
    assert "sampling rate (SampleBase) is missing" in reasons["no_rate"]
    assert "amplitude per bit (LeadAmplitudeUnitsPerBit) is missing" in reasons["no_scale"]
    assert "LeadAmplitudeUnits 'NANOFARADS'" in reasons["unit"] and "unknown LeadID 'X7'" in reasons["lead"]
    assert "LeadSampleCountTotal says 9000" in reasons["truncated"] and "not well-formed XML" in reasons["broken"]


# --- DICOM ------------------------------------------------------------------------------------

def test_dicom_round_trip_takes_the_rhythm_group_and_copies_nothing_identifying(tmp_path):
    from fairseq_ecg.synth.layouts import DICOM_UV_PER_BIT, SURNAMES

    src = tmp_path / "dicom"
    written = synthesize_archive(src, records=12, patients=4, seed=6, layout="dicom")
    dest = tmp_path / "out"
    assert main([str(src), "--dest", str(dest), "--workers", "2", "--valid-percent", "25", "--test-percent", "25"]) == 0
    refs = {ref.name: ref for ref in _discovered(src, "dicom", dest)}
    by_path = {w.path: w for w in written}
    rows = [r for split in ("train", "valid") for r in read_manifest(dest / "pretrain" / f"{split}.tsv").rows]
    assert len(rows) >= 6
    for row in rows:  # the 10 s rhythm group, not the 0.6 s median beat
        wave = np.load(dest / row.relative_path)
        expected = synthesize_signal(by_path[refs[row.record].path])
        assert row.num_samples == expected.shape[1] == 5000 and row.derived == ""
        np.testing.assert_allclose(wave, expected, atol=DICOM_UV_PER_BIT / 2000 + 1e-6)
    text = _all_output_text(dest)
    for secret in ["MRN7000", "ACC", *(f"19500{k}11" for k in range(1, 10)), "Pat1", *SURNAMES]:
        assert secret not in text, secret


def test_dicom_objects_it_cannot_read_faithfully_are_skipped_with_the_reason(tmp_path):
    import pydicom

    from fairseq_ecg.synth.layouts import dicom_dataset

    src = tmp_path / "dicom"
    src.mkdir()
    signal = np.sin(np.arange(5000) / 30.0)[None].repeat(12, 0) * 0.5

    def case(name, edit=None):
        ds = dicom_dataset(signal, 500, "MRN1", "Doe^Jane", "19500101")
        if edit:
            edit(ds)
        ds.save_as(src / f"{name}.dcm", enforce_file_format=True)

    rhythm = lambda ds: ds.WaveformSequence[1]  # noqa: E731
    case("good")
    case("two_rhythms", lambda ds: setattr(ds.WaveformSequence[0], "MultiplexGroupLabel", "RHYTHM"))

    def unlabelled(ds):
        for group in ds.WaveformSequence:
            group.MultiplexGroupLabel, group.WaveformOriginality = "", "ORIGINAL"
    case("unidentified", unlabelled)
    case("no_sensitivity", lambda ds: delattr(rhythm(ds).ChannelDefinitionSequence[3], "ChannelSensitivity"))
    case("unit", lambda ds: setattr(rhythm(ds).ChannelDefinitionSequence[0].ChannelSensitivityUnitsSequence[0],
                                    "CodeValue", "mmHg"))

    def unknown_label(ds):
        source = rhythm(ds).ChannelDefinitionSequence[5].ChannelSourceSequence[0]
        source.CodeValue, source.CodeMeaning = "2:999", "Lead XYZ"
    case("label", unknown_label)
    case("truncated", lambda ds: setattr(rhythm(ds), "WaveformData", rhythm(ds).WaveformData[:1000]))
    case("rate", lambda ds: setattr(rhythm(ds), "SamplingFrequency", "0"))
    (src / "not_dicom.dcm").write_bytes(b"\0" * 200)
    dest = tmp_path / "out"
    assert main([str(src), "--dest", str(dest), "--workers", "1"]) == 0
    reasons = {next(ref.path.stem for ref in _discovered(src, "dicom", dest) if ref.key == key): why
               for key, why in skipped(dest).items()}
    assert set(reasons) == {"two_rhythms", "unidentified", "no_sensitivity", "unit", "label", "truncated", "rate",
                            "not_dicom"}
    assert all("cannot identify the rhythm group" in reasons[k] for k in ("two_rhythms", "unidentified"))
    assert "no ChannelSensitivity or its units" in reasons["no_sensitivity"]
    assert "sensitivity unit 'mmHg'" in reasons["unit"] and "unknown channel label" in reasons["label"]
    assert "WaveformData holds 1000 bytes" in reasons["truncated"] and "SamplingFrequency" in reasons["rate"]
    assert "DICOM" in reasons["not_dicom"]
    assert pydicom.dcmread(src / "good.dcm").PatientID == "MRN1"  # the export itself is left as it was


# --- several sources in one run ---------------------------------------------------------------

def test_mixed_sources_in_one_run_keep_their_names_and_patients_apart(tmp_path):
    """A CODE-15% folder, a NumPy folder and a PhysioNet/CinC 2021 folder, each recognised on its own."""
    sources = []
    for layout in ("code15", "numpy", "physionet2021"):
        sources.append(tmp_path / layout)
        synthesize_archive(sources[-1], records=9, patients=3, seed=2, layout=layout)
    dest = tmp_path / "out"
    assert main([*map(str, sources), "--dest", str(dest), "--workers", "2"]) == 0
    assert "layout=code15,numpy,physionet2021 " in (dest / "records.tsv").read_text().splitlines()[0]
    rows = [r for split in ("train", "valid") for r in read_manifest(dest / "pretrain" / f"{split}.tsv").rows]
    rows += read_manifest(dest / "finetune" / "test.tsv").rows
    by_source = {}
    for row in rows:
        folder = row.relative_path.split("/")[1]
        by_source.setdefault(folder, set()).add(row.patient)
        assert row.patient.startswith(f"{folder}:")
    assert set(by_source) == {"code15", "numpy", "physionet2021"}
    assert (dest / "skipped.tsv").read_text() == ""
    # the labelled CinC records keep all classes known, CODE-15% marks 20 unknown
    manifest = read_manifest(dest / "finetune" / "train.tsv")
    for row, tokens in zip(manifest.rows, read_labels(manifest)):
        unknown = sum(t.startswith("?") for t in tokens)
        assert unknown == (20 if row.relative_path.startswith("waves/code15/") else 0)


def test_fairseq_ecg_synth_writes_every_layout(tmp_path):
    from fairseq_ecg import synth

    for layout in synth.LAYOUTS:
        assert synth.main([str(tmp_path / layout), "--records", "3", "--patients", "2", "--layout", layout]) == 0
        assert detect_layout(tmp_path / layout) == ("physionet2021" if layout == "physionet2021" else layout)


@pytest.mark.parametrize("layout,suffix", [("physionet2021", ".hea"), ("physionet2021", ".mat"), ("ptbxl", ".dat"),
                                           ("numpy", ".npy"), ("code15", ".hdf5"), ("muse_xml", ".xml"),
                                           ("dicom", ".dcm")])
def test_every_layout_follows_a_file_link_out_of_the_archive_and_no_folder_link(tmp_path, layout, suffix):
    """One rule for links, in every layout (issue 20 item 16): a file that is a link (to storage
    outside the archive, as hospital exports are often laid out) is read like the file it names;
    a folder link is not walked (an archive may link to itself)."""
    import os
    import shutil

    from fairseq_ecg.sources import discover, read_record
    from fairseq_ecg.synth import synthesize_archive

    src, outside = tmp_path / "archive", tmp_path / "storage"
    outside.mkdir()
    synthesize_archive(src, records=2, patients=2, seed=1, layout=layout)
    before = [read_record(ref).signal for ref in discover(src, layout)]
    linked = sorted(src.rglob(f"*{suffix}"))[0]
    shutil.move(linked, outside / linked.name)
    os.symlink(outside / linked.name, linked)
    os.symlink(src, src / "loop")  # a folder link back into the archive: not walked
    after = [read_record(ref).signal for ref in discover(src, layout)]
    assert len(after) == len(before) and all(np.array_equal(a, b) for a, b in zip(after, before))
