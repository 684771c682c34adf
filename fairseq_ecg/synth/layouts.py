"""Synthetic archives in the on-disk formats of the other readers of :mod:`fairseq_ecg.sources`.

The signals are those of :mod:`fairseq_ecg.synth` (a patient's heart vector projected to 12 leads);
each writer stores them as the real archive does, with its file names, CSV columns, HDF5 datasets,
XML elements or DICOM attributes, so that every reader can be tried without the real data:

* ``numpy``: ``records.csv`` + ``arrays/NNNNN.npy`` (float32 mV; every other record samples-first,
  every third an ``.npz``), 500 Hz, 10 or 12 s.
* ``code15``: ``exams.csv`` + ``exams_part0.hdf5`` (and ``exams_part1.hdf5``): ``tracings``
  [exams + 1, 4096, 12] float32 in mV at 400 Hz, 7 or 10 s zero-padded symmetrically, ``exam_id``
  with the final padding row 0 (as in the real files).
* ``mimic_iv_ecg``: ``record_list.csv``, ``machine_measurements.csv`` (free-text ``report_N``) and
  WFDB records ``files/pNNNN/pNNNNNNNN/sNNNNNNNN/NNNNNNNN`` (format 16, 200/mV, 500 Hz, 10 s, leads
  in MIMIC's order I, II, III, aVR, aVF, aVL, V1-V6).
* ``muse_xml``: ``NNNNN.xml`` GE MUSE ``RestingECG`` exports: a ``Median`` and a ``Rhythm``
  ``Waveform``, 8 stored leads (I, II, V1-V6) as base64 little-endian int16 at 4.88 uV per bit,
  a patient name, id and birth date (which must not reach any output), diagnosis statements.
* ``dicom``: ``NNNNN.dcm`` 12-lead ECG Waveform Storage objects (pydicom): a median-beat group and
  a rhythm group, channel labels as MDC codes, sensitivities in uV.
"""
from __future__ import annotations

import base64
import xml.etree.ElementTree as ET
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..leads import LEADS
from .signals import SynthRecord, records_of, write_csv, write_wfdb16, write_wfdb_archive

CODE15_COLUMNS = ["exam_id", "age", "is_male", "nn_predicted_age", "1dAVb", "RBBB", "LBBB", "SB", "ST", "AF",
                  "patient_id", "death", "timey", "normal_ecg", "trace_file"]
MIMIC_ORDER = ("I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6")
MIMIC_GAIN = 200
MUSE_UV_PER_BIT = 4.88
MUSE_STORED = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")


def write_numpy(out: Path, people, owner, seed: int) -> list[SynthRecord]:
    written, rows = [], []
    (out / "arrays").mkdir()
    for index, p, patient, plan, signal in records_of(people, owner, seed):
        name = f"{index + 1:05d}"
        samples_first = index % 2 == 1
        array = (signal.T if samples_first else signal).astype(np.float32)
        path = out / "arrays" / f"{name}.{'npz' if index % 3 == 2 else 'npy'}"
        if index % 3 == 2:
            np.savez(path, signal=array)
        else:
            np.save(path, array)
        rows.append([path.relative_to(out).as_posix(), plan.fs, ",".join(LEADS),
                     "samples-first" if samples_first else "leads-first", f"N{p + 1:04d}", ";".join(plan.codes)])
        written.append(SynthRecord(name, path, f"N{p + 1:04d}", plan.fs, plan.num_samples, plan.codes,
                                   "numpy", "numpy", seed, index, p))
    write_csv(out / "records.csv", ["record", "sample_rate", "leads", "axis", "patient", "codes"], rows)
    return written


def write_code15(out: Path, people, owner, seed: int, parts: int = 2) -> list[SynthRecord]:
    import h5py

    from ..sources.code15 import CODE15_SAMPLES, CODE15_TO_SNOMED
    from .signals import AF, CLBBB, CRBBB, IAVB, SB, STACH

    flags = {"1dAVb": IAVB, "RBBB": CRBBB, "LBBB": CLBBB, "SB": SB, "ST": STACH, "AF": AF}
    rng = np.random.default_rng([seed, 15])
    exam_ids = rng.choice(np.arange(100_000, 10_000_000), size=len(owner), replace=False)
    parts = [list(range(len(owner)))[i::parts] for i in range(min(parts, len(owner)))]
    rows, written = [], []
    for part, members in enumerate(parts):
        name = f"exams_part{part}.hdf5"
        with h5py.File(out / name, "w") as h5:
            tracings = h5.create_dataset("tracings", (len(members) + 1, CODE15_SAMPLES, 12), dtype="float32",
                                         chunks=(1, CODE15_SAMPLES, 12))
            for row, (index, p, patient, plan, signal) in enumerate(records_of(people, owner, seed, members)):
                pad = (CODE15_SAMPLES - signal.shape[1]) // 2
                block = np.zeros((CODE15_SAMPLES, 12), np.float32)
                block[pad:pad + signal.shape[1]] = signal.T
                tracings[row] = block
                labels = {column: code in plan.codes for column, code in flags.items()}
                rows.append([int(exam_ids[index]), patient.age, patient.sex == "Male", patient.age, *labels.values(),
                             10_000 + p, False, 100.0, set(plan.codes) <= {"426783006"}, name])
                codes = tuple(CODE15_TO_SNOMED[c] for c, flag in labels.items() if flag)
                written.append(SynthRecord(str(exam_ids[index]), out / name, str(10_000 + p), plan.fs,
                                           plan.num_samples, codes, "code15", "code15", seed, index, p))
            # the last row pads the file: exam id 0
            h5.create_dataset("exam_id", data=np.append(exam_ids[members], 0).astype(np.int64))
    write_csv(out / "exams.csv", CODE15_COLUMNS, sorted(rows))
    return sorted(written, key=lambda r: r.index)


def write_mimic(out: Path, people, owner, seed: int) -> list[SynthRecord]:
    rng = np.random.default_rng([seed, 16])
    studies = rng.choice(np.arange(40_000_000, 50_000_000), size=len(owner), replace=False)
    listing, reports, written = [], [], []
    order = [LEADS.index(name) for name in MIMIC_ORDER]
    for index, p, patient, plan, signal in records_of(people, owner, seed):
        subject, study = 10_000_000 + p, int(studies[index])
        relative = f"files/p{str(subject)[:4]}/p{subject}/s{study}/{study}"
        path = out / relative
        val = np.clip(np.rint(signal[order] * MIMIC_GAIN), -32767, 32767).astype(np.int16)
        write_wfdb16(path, val, plan.fs, MIMIC_ORDER, MIMIC_GAIN, " 08:45:00 26/05/2180")
        time = f"2180-05-26 08:{index % 60:02d}:00"
        listing.append([subject, study, f"mimic-iv-ecg-demo/{relative}", time, relative])
        text = ["Sinus rhythm" if "426783006" in plan.codes else "Abnormal rhythm", "Normal ECG", ""]
        reports.append([subject, study, 6848296, time, *text, 150, "60 Hz notch", 800, 40, 150, 200, 300, 600, 50, 40, 30])
        written.append(SynthRecord(str(study), path, str(subject), plan.fs, plan.num_samples, (), "mimic_iv_ecg",
                                   "mimic_iv_ecg", seed, index, p))
    write_csv(out / "record_list.csv", ["subject_id", "study_id", "file_name", "ecg_time", "path"], listing)
    write_csv(out / "machine_measurements.csv",
              ["subject_id", "study_id", "cart_id", "ecg_time", "report_0", "report_1", "report_2", "bandwidth",
               "filtering", "rr_interval", "p_onset", "p_end", "qrs_onset", "qrs_end", "t_end", "p_axis", "qrs_axis",
               "t_axis"], reports)
    return written


def _subelements(parent: ET.Element, children) -> None:
    for tag, text in children:
        ET.SubElement(parent, tag).text = str(text)


def muse_document(signal: np.ndarray, fs: int, patient_id: str, name: tuple[str, str], birth: str,
                  statements: Sequence[str]) -> bytes:
    """A GE MUSE ``RestingECG`` export of ``signal`` (12, T) in mV: a 600 ms median beat, then
    the rhythm, each with the 8 leads MUSE stores."""
    root = ET.Element("RestingECG")
    ET.SubElement(ET.SubElement(root, "MuseInfo"), "MuseVersion").text = "9.0.9.18167"
    _subelements(ET.SubElement(root, "PatientDemographics"), (
        ("PatientID", patient_id), ("PatientLastName", name[0]), ("PatientFirstName", name[1]), ("DateofBirth", birth),
        ("Gender", "FEMALE")))
    _subelements(ET.SubElement(root, "TestDemographics"), (("AcquisitionDate", "03-14-2019"),
                                                           ("AcquisitionTime", "10:21:07")))
    diagnosis = ET.SubElement(root, "Diagnosis")
    ET.SubElement(diagnosis, "Modality").text = "RESTING"
    for text in statements:
        _subelements(ET.SubElement(diagnosis, "DiagnosisStatement"), (("StmtFlag", "ENDSLINE"), ("StmtText", text)))
    for kind, length in (("Median", int(0.6 * fs)), ("Rhythm", signal.shape[1])):
        wave = ET.SubElement(root, "Waveform")
        _subelements(wave, (("WaveformType", kind), ("WaveformStartTime", 0), ("NumberofLeads", len(MUSE_STORED)),
                            ("SampleType", "CONTINUOUS_SAMPLES"), ("SampleBase", fs), ("SampleExponent", 0),
                            ("HighPassFilter", 16), ("LowPassFilter", 150), ("ACFilter", 60)))
        for lead in MUSE_STORED:
            values = signal[LEADS.index(lead), :length]
            digital = np.clip(np.rint(values * 1000 / MUSE_UV_PER_BIT), -32767, 32767).astype("<i2")
            _subelements(ET.SubElement(wave, "LeadData"), (
                ("LeadByteCountTotal", 2 * length), ("LeadTimeOffset", 0), ("LeadSampleCountTotal", length),
                ("LeadAmplitudeUnitsPerBit", MUSE_UV_PER_BIT), ("LeadAmplitudeUnits", "MICROVOLTS"),
                ("LeadHighLimit", 32767), ("LeadLowLimit", -32768), ("LeadID", lead), ("LeadOffsetFirstSample", 0),
                ("FirstSampleBaseline", 0), ("LeadSampleSize", 2), ("LeadOff", "FALSE"), ("BaselineSway", "FALSE"),
                ("WaveFormData", base64.b64encode(digital.tobytes()).decode())))
    body = ET.tostring(root, encoding="unicode")
    return ('<?xml version="1.0" encoding="ISO-8859-1"?>\n<!DOCTYPE RestingECG SYSTEM "restecg.dtd">\n'
            + body).encode("latin-1")


SURNAMES = ("Müller", "Smith", "García", "Nguyen", "Kowalski", "Okafor")


DICOM_UV_PER_BIT = 2.5


def _dataset(**attributes):
    from pydicom.dataset import Dataset

    dataset = Dataset()
    dataset.update(attributes)
    return dataset


def _dicom_group(signal: np.ndarray, fs: int, label: str, originality: str):
    from ..sources.dicom import MDC_LEADS

    code_of = {lead: code for code, lead in MDC_LEADS.items()}
    channels = [_dataset(
        ChannelSourceSequence=[_dataset(CodeValue=code_of[lead], CodingSchemeDesignator="MDC",
                                        CodeMeaning=f"Lead {lead}")],
        ChannelSensitivity=str(DICOM_UV_PER_BIT), ChannelSensitivityUnitsSequence=[
            _dataset(CodeValue="uV", CodingSchemeDesignator="UCUM", CodeMeaning="microvolt")],
        ChannelSensitivityCorrectionFactor="1", ChannelBaseline="0", ChannelSampleSkew="0", WaveformBitsStored=16,
    ) for lead in LEADS]
    digital = np.clip(np.rint(signal * 1000 / DICOM_UV_PER_BIT), -32767, 32767).astype("<i2")
    return _dataset(MultiplexGroupTimeOffset="0.0", WaveformOriginality=originality,
                    NumberOfWaveformChannels=signal.shape[0], NumberOfWaveformSamples=signal.shape[1],
                    SamplingFrequency=str(fs), MultiplexGroupLabel=label, ChannelDefinitionSequence=channels,
                    WaveformBitsAllocated=16, WaveformSampleInterpretation="SS",
                    WaveformData=np.ascontiguousarray(digital.T).tobytes())  # interleaved: sample by sample


def dicom_dataset(signal: np.ndarray, fs: int, patient_id: str, name: str, birth: str):
    """A 12-lead ECG Waveform Storage object: a 600 ms median-beat group, then the rhythm group."""
    from pydicom.dataset import FileMetaDataset, Dataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sop_class = "1.2.840.10008.5.1.4.1.1.9.1.1"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, generate_uid(entropy_srcs=[patient_id, name, str(signal.sum())])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.Modality = "ECG"
    ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = patient_id, name, birth, "F"
    ds.StudyInstanceUID = ds.SeriesInstanceUID = generate_uid(entropy_srcs=[patient_id])
    ds.AccessionNumber = f"ACC{patient_id[-4:]}"
    ds.WaveformSequence = [_dicom_group(signal[:, : int(0.6 * fs)], fs, "MEDIAN BEAT", "DERIVED"),
                           _dicom_group(signal, fs, "RHYTHM", "ORIGINAL")]
    return ds


def write_exports(out: Path, people, owner, seed: int, layout: str) -> list[SynthRecord]:
    """The ``muse_xml`` or ``dicom`` layout: a file per record, named as hospital exports name
    them, after the patient's record number (which must not reach any output)."""
    written = []
    for index, p, patient, plan, signal in records_of(people, owner, seed):
        patient_id, surname = f"MRN{700000 + p}", SURNAMES[p % len(SURNAMES)]
        path = out / f"{patient_id}_{index + 1:05d}.{'xml' if layout == 'muse_xml' else 'dcm'}"
        if layout == "muse_xml":
            statements = ["Sinus rhythm" if "426783006" in plan.codes else "Abnormal rhythm", "Otherwise normal ECG"]
            path.write_bytes(muse_document(signal, plan.fs, patient_id, (surname, f"Pat{p}"), f"0{p % 9 + 1}-11-1950",
                                           statements))
        else:
            dicom_dataset(signal, plan.fs, patient_id, f"{surname}^Pat{p}", f"19500{p % 9 + 1}11").save_as(
                path, enforce_file_format=True)
        written.append(SynthRecord(path.stem, path, patient_id, plan.fs, plan.num_samples, (), layout, layout, seed,
                                   index, p))
    return written


WRITERS: dict[str, Callable[..., list]] = {  # every layout's writer: (out, people, owner, seed) -> written
    "numpy": write_numpy, "code15": write_code15, "mimic_iv_ecg": write_mimic,
    **{layout: partial(write_wfdb_archive, layout=layout) for layout in ("physionet2021", "ptbxl")},
    **{layout: partial(write_exports, layout=layout) for layout in ("muse_xml", "dicom")}}
