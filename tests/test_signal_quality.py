"""Signal quality flags (issue 22 item 3): each planted defect fails exactly its own check on its
own lead, absent leads and leads the model is not fed are never flagged, and the synthetic
archives of every layout (records with a resting ECG's noise and baseline wander) pass."""
import numpy as np
import pytest

from fairseq_ecg.leads import LEADS
from fairseq_ecg.signal_quality import GOOD, lead_flags, quality_text, record_flags
from fairseq_ecg.sources import discover, read_record
from fairseq_ecg.synth import LAYOUTS, synthesize_archive

RATE = 500


@pytest.fixture(scope="module")
def wave(tmp_path_factory) -> np.ndarray:
    """A synthetic 12-lead record at 500 Hz, as read back from its archive."""
    archive = tmp_path_factory.mktemp("quality_clean")
    synthesize_archive(archive, records=1, patients=1, seed=5, layout="numpy")
    (ref,) = list(discover(archive, "numpy"))
    record = read_record(ref)
    assert record.sample_rate == RATE
    return np.asarray(record.signal, dtype=np.float64)


def test_a_clean_record_passes(wave):
    assert record_flags(wave, RATE) == {} and quality_text(record_flags(wave, RATE)) == GOOD


@pytest.mark.parametrize("defect", ["flat", "clipped", "noisy", "wander"])
def test_each_planted_defect_fails_its_own_check_on_its_own_lead(wave, defect):
    lead = LEADS.index("V3")
    planted = wave.copy()
    t = np.arange(wave.shape[1]) / RATE
    if defect == "flat":  # an electrode off: an offset and the amplifier's few microvolts
        planted[lead] = 0.3 + np.random.default_rng(0).normal(0, 0.005, wave.shape[1])
    elif defect == "clipped":  # an ADC whose range ends at 40% of the R waves' height: their tops cut off
        planted[lead] = np.minimum(wave[lead], 0.4 * wave[lead].max())
    elif defect == "noisy":  # mains at 50 Hz, as large as the QRS
        planted[lead] = wave[lead] + 0.5 * np.ptp(wave[lead]) * np.sin(2 * np.pi * 50 * t)
    else:  # breathing and movement: a 3 mV slow swing of the baseline
        planted[lead] = wave[lead] + 1.5 * np.sin(2 * np.pi * 0.15 * t)
    assert record_flags(planted, RATE) == {defect: ["V3"]}
    assert quality_text(record_flags(planted, RATE)) == f"{defect}:V3"


def test_absent_and_unfed_leads_are_not_flagged(wave):
    reduced = wave.copy()
    reduced[6:] = 0  # a 6-lead record: V1-V6 absent (zeros by convention)
    assert record_flags(reduced, RATE) == {}
    assert lead_flags(np.zeros(5000), RATE) == ["flat"]  # the same zeros, as a lead the record claims
    noisy = wave.copy()
    noisy[LEADS.index("V1")] += 0.5 * np.sin(2 * np.pi * 50 * np.arange(wave.shape[1]) / RATE)
    assert record_flags(noisy, RATE, fed="6") == {}  # V1 is not among the six limb leads fed
    assert record_flags(noisy, RATE, fed="12") == {"noisy": ["V1"]}
    present = np.ones(12, bool)
    present[LEADS.index("V1")] = False
    assert record_flags(noisy, RATE, present=present) == {}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_synthetic_archives_pass(tmp_path, layout):
    synthesize_archive(tmp_path / layout, records=12, patients=4, seed=11, layout=layout)
    refs = list(discover(tmp_path / layout, layout))
    assert len(refs) == 12
    for ref in refs:
        record = read_record(ref)
        flags = record_flags(record.signal, record.sample_rate, np.asarray(record.present, bool))
        assert flags == {}, (layout, ref.key, record.sample_rate, flags)


def test_preparation_writes_the_flags_and_can_leave_poor_records_out(tmp_path):
    """fairseq-ecg-manifest checks every record's present leads: records.tsv's quality column names
    the failed checks (the clean records read ok), the summary counts them, and
    --skip-poor-quality leaves them out of every manifest, listed in skipped.tsv, recomputing nothing."""
    import csv

    from conftest import run_cli
    from fairseq_ecg.manifest import read_manifest

    archive = tmp_path / "archive"
    synthesize_archive(archive, records=8, patients=8, seed=3, layout="numpy")
    refs = sorted(discover(archive, "numpy"), key=lambda r: r.key)
    planted = {refs[1].key: ("flat", "V4"), refs[4].key: ("noisy", "II")}
    for ref in refs:
        if ref.key in planted:
            flag, name = planted[ref.key]
            path = next(archive.rglob(f"{ref.key}.npy"))
            signal = np.load(path)
            rows_first = signal.shape[0] == 12
            signal = signal if rows_first else signal.T
            lead = LEADS.index(name)
            if flag == "flat":
                signal[lead] = 0.2
            else:
                signal[lead] += 0.5 * np.ptp(signal[lead]) * np.sin(2 * np.pi * 50 * np.arange(signal.shape[1]) / RATE)
            np.save(path, signal if rows_first else signal.T)
    dest = tmp_path / "prepared"
    for skip in (False, True):
        result = run_cli("fairseq-ecg-manifest", str(archive), "--dest", str(dest), "--layout", "numpy",
                         "--workers", "1", *(["--skip-poor-quality"] if skip else []))
        with open(dest / "records.tsv", newline="") as handle:
            journal = list(csv.reader(handle, delimiter="\t"))[1:]
        header, body = journal[0], journal[1:]
        quality = {row[0]: row[header.index("quality")] for row in body}
        assert quality == {ref.key: (f"{planted[ref.key][0]}:{planted[ref.key][1]}" if ref.key in planted else GOOD)
                           for ref in refs}
        assert "signal quality: 2 record(s) fail a check (flat 1, noisy 1;" in result.stdout
        listed = {row.record for split in ("train", "valid") for row in read_manifest(dest / "pretrain" / f"{split}.tsv").rows}
        listed |= {row.record for row in read_manifest(dest / "finetune" / "test.tsv").rows}
        skipped = (dest / "skipped.tsv").read_text()
        poor = {ref.name for ref in refs if ref.key in planted}
        if skip:
            assert "8 records found, 0 written, 8 reused" in result.stdout  # the option recomputes nothing
            assert not listed & poor and len(listed) == 6
            assert f"{refs[4].key}\tsignal quality: noisy:II (--skip-poor-quality)" in skipped
        else:
            assert poor <= listed and len(listed) == 8 and skipped == ""
