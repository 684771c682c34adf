"""Reading archives into records: discovery per layout, lead mapping, units, every bad-record case
(each a RecordError with a one-line reason), and resampling that keeps band-limited content."""
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import wfdb

from fairseq_ecg.labels import PTBXL_SCP_TO_SNOMED
from fairseq_ecg.leads import LEADS
from fairseq_ecg.sources import (
    RecordError, RecordRef, discover, read_record, resample, resample_factors, resampled_length,
)
from fairseq_ecg.synth import synthesize_archive, synthesize_signal


def write_mat_record(folder: Path, name: str, val: np.ndarray, fs: float = 500, names=LEADS,
                     dx: str = "426783006", gain: str = "1000/mV") -> Path:
    """A record in the PhysioNet/CinC 2021 format (.hea + MATLAB v4 .mat, format 16+24)."""
    folder.mkdir(parents=True, exist_ok=True)
    val = np.asarray(val, dtype=np.int16)
    scipy.io.savemat(folder / f"{name}.mat", {"val": val}, format="4")
    lines = [f"{name} {val.shape[0]} {fs:g} {val.shape[1]} 05-Feb-2020 11:39:16"]
    lines += [f"{name}.mat 16+24 {gain} 16 0 {int(val[i, 0])} 0 0 {lead}" for i, lead in enumerate(names)]
    lines += ["#Age: 74", "#Sex: Male", f"#Dx: {dx}", "#Rx: Unknown"]
    (folder / f"{name}.hea").write_text("\n".join(lines) + "\n")
    return folder / name


def ref_of(path: Path) -> RecordRef:
    return RecordRef(path=path, name=path.name)


def tone(freqs, fs, seconds, amplitude=1.0):
    t = np.arange(int(round(fs * seconds))) / fs
    return sum(amplitude * np.sin(2 * np.pi * f * t + 0.3) for f in freqs)


@pytest.fixture(scope="module")
def physionet(tmp_path_factory):
    out = tmp_path_factory.mktemp("physionet") / "archive"
    return out, synthesize_archive(out, records=24, patients=8, seed=5)


def test_discover_physionet_uses_patients_csv_and_sorted_keys(physionet):
    out, written = physionet
    refs = list(discover(out, "physionet2021"))
    assert [r.key for r in refs] == sorted(r.key for r in refs)
    assert {r.name for r in refs} == {w.name for w in written}
    by_name = {w.name: w for w in written}
    for ref in refs:
        assert ref.patient == by_name[ref.name].patient
        assert ref.codes is None  # labels come from the header's #Dx
        assert ref.key.startswith("training/") and ref.path.with_suffix(".hea").is_file()


def test_discover_physionet_without_patients_csv_uses_record_name(tmp_path):
    write_mat_record(tmp_path / "training" / "cpsc" / "g1", "A0001", np.ones((12, 5000)))
    (ref,) = discover(tmp_path, "physionet2021")
    assert (ref.name, ref.patient, ref.key) == ("A0001", "A0001", "training/cpsc/g1/A0001")


def test_read_physionet_record_matches_synthetic_signal(physionet):
    out, written = physionet
    record = next(w for w in written if w.sample_rate == 500)
    ecg = read_record(RecordRef(path=record.path, name=record.name, patient=record.patient))
    assert ecg.signal.dtype == np.float32 and ecg.signal.shape == (12, record.num_samples)
    assert ecg.present.all() and ecg.sample_rate == 500 and ecg.patient == record.patient
    assert ecg.codes == record.codes == ecg.header_codes
    np.testing.assert_allclose(ecg.signal, synthesize_signal(record), atol=0.5e-3 + 1e-6)  # int16 at 1000/mV


def test_discover_ptbxl_maps_scp_codes_and_patients(tmp_path):
    written = synthesize_archive(tmp_path / "ptbxl", records=10, patients=4, seed=2, layout="ptbxl")
    refs = list(discover(tmp_path / "ptbxl", "ptbxl"))
    assert [r.key for r in refs] == sorted(w.path.relative_to(tmp_path / "ptbxl").as_posix() for w in written)
    by_name = {w.name: w for w in written}
    for ref in refs:
        assert ref.patient == by_name[ref.name].patient and "." not in ref.patient
        assert ref.codes == by_name[ref.name].codes
        assert set(ref.codes) <= set(PTBXL_SCP_TO_SNOMED.values())
    ecg = read_record(refs[0])
    assert ecg.present.all() and ecg.sample_rate == 500  # PTB-XL writes AVR/AVL/AVF in capitals


def test_discover_wfdb_with_csv_of_patients_and_codes(tmp_path):
    for folder, name in [("a", "r1"), ("b", "r1"), ("b", "r2")]:
        write_mat_record(tmp_path / "src" / folder, name, np.ones((12, 5000)), dx="")
    csv = tmp_path / "labels.csv"
    csv.write_text("record,patient,codes\na/r1,p1,164889003\nb/r1,p1,\"59118001,164884000\"\n")
    refs = list(discover(tmp_path / "src", "wfdb", csv))
    assert [(r.key, r.patient, r.codes) for r in refs] == [
        ("a/r1", "p1", ("164889003",)), ("b/r1", "p1", ("59118001", "164884000")),
        ("b/r2", "", None),  # not in the CSV: patient unknown, labels from the header
    ]


def test_leads_in_any_order_and_case_land_in_canonical_order(tmp_path):
    rng = np.random.default_rng(0)
    names = ["V3", "avr", "AVL", "I", "v1", "II", "aVF", "V6", "iii", "V2", "v5", "V4"]
    signal = rng.normal(0, 0.4, (5000, 12))
    wfdb.wrsamp("shuffled", fs=500, units=["mV"] * 12, sig_name=names, p_signal=signal, fmt=["16"] * 12,
                adc_gain=[1000] * 12, baseline=[0] * 12, write_dir=str(tmp_path))
    ecg = read_record(ref_of(tmp_path / "shuffled"))
    assert ecg.present.all()
    for channel, name in enumerate(names):
        lead = [lead.upper() for lead in LEADS].index(name.upper())
        np.testing.assert_allclose(ecg.signal[lead], signal[:, channel], atol=0.5e-3 + 1e-6)


def test_six_lead_record_gets_mask_and_zeros(tmp_path):
    six = ["I", "II", "III", "aVR", "aVL", "aVF"]
    path = write_mat_record(tmp_path, "S6", np.full((6, 5000), 250), names=six)
    ecg = read_record(ref_of(path))
    assert "".join("1" if p else "0" for p in ecg.present) == "111111000000"
    assert np.all(ecg.signal[6:] == 0) and np.allclose(ecg.signal[:6], 0.25)


def test_unknown_lead_channel_is_dropped_and_noted(tmp_path):
    path = write_mat_record(tmp_path, "M1", np.full((3, 5000), 100), names=["MLII", "V1", "Resp"])
    ecg = read_record(ref_of(path))
    assert ecg.present.tolist() == [name == "V1" for name in LEADS]
    assert ecg.notes == ("dropped unknown lead 'MLII'", "dropped unknown lead 'Resp'")


def test_microvolt_units_are_converted_to_millivolts(tmp_path):
    path = write_mat_record(tmp_path, "U1", np.full((12, 5000), 500), gain="1/uV")
    assert np.allclose(read_record(ref_of(path)).signal, 0.5)


def test_all_zero_lead_is_marked_absent(tmp_path):
    val = np.full((12, 5000), 100)
    val[7] = 0
    ecg = read_record(ref_of(write_mat_record(tmp_path, "Z1", val)))
    assert ecg.present.tolist() == [i != 7 for i in range(12)]


def _bad_records(folder: Path) -> dict[str, tuple[Path, str]]:
    """Every bad case as (record path, words its reason must contain)."""
    good = np.full((12, 5000), 200)
    cases = {}
    path = write_mat_record(folder, "badheader", good)
    path.with_suffix(".hea").write_text("this is not a header\n")
    cases["badheader"] = (path, "unreadable header")
    path = write_mat_record(folder, "nomat", good)
    path.with_suffix(".mat").unlink()
    cases["nomat"] = (path, "nomat.mat is missing")
    path = write_mat_record(folder, "truncated", good)
    data = path.with_suffix(".mat").read_bytes()
    path.with_suffix(".mat").write_bytes(data[: len(data) // 2])
    cases["truncated"] = (path, "truncated")
    nan = good.copy()
    nan[4, 1234] = -32768  # WFDB's invalid-sample value for format 16: NaN in physical units
    cases["nan"] = (write_mat_record(folder, "nan", nan), "NaN")
    cases["zeros"] = (write_mat_record(folder, "zeros", np.zeros((12, 5000))), "all-zero")
    cases["mlii"] = (write_mat_record(folder, "mlii", good[:2], names=["MLII", "V"]), "unknown lead names 'MLII', 'V'")
    cases["short"] = (write_mat_record(folder, "short", good[:, :1500]), "too short: 3 s < 5 s")
    cases["duplicate"] = (write_mat_record(folder, "duplicate", good[:2], names=["II", "ii"]), "duplicate lead name 'II'")
    return cases


def test_every_bad_record_raises_a_one_line_reason(tmp_path):
    for name, (path, words) in _bad_records(tmp_path).items():
        with pytest.raises(RecordError) as caught:
            read_record(ref_of(path))
        reason = str(caught.value)
        assert words in reason, (name, reason)
        assert "\n" not in reason and caught.value.reason == reason and caught.value.kind


def test_each_header_is_parsed_once_and_wfdb_is_left_as_found(tmp_path, monkeypatch):
    """Parsing a header is most of wfdb's cost of reading a record: the checks before the read and
    the read share one parse (preparation's records/s halve otherwise)."""
    import wfdb.io.record as wfdb_record

    path = write_mat_record(tmp_path, "A0001", np.full((12, 5000), 100))
    parse = wfdb_record.rdheader
    calls = []
    monkeypatch.setattr(wfdb_record, "rdheader", lambda *a, **k: calls.append(a) or parse(*a, **k))
    monkeypatch.setattr(wfdb, "rdheader", wfdb_record.rdheader)
    counting = wfdb_record.rdheader
    record = read_record(ref_of(path))
    assert len(calls) == 1
    assert wfdb_record.rdheader is counting  # restored after the read
    np.testing.assert_allclose(record.signal, 0.1, rtol=1e-6)  # 100 units at 1000/mV


def test_min_seconds_is_configurable(tmp_path):
    path = write_mat_record(tmp_path, "short", np.full((12, 1500), 10))
    assert read_record(ref_of(path), min_seconds=2.0).num_samples == 1500


def test_resample_factors_and_lengths():
    assert resample_factors(257, 500) == (500, 257)
    assert resample_factors(1000, 500) == (1, 2)
    assert resample_factors(500, 500) == (1, 1)
    for rate, n in [(257, 7710), (1000, 10000), (360, 3601), (500, 5000)]:
        assert resample(np.zeros((12, n), np.float32), rate, 500).shape == (12, resampled_length(n, rate, 500))
    assert resampled_length(7710, 257, 500) == 15000


@pytest.mark.parametrize("rate", [257, 1000, 360])
def test_band_limited_sine_keeps_its_amplitude(rate):
    source = tone([7.0], rate, 10, amplitude=1.2).astype(np.float32)
    out = resample(source[None], rate, 500)[0]
    expected = tone([7.0], 500, 10, amplitude=1.2)[: out.size]
    inner = slice(250, out.size - 250)  # 0.5 s from each end: the filter's edge transient
    np.testing.assert_allclose(out[inner], expected[inner], atol=2e-3)
    assert out.dtype == np.float32


def test_content_above_the_new_nyquist_is_removed_not_aliased():
    source = tone([7.0], 1000, 10) + tone([300.0], 1000, 10, amplitude=0.5)  # 300 Hz would fold to 200 Hz
    out = resample(source[None], 1000, 500)[0]
    residual = out - tone([7.0], 500, 10)[: out.size]
    assert np.abs(residual[250:-250]).max() < 5e-3


def test_read_then_resample_a_257_hz_record(tmp_path):
    wave = tone([5.0], 257, 30, amplitude=0.8)
    path = write_mat_record(tmp_path, "I0001", np.rint(np.tile(wave, (12, 1)) * 1000), fs=257)
    ecg = read_record(ref_of(path))
    out = resample(ecg.signal, ecg.sample_rate, 500)
    assert out.shape == (12, 15000)
    expected = tone([5.0], 500, 30, amplitude=0.8)
    np.testing.assert_allclose(out[:, 250:-250], np.tile(expected, (12, 1))[:, 250:-250], atol=3e-3)


def _edited_header(tmp_path, edit_first=None, edit_signal=None):
    """A good record whose header's record line and/or first signal line (lead I) are edited."""
    path = write_mat_record(tmp_path, "R", np.full((12, 5000), 100))
    lines = path.with_suffix(".hea").read_text().splitlines()
    if edit_first:
        lines[0] = edit_first(lines[0].split())
    if edit_signal:
        lines[1] = edit_signal(lines[1].split())
    path.with_suffix(".hea").write_text("\n".join(lines) + "\n")
    return path


HEADER_FIELD_CASES = {
    # record line: name nsig fs nsamp [time date]; wfdb would take 250 Hz or the file's length
    "no sampling frequency": (lambda f: " ".join(f[:2]), None, "no sampling frequency (wfdb would assume 250 Hz)"),
    "sampling frequency zero": (lambda f: " ".join(f[:2] + ["0"] + f[3:]), None, "sampling frequency '0' is not a positive"),
    "sampling frequency text": (lambda f: " ".join(f[:2] + ["500Hz"] + f[3:]), None, "sampling frequency '500Hz'"),
    "no number of samples": (lambda f: " ".join(f[:3]), None, "no number of samples per signal"),
    "number of samples text": (lambda f: " ".join(f[:3] + ["5e3"] + f[4:]), None, "number of samples '5e3' is not"),
    # signal line: file format gain[(baseline)][/units] adcres adczero initval checksum blocksize name
    "no gain": (None, lambda f: " ".join(f[:2]), "no ADC gain (wfdb would assume 200"),
    "gain zero": (None, lambda f: " ".join(f[:2] + ["0/mV"] + f[3:]), "ADC gain '0' is zero or not finite"),
    "gain text": (None, lambda f: " ".join(f[:2] + ["high/mV"] + f[3:]), "ADC gain 'high/mV' is not"),
    "format unknown": (None, lambda f: " ".join(f[:1] + ["17"] + f[2:]), "format '17' is not a WFDB storage format"),
    "format malformed": (None, lambda f: " ".join(f[:1] + ["16+x"] + f[2:]), "format '16+x' is not"),
    "adc resolution text": (None, lambda f: " ".join(f[:3] + ["sixteen"] + f[4:]), "ADC resolution 'sixteen' is not an integer"),
}


@pytest.mark.parametrize("case", sorted(HEADER_FIELD_CASES))
def test_missing_or_malformed_header_fields_skip_the_record_instead_of_wfdb_defaults(tmp_path, case):
    edit_first, edit_signal, words = HEADER_FIELD_CASES[case]
    path = _edited_header(tmp_path, edit_first, edit_signal)
    with pytest.raises(RecordError, match=re.escape(words)) as caught:
        read_record(ref_of(path))
    assert caught.value.kind == "bad header field" and "R.hea line " in caught.value.reason


def test_well_formed_header_variants_still_read(tmp_path):
    """An absent baseline is the ADC zero (WFDB specification); a baseline, a counter frequency and
    a gain without units are well formed too."""
    cases = [
        (None, lambda f: " ".join(f[:2] + ["1000(0)/mV"] + f[3:])),
        (lambda f: " ".join(f[:2] + ["500/500(0)"] + f[3:]), None),
        (None, lambda f: " ".join(f[:2] + ["1000"] + f[3:])),
    ]
    for edit_first, edit_signal in cases:
        record = read_record(ref_of(_edited_header(tmp_path / str(len(list(tmp_path.iterdir()))), edit_first, edit_signal)))
        assert record.sample_rate == 500 and record.present[0]
        np.testing.assert_allclose(record.signal[0], 0.1, rtol=1e-6)


def test_a_lead_change_names_the_leads_fed_zeroed_and_never_seen():
    """`--leads 12` on a 6-lead model was said as "the other leads are zeroed", though it feeds six
    leads the model never saw (issue 23 item 2)."""
    from fairseq_ecg.leads import lead_change, missing_leads_summary

    assert lead_change("12", "12") == ""
    assert lead_change("6", "12") == ("the model was trained on leads I,II,III,aVR,aVL,aVF; this run feeds it "
                                      "I,II,III,aVR,aVL,aVF and also V1,V2,V3,V4,V5,V6, which it never saw")
    assert lead_change("3", "[I,V1]") == ("the model was trained on leads I,II,V2; this run feeds it I with zeros "
                                          "for II,V2 and also V1, which it never saw")
    masks = [np.array([c == "1" for c in m]) for m in ["110000000000", "111000000000", "110000000000", "111100000000"]]
    assert missing_leads_summary(masks, "2") == ""
    assert missing_leads_summary(masks, "[I,II,III]") == ("2 of 4 records lack leads that the model is fed (I,II,III), "
                                                          "which go in as zeros: 2 lack III")
