"""Archive sources: one module per on-disk layout, registered by name (``--layout NAME``), and
recognised on their own for ``--layout auto``. The shared types and steps live in
:mod:`fairseq_ecg.sources.base`; adding a source is one new module imported below.

Everything downstream sees an :class:`EcgRecord`: a float32 (12, T) signal in mV in the canonical
lead order of :mod:`fairseq_ecg.leads`, a lead-presence mask, the sampling rate, SNOMED CT codes
and a patient id.
"""
from .base import (
    AUTO, DEFAULT_BOUNDS, DEFAULT_MIN_SECONDS, MIXED_LAYOUTS, PATIENT_SALT_ENV, PATIENTS_CSV, UNKNOWN_LEAD_NOTE, Bounds,
    EcgRecord, LayoutError, RawRecord, RecordError, RecordRef, SaltError, Source, canonical_record, check_plausible,
    detect_layout, discover, get_source, layouts, patient_salt_from, read_record, read_record_table, register_source,
    resample, resample_factors, resampled_length, resolve_salt, salted_patient, split_codes, unread_files,
)
from . import wfdb_folder, physionet2021, ptbxl, numpy_folder, code15, mimic_iv_ecg, muse_xml, dicom  # noqa: F401,E402  (registration)
from .ptbxl import PTBXL_DATABASE, PTBXL_FOLD_SPLITS  # noqa: E402
from .wfdb_folder import MAT_NAMED_NOTE  # noqa: E402

LAYOUTS = layouts()

__all__ = [
    "AUTO", "DEFAULT_MIN_SECONDS", "EcgRecord", "LAYOUTS", "LayoutError", "PATIENTS_CSV", "PTBXL_DATABASE",
    "PTBXL_FOLD_SPLITS", "RawRecord", "RecordError", "RecordRef", "Source", "canonical_record", "detect_layout",
    "discover", "get_source", "layouts", "read_record", "read_record_table", "register_source", "resample",
    "resample_factors", "resampled_length", "salted_patient", "split_codes",
    "MAT_NAMED_NOTE", "UNKNOWN_LEAD_NOTE", "Bounds", "DEFAULT_BOUNDS", "check_plausible",
    "MIXED_LAYOUTS", "unread_files", "PATIENT_SALT_ENV", "SaltError", "patient_salt_from", "resolve_salt",
]
