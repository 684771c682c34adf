"""GE MUSE XML exports (``--layout muse_xml``): one ``RestingECG`` document per ``.xml`` file.

* The signal is the ``Waveform`` whose ``WaveformType`` is ``Rhythm`` (not the ``Median`` beat);
  sampling rate ``SampleBase`` x 10^``SampleExponent``; each ``LeadData`` holds ``LeadID``,
  ``WaveFormData`` (base64, little-endian int16, ``LeadSampleSize`` 2), ``LeadSampleCountTotal``,
  and the scale ``LeadAmplitudeUnitsPerBit`` in ``LeadAmplitudeUnits`` (MICROVOLTS, MILLIVOLTS).
* MUSE stores I, II and V1-V6; III, aVR, aVL and aVF are derived from I and II (Einthoven:
  III = II - I; Goldberger: aVR = -(I + II)/2, aVL = I - II/2, aVF = II - I/2) and the manifest's
  ``derived`` column says so. Leads stored in the file are taken as stored.
* Refused with a reason (``skipped.tsv``), never guessed: no rhythm waveform or more than one, a
  missing rate or scale, an unknown unit or lead label, data shorter than its sample count,
  leads of unequal length.
* Nothing identifying reaches an output: the patient is a salted hash of ``PatientID``
  (:func:`~fairseq_ecg.sources.base.salted_patient`), and since export file names often carry
  record numbers or names, a record's name is a salted hash of its relative path. Only the
  ``DiagnosisStatement`` texts are kept, in ``statements.tsv``.
"""
from __future__ import annotations

import base64
import binascii
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from ..leads import UnknownLeadError, canonical_lead
from .base import RawRecord, RecordError, RecordRef, Source, register_source, salted_patient, walk_files
from .base import check_plausible, file_head

UNITS = {"MICROVOLTS": "uV", "MILLIVOLTS": "mV"}
LIMB_DERIVED = ("III", "aVR", "aVL", "aVF")


def _text(element, path: str) -> str:
    found = element.find(path)
    return (found.text or "").strip() if found is not None and found.text else ""


def _number(element, path: str, what: str) -> float:
    text = _text(element, path)
    try:
        value = float(text)
    except ValueError:
        raise RecordError(f"{what} ({path}) is {'missing' if not text else repr(text)}; cannot scale the signal",
                          "missing scale") from None
    if not np.isfinite(value):
        raise RecordError(f"{what} ({path}) is {text!r}", "missing scale")
    return value


def _patient_id(path: Path) -> str:
    """PatientDemographics/PatientID, reading the file only up to it."""
    try:
        for _, element in ET.iterparse(path, events=("end",)):
            if element.tag == "PatientID":
                return (element.text or "").strip()
            if element.tag == "Waveform":  # demographics come first in MUSE exports
                return ""
    except (ET.ParseError, OSError):
        return ""
    return ""


def derive_limb_leads(i: np.ndarray, ii: np.ndarray) -> dict[str, np.ndarray]:
    """III, aVR, aVL, aVF from leads I and II (Einthoven and Goldberger)."""
    return {"III": ii - i, "aVR": -(i + ii) / 2, "aVL": i - ii / 2, "aVF": ii - i / 2}


@register_source
class MuseXml(Source):
    name = "muse_xml"
    summary = "GE MUSE XML exports (RestingECG, Rhythm waveform); limb leads derived; patients hashed"
    priority = 60
    files = (".xml",)
    one_file_one_record = True
    private = True

    def recognise(self, src: Path) -> bool:
        first = next(walk_files(src, (".xml",), limit=1), None)
        return first is not None and b"<RestingECG" in file_head(first, 4096)

    def discover(self, src: Path, labels_csv: Optional[Path] = None, use_folds: bool = True) -> Iterator[RecordRef]:
        refs = []
        for path in walk_files(src, (".xml",)):
            relative = path.relative_to(src).as_posix()
            name = salted_patient(relative)
            refs.append(RecordRef(path=path, name=name, key=f"muse/{name}", patient=salted_patient(_patient_id(path)),
                                  codes=(), known=()))
        yield from sorted(refs, key=lambda ref: ref.key)

    def read(self, ref: RecordRef) -> RawRecord:
        try:
            root = ET.parse(ref.path).getroot()
        except ET.ParseError as error:
            raise RecordError(f"not well-formed XML ({error})", "unreadable signal file") from None
        except OSError as error:
            raise RecordError(f"cannot read the XML file ({error.strerror})", "unreadable signal file") from None
        if root.tag != "RestingECG":
            raise RecordError(f"root element <{root.tag}> is not a GE MUSE <RestingECG>", "unreadable signal file")
        waveforms = root.findall("Waveform")
        rhythm = [w for w in waveforms if _text(w, "WaveformType").lower() == "rhythm"]
        if len(rhythm) != 1:
            kinds = ", ".join(_text(w, "WaveformType") or "?" for w in waveforms) or "none"
            raise RecordError(f"{len(rhythm)} Waveform(s) with WaveformType Rhythm (found: {kinds}); need exactly one",
                              "no rhythm waveform")
        wave = rhythm[0]
        rate = _number(wave, "SampleBase", "sampling rate") * 10 ** _number(wave, "SampleExponent", "sampling exponent") \
            if wave.find("SampleExponent") is not None else _number(wave, "SampleBase", "sampling rate")
        check_plausible(rate)  # before any lead is decoded
        names, channels, units = [], [], []
        for lead in wave.findall("LeadData"):
            lead_id = _text(lead, "LeadID")
            try:
                canonical_lead(lead_id)
            except UnknownLeadError:
                raise RecordError(f"unknown LeadID {lead_id!r} in the Rhythm waveform", "unknown lead names") from None
            if _text(lead, "LeadSampleSize") not in ("", "2"):
                raise RecordError(f"lead {lead_id}: LeadSampleSize {_text(lead, 'LeadSampleSize')} is not 2 (int16)",
                                  "unreadable signal file")
            per_bit = _number(lead, "LeadAmplitudeUnitsPerBit", f"lead {lead_id} amplitude per bit")
            unit = _text(lead, "LeadAmplitudeUnits").upper()
            if unit not in UNITS:
                raise RecordError(f"lead {lead_id}: LeadAmplitudeUnits {unit or 'missing'!r}; expected "
                                  f"{' or '.join(UNITS)}", "unknown unit")
            try:
                raw = base64.b64decode(_text(lead, "WaveFormData"), validate=False)
            except (binascii.Error, ValueError) as error:
                raise RecordError(f"lead {lead_id}: WaveFormData is not base64 ({error})", "unreadable signal file") from None
            count = _text(lead, "LeadSampleCountTotal")
            samples = np.frombuffer(raw[: len(raw) // 2 * 2], dtype="<i2")  # float64 only once the count is checked
            if count.isdigit():
                check_plausible(rate, int(count))
                if len(samples) < int(count):
                    raise RecordError(f"lead {lead_id}: {len(samples)} samples, LeadSampleCountTotal says {count}",
                                      "truncated signal file")
                samples = samples[: int(count)]
            names.append(lead_id)
            channels.append(samples.astype(np.float64) * per_bit)
            units.append(UNITS[unit])
        if not channels:
            raise RecordError("the Rhythm waveform holds no LeadData", "no samples")
        if len({len(c) for c in channels}) != 1:
            raise RecordError(f"leads of unequal length ({sorted({len(c) for c in channels})} samples)",
                              "truncated signal file")
        derived = ()
        upper = [n.upper() for n in names]
        if "I" in upper and "II" in upper and not any(n.upper() in upper for n in LIMB_DERIVED):
            i, ii = (channels[upper.index(n)] * (1e-3 if units[upper.index(n)] == "uV" else 1.0) for n in ("I", "II"))
            for lead, signal in derive_limb_leads(i, ii).items():
                names.append(lead)
                channels.append(signal)
                units.append("mV")
            derived = LIMB_DERIVED
        statements = [(s.findtext("StmtText") or "").strip() for s in root.findall("Diagnosis/DiagnosisStatement")]
        return RawRecord(signal=np.stack(channels), names=names, units=units, sample_rate=rate,
                         statement=" | ".join(s for s in statements if s), derived=derived)
