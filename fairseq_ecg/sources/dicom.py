"""DICOM 12-lead ECG waveforms (``--layout dicom``; hospital PACS exports, read with pydicom).

* A waveform object holds one or more multiplex groups (``WaveformSequence``); the signal is the
  rhythm group: the one whose ``MultiplexGroupLabel`` says RHYTHM, else the only ``ORIGINAL`` one
  (median beats are ``DERIVED``). No group, or several that fit, refuses the file: a group it
  cannot identify is never guessed.
* Its ``SamplingFrequency``; samples interleaved per ``NumberOfWaveformChannels``, decoded from
  ``WaveformBitsAllocated`` and ``WaveformSampleInterpretation``; each channel scaled as the
  standard defines it: value x ``ChannelSensitivity`` x ``ChannelSensitivityCorrectionFactor``
  + ``ChannelBaseline``, in the units of ``ChannelSensitivityUnitsSequence`` (UCUM ``uV``,
  ``mV``). A channel without a sensitivity or its units is refused (pydicom would assume 1).
* Channel labels to lead names from ``ChannelSourceSequence``: the MDC code (``2:1`` lead I ...)
  or its meaning ("Lead I", "Lead aVR (Goldberger)"), else ``ChannelLabel``; an unknown label
  refuses the file.
* Nothing identifying reaches an output: the patient is a salted hash of ``PatientID`` and the
  record's name a salted hash of its relative path (export file names carry accession numbers).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from ..leads import UnknownLeadError, canonical_lead
from .base import RawRecord, RecordError, RecordRef, Source, register_source, salted_patient, walk_files
from .base import check_plausible, file_head

ECG_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.9.1.1": "12-lead ECG", "1.2.840.10008.5.1.4.1.1.9.1.2": "general ECG",
    "1.2.840.10008.5.1.4.1.1.9.1.3": "ambulatory ECG",
}
# MDC (ISO/IEEE 11073) lead codes as DICOM writes them (CID 3001)
MDC_LEADS = {"2:1": "I", "2:2": "II", "2:61": "III", "2:62": "aVR", "2:63": "aVL", "2:64": "aVF",
             "2:3": "V1", "2:4": "V2", "2:5": "V3", "2:6": "V4", "2:7": "V5", "2:8": "V6"}
UNITS = {"uv": "uV", "mv": "mV", "v": "V"}
_DTYPES = {(8, "SB"): "i1", (8, "UB"): "u1", (16, "SS"): "<i2", (16, "US"): "<u2", (32, "SL"): "<i4",
           (32, "UL"): "<u4"}


def _lead(channel) -> str:
    """The canonical lead name of a channel definition, or RecordError."""
    candidates = []
    for source in channel.get("ChannelSourceSequence", []) or []:
        code = str(source.get("CodeValue", "")).strip()
        if code in MDC_LEADS:
            return MDC_LEADS[code]
        candidates.append(str(source.get("CodeMeaning", "")))
    candidates.append(str(channel.get("ChannelLabel", "")))
    for text in candidates:
        name = re.sub(r"\s*\(.*\)\s*$", "", text.strip())
        name = re.sub(r"^lead\s+", "", name, flags=re.IGNORECASE)
        try:
            return canonical_lead(name)
        except UnknownLeadError:
            continue
    raise RecordError(f"unknown channel label {'/'.join(c for c in candidates if c) or 'none'!r}", "unknown lead names")


def _rhythm_group(sequence) -> tuple[int, object]:
    labels = [str(item.get("MultiplexGroupLabel", "")).strip() for item in sequence]
    rhythm = [i for i, label in enumerate(labels) if "RHYTHM" in label.upper()]
    if not rhythm:
        rhythm = [i for i, item in enumerate(sequence) if str(item.get("WaveformOriginality", "")).upper() == "ORIGINAL"]
    if len(rhythm) != 1:
        described = ", ".join(f"{label or '?'}/{sequence[i].get('WaveformOriginality', '?')}"
                              for i, label in enumerate(labels)) or "none"
        raise RecordError(f"cannot identify the rhythm group among {len(labels)} multiplex group(s) "
                          f"(label/originality: {described})", "no rhythm waveform")
    return rhythm[0], sequence[rhythm[0]]


def _patient_id(path: Path) -> str:
    import pydicom

    try:
        return str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"]).get("PatientID", ""))
    except Exception:  # pydicom raises many types for a damaged file; read() says why
        return ""


@register_source
class Dicom(Source):
    name = "dicom"
    summary = "DICOM ECG waveforms (.dcm; pydicom): the rhythm multiplex group in mV; patients hashed"
    priority = 70
    files = (".dcm",)
    one_file_one_record = True
    private = True

    def recognise(self, src: Path) -> bool:
        first = next(walk_files(src, (".dcm",), limit=1), None)
        return first is not None and file_head(first, 132)[128:] == b"DICM"  # after the 128-byte preamble

    def discover(self, src: Path, labels_csv: Optional[Path] = None, use_folds: bool = True) -> Iterator[RecordRef]:
        refs = []
        for path in walk_files(src, (".dcm",)):
            name = salted_patient(path.relative_to(src).as_posix())
            refs.append(RecordRef(path=path, name=name, key=f"dicom/{name}", patient=salted_patient(_patient_id(path)),
                                  codes=(), known=()))
        yield from sorted(refs, key=lambda ref: ref.key)

    def read(self, ref: RecordRef) -> RawRecord:
        import pydicom
        from pydicom.errors import InvalidDicomError

        try:
            ds = pydicom.dcmread(ref.path)
        except InvalidDicomError as error:
            raise RecordError(f"not a DICOM file ({error})", "unreadable signal file") from None
        except Exception as error:  # truncated or damaged files raise many types
            raise RecordError(f"unreadable DICOM file ({type(error).__name__}: {error})", "unreadable signal file") from None
        sequence = ds.get("WaveformSequence")
        if not sequence:
            raise RecordError(f"no WaveformSequence (SOP class {ds.get('SOPClassUID', '?')}): not a waveform object",
                              "no rhythm waveform")
        _, group = _rhythm_group(sequence)
        rate = float(group.get("SamplingFrequency", 0) or 0)
        if not rate > 0:
            raise RecordError(f"SamplingFrequency {group.get('SamplingFrequency')!r} of the rhythm group is not positive",
                              "missing scale")
        channels, samples = int(group.get("NumberOfWaveformChannels", 0)), int(group.get("NumberOfWaveformSamples", 0))
        check_plausible(rate, samples)  # before the samples are decoded
        bits, kind = int(group.get("WaveformBitsAllocated", 0)), str(group.get("WaveformSampleInterpretation", ""))
        if (bits, kind) not in _DTYPES:
            raise RecordError(f"waveform samples of {bits} bits, interpretation {kind!r}: not a format it reads",
                              "unreadable signal file")
        data = bytes(group.get("WaveformData", b"") or b"")
        needed = channels * samples * bits // 8
        if channels <= 0 or samples <= 0 or len(data) < needed:
            raise RecordError(f"WaveformData holds {len(data)} bytes, {channels} channels x {samples} samples need "
                              f"{needed}", "truncated signal file")
        values = np.frombuffer(data[:needed], dtype=_DTYPES[(bits, kind)]).reshape(samples, channels).astype(np.float64)
        definitions = list(group.get("ChannelDefinitionSequence", []) or [])
        if len(definitions) != channels:
            raise RecordError(f"{len(definitions)} channel definitions for {channels} channels", "unreadable signal file")
        names, units = [], []
        for index, channel in enumerate(definitions):
            lead = _lead(channel)
            if "ChannelSensitivity" not in channel or not channel.get("ChannelSensitivityUnitsSequence"):
                raise RecordError(f"channel {index + 1} ({lead}): no ChannelSensitivity or its units; cannot scale "
                                  "the signal", "missing scale")
            unit = str(channel.ChannelSensitivityUnitsSequence[0].get("CodeValue", "")).strip()
            if unit.lower() not in UNITS:
                raise RecordError(f"channel {index + 1} ({lead}): sensitivity unit {unit!r}; expected uV or mV",
                                  "unknown unit")
            scale = float(channel.ChannelSensitivity) * float(channel.get("ChannelSensitivityCorrectionFactor", 1) or 1)
            values[:, index] = values[:, index] * scale + float(channel.get("ChannelBaseline", 0) or 0)
            names.append(lead)
            units.append(UNITS[unit.lower()])
        return RawRecord(signal=values.T, names=names, units=units, sample_rate=rate)
