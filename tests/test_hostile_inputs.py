"""Hostile inputs: arbitrary header, manifest, label and class-list text never escapes as an
unhandled exception (it parses, or a RecordError / ManifestError with a one-line message); an
archive with planted corruptions goes through the real fairseq-ecg-manifest with every bad
record skipped for its reason and every good one written; hand-edited manifests stop a real
fairseq-hydra-train with an error naming the file and the line."""
import os
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import wfdb
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import BIN, REPO, write_random_manifest
from fairseq_ecg.labels import SCORED_CLASSES, scored_labels
from fairseq_ecg.leads import LEADS
from fairseq_ecg.manifest import (
    Manifest, ManifestError, ManifestRow, check_waveforms, read_classes, read_labels, read_manifest,
    write_classes, write_labels, write_manifest,
)
from fairseq_ecg.sources import RecordError, discover, read_record
from fairseq_ecg.synth import synthesize_archive

from test_records import write_mat_record

FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def assert_one_line(message: str) -> None:
    assert message.strip() and len(message.splitlines()) == 1, repr(message)


def report(line: str) -> None:
    """A figure for the reader of ``pytest -s`` (hidden otherwise)."""
    print(f"\n[hostile inputs] {line}")


# --- arbitrary WFDB header text ---------------------------------------------------------------

VALID_HEADER = ["R 12 500 5000 05-Feb-2020 11:39:16"] + [
    f"R.mat 16+24 1000/mV 16 0 {7 * i} 0 0 {lead}" for i, lead in enumerate(LEADS)
] + ["#Age: 74", "#Sex: Male", "#Dx: 59118001,164884000", "#Rx: Unknown"]
HEADER_TOKENS = st.one_of(
    st.sampled_from(["R", "R.mat", "R.dat", "16", "16+24", "212", "80", "8", "24", "32", "61", "160", "310", "508",
                     "0", "-1", "12", "13", "5000", "500", "257", "99999999", "16x2", "16x99999", "16:3", "16:99999999",
                     "16+99", "1000/mV", "1/uV", "200/V", "0/mV", "-1000/mV", "1e-40/mV", "1e-320/mV", "1000(0)/mV",
                     "nan", "inf", "MLII", "avr", "V1", "#Dx:", "", "~", "/dev/null", "..", "1000/µV"]),
    st.integers(-2 ** 40, 2 ** 40).map(str),
    st.floats().map(repr),
    st.text(st.characters(codec="ascii"), max_size=10),
)


@st.composite
def mutated_headers(draw) -> bytes:
    """The Challenge header of a record whose .mat and format-16 .dat sit beside it, with tokens
    replaced, lines dropped, repeated, cut or inserted, and sometimes a stray non-ASCII byte."""
    lines = [line.split(" ") for line in VALID_HEADER]
    if draw(st.booleans()):
        lines = [[t.replace("R.mat", "R.dat").replace("16+24", "16") for t in line] for line in lines]
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, max(len(lines) - 1, 0)))
        op = draw(st.sampled_from(["token", "token", "token", "drop", "repeat", "insert", "cut"]))
        if not lines or op == "insert":
            lines.insert(i, draw(st.lists(HEADER_TOKENS, max_size=10)))
        elif op == "token" and lines[i]:
            lines[i][draw(st.integers(0, len(lines[i]) - 1))] = draw(HEADER_TOKENS)
        elif op == "drop":
            del lines[i]
        elif op == "repeat":
            lines.insert(i, list(lines[i]))
        elif op == "cut":
            lines[i] = lines[i][: draw(st.integers(0, len(lines[i])))]
    data = "\n".join(" ".join(line) for line in lines).encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 3)) == 0:
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.sampled_from([b"\xb5", b"\xe9", b"\xff", b"\x00", b"\r"])) + data[at:]
    return data


HEADERS = st.one_of(
    mutated_headers(), mutated_headers(), mutated_headers(),
    st.text(max_size=300).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.binary(max_size=300),
)


def _header(edit) -> bytes:
    return "\n".join(edit(list(VALID_HEADER))).encode()


@pytest.fixture(scope="module")
def signal_folder(tmp_path_factory) -> Path:
    """A valid 12 x 5000 record as R.mat (format 16+24) and R.dat (format 16); the tests write R.hea."""
    folder = tmp_path_factory.mktemp("fuzz_record")
    val = (np.random.default_rng(0).standard_normal((12, 5000)) * 300).astype(np.int16)
    scipy.io.savemat(folder / "R.mat", {"val": val}, format="4")
    (folder / "R.dat").write_bytes(val.T.astype("<i2").tobytes())
    return folder


def test_any_header_text_reads_or_gives_a_one_line_record_error(signal_folder):
    outcomes = Counter()

    @FUZZ
    @given(header=HEADERS)
    # claims that would make wfdb allocate gigabytes or misread silently: refused up front
    @example(header=_header(lambda h: [h[0].replace("R 12 ", "R 99999999 ")] + h[1:]))
    @example(header=_header(lambda h: [line.replace("R.mat 16+24", "R.dat 16:99999999") for line in h]))
    @example(header=_header(lambda h: [line.replace("R.mat 16+24", "R.dat 16x99999") for line in h]))
    @example(header=_header(lambda h: [h[0].replace(" 5000 ", " 99999999999 ")] + h[1:]))
    @example(header=_header(lambda h: [line.replace("1000/mV", "1e-40/mV") for line in h]))
    @example(header=_header(lambda h: [line.replace("1000/mV", "1000/µV") for line in h]))
    @example(header=_header(lambda h: h[:13]))  # the comments cut off
    def check(header: bytes) -> None:
        (signal_folder / "R.hea").write_bytes(header)
        (ref,) = discover(signal_folder, "wfdb")
        try:
            record = read_record(ref)
        except RecordError as error:
            assert_one_line(str(error))
            assert error.reason == str(error) and error.kind
            outcomes[error.kind] += 1
        else:
            assert record.signal.dtype == np.float32 and record.signal.shape[0] == 12
            assert np.isfinite(record.signal).all() and record.present.any()
            outcomes["read"] += 1

    check()
    total = sum(outcomes.values())
    report(f"WFDB headers: {total} generated inputs, outcomes {dict(outcomes.most_common())}")
    assert total >= 200
    assert outcomes["read"] > 0 and len(outcomes) >= 5  # the inputs reach past the header parser


def test_header_claims_that_wfdb_would_misread_are_refused_up_front(signal_folder):
    cases = {
        "claims 99999999 signals but describes 12": lambda h: [h[0].replace("R 12 ", "R 99999999 ")] + h[1:],
        "R.dat is truncated": lambda h: [line.replace("R.mat 16+24", "R.dat 16:99999999") for line in h],
        "beyond float32": lambda h: [line.replace("1000/mV", "1e-40/mV") for line in h],
        "line 2 holds bytes outside ASCII": lambda h: [line.replace("1000/mV", "1000/µV") for line in h],
    }
    for words, edit in cases.items():
        (signal_folder / "R.hea").write_bytes(_header(edit))
        with pytest.raises(RecordError, match=words):
            read_record(next(discover(signal_folder, "wfdb")))
    (signal_folder / "R.hea").write_bytes(b"\xef\xbb\xbf" + _header(lambda h: h))  # a BOM from a Windows editor
    assert read_record(next(discover(signal_folder, "wfdb"))).present.all()


# --- arbitrary manifest, label and class-list text ------------------------------------------

WAVE_FILES = ["waves/good.npy", "waves/six.npy", "waves/flat.npy", "waves/text.npy", "waves/dir.npy", "waves/cut.npy",
              "waves/pickled.npy", "waves/absent.npy", "../..", "", "\x00"]
MANIFEST_ROWS = st.tuples(
    st.sampled_from(WAVE_FILES) | st.text(max_size=8),
    st.sampled_from(["100", "99", "0", "-5", "1e3", "1_00", "١٠٠", "9" * 5000])
    | st.integers().map(str) | st.text(max_size=4),
    st.sampled_from(["", "1" * 12, "0" * 12, "1" * 11, "10" * 6, "x" * 12]) | st.text(max_size=12),
    st.text(max_size=5),
    st.sampled_from(["500", "", "nan", "-inf", "x"]) | st.text(max_size=4),
    st.text(max_size=5),
    st.integers(0, 7),
).map(lambda row: "\t".join(row[: min(row[-1], 6)]))


@st.composite
def manifest_texts(draw, folder: Path) -> bytes:
    root = draw(st.sampled_from([str(folder), str(folder), ".", "", "waves/..", "\x00", f"{folder}\x00"])
                | st.text(max_size=10))
    rows = draw(st.lists(MANIFEST_ROWS | st.text(max_size=20), max_size=5))
    return "\n".join([root] + rows).encode("utf-8", "surrogatepass")


def _texts(structured) -> st.SearchStrategy[bytes]:
    return st.one_of(structured, structured,
                     st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")), st.binary(max_size=200))


@pytest.fixture(scope="module")
def manifest_folder(tmp_path_factory) -> Path:
    """Waveform files a fuzzed manifest may name: good, wrong shape, 1-D, not .npy, a folder,
    cut short, pickled objects."""
    folder = tmp_path_factory.mktemp("fuzz_manifest")
    waves = folder / "waves"
    waves.mkdir()
    np.save(waves / "good.npy", np.zeros((12, 100), np.float32))
    np.save(waves / "six.npy", np.zeros((6, 100), np.float32))
    np.save(waves / "flat.npy", np.zeros(100, np.float32))
    (waves / "text.npy").write_text("not an array")
    (waves / "dir.npy").mkdir()
    (waves / "cut.npy").write_bytes((waves / "good.npy").read_bytes()[:100])
    np.save(waves / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    write_manifest(folder / "fixed.tsv", folder, [ManifestRow("waves/good.npy", 100)] * 3)
    return folder


def _outcome(outcomes: Counter, label: str, call):
    try:
        result = call()
    except ManifestError as error:
        assert_one_line(str(error))
        outcomes[f"{label} error"] += 1
        return None
    outcomes[f"{label} parsed"] += 1
    return result


def test_any_manifest_text_parses_or_gives_a_one_line_manifest_error(manifest_folder):
    outcomes = Counter()

    @FUZZ
    @given(text=_texts(manifest_texts(manifest_folder)))
    def check(text: bytes) -> None:
        path = manifest_folder / "fuzz.tsv"
        path.write_bytes(text)
        manifest = _outcome(outcomes, "manifest", lambda: read_manifest(path))
        if manifest is not None:
            assert isinstance(manifest, Manifest) and all(row.num_samples > 0 for row in manifest.rows)
            if manifest.root == manifest_folder:  # rows name the files above (or none)
                _outcome(outcomes, "waveforms", lambda: check_waveforms(manifest))

    check()
    total = outcomes["manifest parsed"] + outcomes["manifest error"]
    report(f"manifests: {total} generated inputs, outcomes {dict(outcomes.most_common())}")
    assert total >= 200 and outcomes["manifest parsed"] > 0 and outcomes["waveforms error"] > 0


def test_any_label_or_class_text_parses_or_gives_a_one_line_manifest_error(manifest_folder):
    outcomes = Counter()
    lines = st.lists(st.lists(st.sampled_from(["426783006", "164889003", "", " ", "x"]) | st.text(max_size=6),
                              max_size=3).map(",".join), min_size=2, max_size=4).map("\n".join)
    labels = _texts(lines.map(lambda s: s.encode("utf-8", "surrogatepass")))

    @FUZZ
    @given(lbl=labels, classes=_texts(lines.map(lambda s: s.encode("utf-8", "surrogatepass"))))
    def check(lbl: bytes, classes: bytes) -> None:
        manifest = read_manifest(manifest_folder / "fixed.tsv")
        (manifest_folder / "fixed.lbl").write_bytes(lbl)
        codes = _outcome(outcomes, "labels", lambda: read_labels(manifest))
        if codes is not None:
            assert len(codes) == 3 and all(isinstance(c, str) and c for row in codes for c in row)
        (manifest_folder / "classes.tsv").write_bytes(classes)
        names = _outcome(outcomes, "classes", lambda: read_classes(manifest_folder))
        if names is not None:
            assert names and all(name and name == name.strip() for name in names)

    check()
    total = outcomes["labels parsed"] + outcomes["labels error"]
    report(f"label files + class lists: {total} generated input pairs, outcomes {dict(outcomes.most_common())}")
    assert total >= 200 and all(outcomes[k] > 0 for k in ("labels parsed", "labels error", "classes parsed"))


# --- an archive with planted corruptions, through the real fairseq-ecg-manifest ---------------

def _edit_header(path: Path, edit) -> None:
    header = path.with_name(path.name + ".hea")
    header.write_bytes(b"\n".join(edit(header.read_bytes().split(b"\n"))))


def _set_field(line: bytes, index: int, value: str) -> bytes:
    fields = line.split(b" ")
    fields[index] = value.encode("latin-1")
    return b" ".join(fields)


def _gain(lead: str, gain: str):
    """A header edit that gives one lead's signal line another ADC gain field (Latin-1 bytes)."""
    return lambda lines: [_set_field(line, 2, gain) if line.endswith(b" " + lead.encode()) else line for line in lines]


def _copy_record(path: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for suffix in (".hea", ".mat"):
        shutil.copy(path.with_name(path.name + suffix), folder)
    return folder / path.name


CONTROL = "(untouched record that a planted copy came from)"


def _escaped(key: str) -> str:
    """A key as fairseq-ecg-manifest writes it in skipped.tsv (tabs, newlines, undecodable bytes escaped)."""
    text = key.encode("utf-8", "backslashreplace").decode()
    return text.replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """40 synthetic Challenge records, 19 corruptions planted (in 15 of them, in 4 copies or new
    records, and links that loop), then the console script with two workers."""
    src = tmp_path_factory.mktemp("planted") / "archive"
    written = synthesize_archive(src, records=40, patients=15, seed=21)
    pool = iter(sorted((r for r in written if r.sample_rate == 500), key=lambda r: r.name))
    training = src / "training"
    key = lambda path: path.relative_to(src).as_posix()  # noqa: E731
    expect: dict[str, tuple[str, str]] = {}  # key -> (case, words of the skip reason or "" when it is read)

    r = next(pool)  # signal file cut in half
    mat = r.path.with_suffix(".mat")
    mat.write_bytes(mat.read_bytes()[: mat.stat().st_size // 2])
    expect[key(r.path)] = ("truncated .mat", "is truncated")
    r = next(pool)  # header claims twice the samples
    _edit_header(r.path, lambda h: [_set_field(h[0], 3, str(2 * r.num_samples))] + h[1:])
    expect[key(r.path)] = ("more samples than the file", "is truncated")
    r = next(pool)  # header claims a 13th lead in the same 12-lead file
    _edit_header(r.path, lambda h: [_set_field(h[0], 1, "13")] + h[1:13] + [h[12].replace(b" V6", b" V7")] + h[13:])
    expect[key(r.path)] = ("more leads than the file", "is truncated")
    r = next(pool)  # header says 15 leads, describes 12
    _edit_header(r.path, lambda h: [_set_field(h[0], 1, "15")] + h[1:])
    expect[key(r.path)] = ("more leads than described", "claims 15 signals but describes 12")
    r = next(pool)  # a format-16 .dat whose NaN became WFDB's invalid sample -32768
    physical = scipy.io.loadmat(r.path.with_suffix(".mat"))["val"].T / 1000.0
    physical[1234, 4] = np.nan
    header = r.path.with_suffix(".hea").read_text()
    comments = [line[1:] for line in header.splitlines() if line.startswith("#")]
    r.path.with_suffix(".mat").unlink()
    wfdb.wrsamp(r.name, fs=500, units=["mV"] * 12, sig_name=list(LEADS), p_signal=physical, fmt=["16"] * 12,
                adc_gain=[1000] * 12, baseline=[0] * 12, comments=comments, write_dir=str(r.path.parent))
    assert np.isnan(wfdb.rdrecord(str(r.path)).p_signal[1234, 4])  # what the sentinel reads back as
    expect[key(r.path)] = ("NaN in a format-16 .dat", "1 NaN/Inf sample(s) in lead aVL")
    r = next(pool)  # a gain so small that (digital - baseline) / gain overflows float64
    _edit_header(r.path, _gain("V3", "1e-320/mV"))
    expect[key(r.path)] = ("gain giving Inf", "NaN/Inf sample(s) in lead V3")
    r = next(pool)  # finite in float64, beyond float32
    _edit_header(r.path, _gain("II", "1e-40/mV"))
    expect[key(r.path)] = ("values beyond float32", "lead II reaches")
    constant = next(pool)  # V4 exactly zero (not recorded), V5 a flat 0.25 mV
    val = scipy.io.loadmat(constant.path.with_suffix(".mat"))["val"]
    val[LEADS.index("V4")], val[LEADS.index("V5")] = 0, 250
    write_mat_record(constant.path.parent, constant.name, val, dx=",".join(constant.codes))
    expect[key(constant.path)] = ("constant leads", "")
    saturated = next(pool)  # lead I clipped at the int16 extremes: +-32.767 mV
    val = scipy.io.loadmat(saturated.path.with_suffix(".mat"))["val"]
    val[0] = np.where(np.arange(val.shape[1]) % 2, 32767, -32767)
    write_mat_record(saturated.path.parent, saturated.name, val, dx=",".join(saturated.codes))
    expect[key(saturated.path)] = ("gigantic (saturated) values", "")
    extra = next(pool)  # a 13th channel that is no ECG lead
    val = scipy.io.loadmat(extra.path.with_suffix(".mat"))["val"]
    write_mat_record(extra.path.parent, extra.name, np.vstack([val, val[:1]]), names=LEADS + ("Resp",),
                     dx=",".join(extra.codes))
    expect[key(extra.path)] = ("extra non-ECG channel", "")
    unreadable = next(pool)
    unreadable.path.with_suffix(".mat").chmod(0)
    root = os.geteuid() == 0  # root reads a mode-000 file anyway
    expect[key(unreadable.path)] = ("mode 000 signal file", "" if root else "Permission denied")
    latin1 = next(pool)  # a Latin-1 comment: wfdb drops the byte, the #Dx line is intact
    _edit_header(latin1.path, lambda h: h[:-1] + [b"#Hx: Herzinsuffizienz (M\xfcller), \xe9tat stable", h[-1]])
    expect[key(latin1.path)] = ("Latin-1 byte in a comment", "")
    r = next(pool)  # a Latin-1 micro sign in a unit: wfdb would read 1000/V
    _edit_header(r.path, _gain("I", "1000/µV"))
    expect[key(r.path)] = ("Latin-1 byte in a signal line", "line 2 holds bytes outside ASCII")
    moved = next(pool)  # spaces and non-ASCII letters in the folder names
    moved_to = training / "Zürich Ärzte" / "g 1"
    _copy_record(moved.path, moved_to)
    for suffix in (".hea", ".mat"):
        moved.path.with_suffix(suffix).unlink()
    expect[key(moved_to / moved.name)] = ("spaces and unicode in the path", "")
    twin = next(pool)  # the same record name in another source folder
    expect[key(twin.path)] = (CONTROL, "")
    second = _copy_record(twin.path, training / "georgia_copy" / "g1")
    val = scipy.io.loadmat(second.with_suffix(".mat"))["val"]  # another recording (an identical one is a duplicate)
    val[0, 100] += 1
    scipy.io.savemat(second.with_suffix(".mat"), {"val": val}, format="4")
    expect[key(second)] = ("duplicate name (second)", "")
    donor = next(pool)
    val = scipy.io.loadmat(donor.path.with_suffix(".mat"))["val"]
    expect[key(write_mat_record(training / "cpsc_2018" / "g1", "Ø0001", val))] = (
        "non-ASCII record name", "line 1 holds bytes outside ASCII")
    latin1_folder = Path(os.fsdecode(os.fsencode(training) + b"/M\xfcnchen/g1"))  # a name from another encoding
    expect[key(_copy_record(donor.path, latin1_folder))] = ("folder name not UTF-8", "is not valid UTF-8")
    expect[key(_copy_record(donor.path, training / "bad\nname"))] = ("newline in a folder name",
                                                                     "cannot be an output file name")
    expect[key(donor.path)] = (CONTROL, "")
    os.symlink(src, training / "loop")  # a folder loop
    os.symlink("LOOP2.hea", donor.path.parent / "LOOP1.hea")  # and a loop of header links
    os.symlink("LOOP1.hea", donor.path.parent / "LOOP2.hea")

    assert len({case for case, _ in expect.values()} - {CONTROL}) + 1 == 19  # + the links

    dest = src.parent / "prepared"
    try:
        result = subprocess.run([str(BIN / "fairseq-ecg-manifest"), str(src), "--dest", str(dest), "--workers", "2",
                                 "--valid-percent", "20", "--test-percent", "20"],
                                cwd=REPO, capture_output=True, text=True, timeout=300)
    finally:
        unreadable.path.with_suffix(".mat").chmod(0o644)
    return {"src": src, "dest": dest, "result": result, "expect": expect, "root": root,
            "constant": constant, "saturated": saturated, "extra": extra, "latin1": latin1}


def _rows(dest: Path) -> dict[str, ManifestRow]:
    rows = {}
    for split in ("train", "valid", "test"):
        for row in read_manifest(dest / "finetune" / f"{split}.tsv").rows:
            assert row.relative_path not in rows
            rows[row.relative_path] = row
    return rows


def _skipped(dest: Path) -> dict[str, str]:
    lines = (dest / "skipped.tsv").read_text().splitlines()
    skipped = dict(line.split("\t", 1) for line in lines)
    assert len(skipped) == len(lines)
    return skipped


def test_planted_archive_runs_to_the_end(planted):
    result = planted["result"]
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    found = len(list(discover(planted["src"], "physionet2021")))
    assert found == 40 + 4  # three copies and one new record; the links and the folder loop add none
    assert f"{found} records found" in result.stdout


def test_every_planted_case_has_its_outcome(planted):
    if planted["root"]:
        report("running as root: the mode-000 signal file is read like any other (root ignores permissions)")
    rows, skipped = _rows(planted["dest"]), _skipped(planted["dest"])
    for key, (case, words) in planted["expect"].items():
        if words:
            reason = skipped.get(_escaped(key))
            assert reason is not None and words in reason, (case, key, reason)
            assert f"waves/{key}.npy" not in rows
        else:
            assert _escaped(key) not in skipped, (case, skipped.get(_escaped(key)))
            assert f"waves/{key}.npy" in rows, case
            assert (planted["dest"] / "waves" / f"{key}.npy").is_file()


def test_every_good_record_comes_through_and_everything_is_accounted_for(planted):
    dest, expect = planted["dest"], planted["expect"]
    discovered = {_escaped(ref.key) for ref in discover(planted["src"], "physionet2021")}
    rows, skipped = _rows(dest), _skipped(dest)
    written = {row.relative_path[len("waves/"):-len(".npy")] for row in rows.values()}
    assert len(rows) + len(skipped) == len(discovered)
    assert written | set(skipped) == discovered and not written & set(skipped)
    bad = {_escaped(key) for key, (_, words) in expect.items() if words}
    assert set(skipped) == bad  # nothing else was lost
    pretrain = sum(len(read_manifest(dest / "pretrain" / f"{s}.tsv")) for s in ("train", "valid"))
    assert pretrain + len(read_manifest(dest / "finetune" / "test.tsv")) == len(rows)
    read = sum(1 for case, words in expect.values() if not words and case != CONTROL)
    report(f"planted archive: 19 corruptions, {len(discovered)} records found, {len(bad)} skipped with their reason, "
           f"{read} planted records read as they are; {len(rows)} records survive")


def test_constant_and_saturated_leads_are_kept_as_recorded(planted):
    dest, rows = planted["dest"], _rows(planted["dest"])
    record = planted["constant"]
    key = record.path.relative_to(planted["src"]).as_posix()
    row = rows[f"waves/{key}.npy"]
    wave = np.load(dest / row.relative_path)
    v4, v5 = LEADS.index("V4"), LEADS.index("V5")
    assert row.lead_mask[v4] == "0" and row.lead_mask[v5] == "1"  # only exactly-zero counts as absent
    assert np.all(wave[v4] == 0) and np.allclose(wave[v5], 0.25)
    record = planted["saturated"]
    row = rows[f"waves/{record.path.relative_to(planted['src']).as_posix()}.npy"]
    lead_i = np.load(dest / row.relative_path)[0]
    assert np.allclose(np.abs(lead_i), 32.767) and row.lead_mask == "1" * 12


def test_dropped_channel_and_latin1_comment_are_read_with_their_labels(planted):
    dest, rows, src = planted["dest"], _rows(planted["dest"]), planted["src"]
    journal = {line.split("\t")[0]: line.split("\t") for line in (dest / "records.tsv").read_text().splitlines()[2:]}
    extra_key = planted["extra"].path.relative_to(src).as_posix()
    assert journal[extra_key][-1] == "dropped unknown lead 'Resp'"
    assert "1 record(s) had channels with unknown lead names, dropped" in planted["result"].stdout
    labels = {}
    for split in ("train", "valid", "test"):
        manifest = read_manifest(dest / "finetune" / f"{split}.tsv")
        labels.update({row.relative_path: codes for row, codes in zip(manifest.rows, read_labels(manifest))})
    record = planted["latin1"]
    codes = labels[f"waves/{record.path.relative_to(src).as_posix()}.npy"]
    assert codes == scored_labels().canonical_codes(record.codes)


def test_duplicate_names_symlink_loops_and_odd_paths(planted):
    rows = _rows(planted["dest"])
    twins = [row for row in rows.values() if "georgia_copy" in row.relative_path]
    (copy,) = twins
    originals = [row for row in rows.values() if row.record == copy.record and row is not copy]
    assert len(originals) == 1 and originals[0].relative_path != copy.relative_path
    assert originals[0].patient == copy.patient  # patients.csv names the record, not its folder
    assert not any("loop" in row.relative_path.lower() for row in rows.values())
    odd = [row for row in rows.values() if "Zürich Ärzte/g 1/" in row.relative_path]
    assert len(odd) == 1 and np.load(planted["dest"] / odd[0].relative_path).shape == (12, odd[0].num_samples)


# --- manifests edited by hand, through a real fairseq-hydra-train -----------------------------

@pytest.fixture(scope="module")
def hand_edited(tmp_path_factory, request) -> dict:
    """Four hand edits, each in its own copy of a tiny data folder, trained on at the same time
    (they fail while loading data, before the first update; the pretraining runs start before
    the tiny pretrained checkpoint that the classification run needs is made). Returns case ->
    (expected location, expected words, exit status, output). A missing waveform file is in
    test_pretraining."""
    runs = {}

    def pretraining(case: str) -> Path:
        folder = tmp_path_factory.mktemp(f"edited_{case}")
        write_random_manifest(folder, "train", 4, seed=1)
        write_random_manifest(folder, "valid", 2, seed=2)
        return folder

    folder = pretraining("samples")  # a row's sample count changed
    lines = (folder / "train.tsv").read_text().splitlines()
    lines[2] = lines[2].replace("\t5000\t", "\t5500\t")
    (folder / "train.tsv").write_text("\n".join(lines) + "\n")
    runs["samples"] = (folder, f"{folder / 'train.tsv'}:3:", "holds 5000 samples but the manifest says 5500", "w2v")
    folder = pretraining("mask")  # a lead mask shortened to the six limb leads
    lines = (folder / "valid.tsv").read_text().splitlines()
    lines[1] = lines[1].replace("\t" + "1" * 12 + "\t", "\t111111\t")
    (folder / "valid.tsv").write_text("\n".join(lines) + "\n")
    runs["mask"] = (folder, f"{folder / 'valid.tsv'}:2:", "lead mask '111111' must be 12 characters of 0/1", "w2v")
    folder = pretraining("channels")  # a waveform file replaced by a six-channel one
    np.save(folder / "waves" / "train_3.npy", np.zeros((6, 5000), np.float32))
    runs["channels"] = (folder, f"{folder / 'train.tsv'}:5:", "has shape (6, 5000), expected (12, samples)", "w2v")
    folder = tmp_path_factory.mktemp("edited_labels")  # a label line deleted
    for split, count in (("train", 4), ("valid", 3)):
        write_random_manifest(folder, split, count, seed=count)
        write_labels(folder / f"{split}.tsv", [["426783006"]] * count)
    write_classes(folder, SCORED_CLASSES)
    (folder / "valid.lbl").write_text("426783006\n426783006\n")
    runs["labels"] = (folder, f"{folder / 'valid.lbl'}:3:",
                      f"2 label lines for 3 manifest rows in {folder / 'valid.tsv'}", "classification")

    processes = {}
    for case, (folder, _, _, config) in runs.items():
        config_dir = "examples/finetune" if config == "classification" else "examples/pretrain"
        extra = []
        if config == "classification":
            extra = [f"model.model_path={request.getfixturevalue('tiny_pretrained')}"]
        command = [str(BIN / "fairseq-hydra-train"), "--config-dir", config_dir, "--config-name", config, "+size=tiny",
                   f"task.data={folder}", f"checkpoint.save_dir={folder / 'checkpoints'}", *extra]
        with open(folder / "train.log", "w") as log:
            processes[case] = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    return {case: (where, words, processes[case].wait(timeout=300), (folder / "train.log").read_text())
            for case, (folder, where, words, _) in runs.items()}


@pytest.mark.parametrize("case", ["samples", "mask", "channels", "labels"])
def test_hand_edited_manifest_stops_training_naming_file_and_line(hand_edited, case):
    where, words, returncode, output = hand_edited[case]
    assert returncode != 0
    errors = [line for line in output.splitlines() if line.startswith(f"{where} ")]  # Hydra prints the message alone
    assert len(errors) == 1 and "Traceback" not in output, output[-3000:]
    assert words in errors[0], errors[0]
    assert not (Path(where.split(":")[0]).parent / "checkpoints" / "checkpoint_last.pt").exists()
