"""The CSV tables of the table-driven layouts as real exports write them (issue 20 item 14): a
byte-order mark (Excel's "CSV UTF-8"), a row that is not UTF-8, a field beyond the csv module's
limit, a PTB-XL scp_codes cell of 100,000 characters. Each once ended in a traceback or "no known
layout recognised"; now the table is read and the one bad row is a skipped record with its line."""
from pathlib import Path

import pytest

from fairseq_ecg.preparation import main as prepare
from fairseq_ecg.sources import detect_layout, discover
from fairseq_ecg.synth import synthesize_archive

TABLES = {"numpy": "records.csv", "ptbxl": "ptbxl_database.csv", "code15": "exams.csv",
          "mimic_iv_ecg": "record_list.csv"}


def _archive(tmp_path: Path, layout: str) -> tuple[Path, Path]:
    src = tmp_path / layout
    synthesize_archive(src, records=6, patients=6, seed=2, layout=layout)
    (table,) = [p for p in src.rglob(TABLES[layout])]
    return src, table


def _lines(table: Path) -> list[bytes]:
    return table.read_bytes().splitlines(keepends=True)


def _problems(src: Path, layout: str) -> dict[str, str]:
    return {ref.key: ref.problem for ref in discover(src, layout) if ref.problem}


@pytest.mark.parametrize("layout", sorted(TABLES))
def test_a_table_with_a_byte_order_mark_is_recognised_and_read_whole(tmp_path, layout):
    src, table = _archive(tmp_path, layout)
    before = sorted(ref.key for ref in discover(src, layout))
    table.write_bytes(b"\xef\xbb\xbf" + table.read_bytes())
    assert detect_layout(src) == layout
    assert sorted(ref.key for ref in discover(src, "auto")) == before and not _problems(src, layout)


@pytest.mark.parametrize("layout", sorted(TABLES))
def test_a_row_that_is_not_utf8_is_one_skipped_record_naming_its_line(tmp_path, layout):
    src, table = _archive(tmp_path, layout)
    lines = _lines(table)
    count = len(list(discover(src, layout)))
    lines[3] = lines[3].replace(b",", b",\xff", 1)  # a Latin-1 byte in the row of line 4
    table.write_bytes(b"".join(lines))
    assert detect_layout(src) == layout
    refs = list(discover(src, layout))
    bad = [ref for ref in refs if ref.problem]
    assert len(refs) == count and len(bad) == 1
    assert bad[0].problem == f"{table.name} line 4: not valid UTF-8; re-save the file as UTF-8"


@pytest.mark.parametrize("layout", sorted(TABLES))
def test_a_field_beyond_the_csv_limit_skips_that_row_only(tmp_path, layout):
    src, table = _archive(tmp_path, layout)
    lines = _lines(table)
    count = len(list(discover(src, layout)))
    lines[2] = lines[2].rstrip(b"\r\n") + b"," + b"x" * 200_000 + b"\n"
    table.write_bytes(b"".join(lines))
    refs = list(discover(src, layout))
    bad = [ref for ref in refs if ref.problem]
    assert len(refs) == count and len(bad) == 1
    assert bad[0].problem == f"{table.name} line 3: field larger than field limit (131072); row skipped"


def test_a_ptbxl_scp_codes_cell_of_100000_characters_is_not_parsed(tmp_path):
    src, table = _archive(tmp_path, "ptbxl")
    text = table.read_text()
    first = text.index("{'")  # the first record's scp_codes
    table.write_text(text[:first] + "{'NORM': 100.0, " + "'X': 0, " * 12_500 + text[first + 2:])
    (problem,) = _problems(src, "ptbxl").values()
    assert problem == ("ptbxl_database.csv line 2: scp_codes \"{'NORM': 100.0, 'X': 0, 'X': 0, 'X': 0, ... "
                       "(100044 characters)\" is not a dict")


def test_preparation_reports_the_bad_rows_and_writes_the_rest(tmp_path, capsys):
    """The whole command on a numpy export saved by Excel (BOM) with one Latin-1 row: exit 0, five
    records written, the sixth in skipped.tsv with its line."""
    src, table = _archive(tmp_path, "numpy")
    lines = _lines(table)
    lines[2] = lines[2].replace(b",", b",\xe9", 1)
    table.write_bytes(b"\xef\xbb\xbf" + b"".join(lines))
    dest = tmp_path / "prepared"
    assert prepare([str(src), "--dest", str(dest), "--workers", "1"]) == 0
    skipped = (dest / "skipped.tsv").read_text()
    assert "records.csv line 3: not valid UTF-8; re-save the file as UTF-8" in skipped
    out = capsys.readouterr().out
    assert "5 written" in out
    assert f"fairseq-ecg-manifest: {src}: layout numpy (recognised; --layout NAME reads it otherwise)" in out
