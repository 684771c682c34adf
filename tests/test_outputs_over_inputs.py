"""No output of predict or embed replaces what it reads or a prepared folder (issue 20 item 2):
`--out D/finetune/test.npy` once replaced the manifest test.tsv (embed's row file) and left
test.lbl out of step. Each refusal is one line, before any model is loaded; nothing changes."""
from pathlib import Path

import pytest

from fairseq_ecg import embed, predict
from fairseq_ecg.preparation import main as prepare
from fairseq_ecg.synth import synthesize_archive


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("outputs")
    synthesize_archive(root / "src", records=6, patients=3, seed=4, layout="numpy")
    assert prepare([str(root / "src"), "--dest", str(root / "prep"), "--workers", "1"]) == 0
    return root


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


CASES = {  # name -> (program, input below the fixture's root, --out below it, words of the refusal)
    "embed's row file is the manifest": (embed, "prep/finetune/test.tsv", "prep/finetune/test.npy",
                                         "prep/finetune/test.tsv would overwrite the input"),
    "predict over its manifest": (predict, "prep/finetune/test.tsv", "prep/finetune/test.tsv",
                                  "prep/finetune/test.tsv would overwrite the input"),
    "predict over the label file": (predict, "prep/finetune/test.tsv", "prep/finetune/test.lbl",
                                    "would overwrite the label file of"),
    "predict over another split's manifest": (predict, "prep/finetune/test.tsv", "prep/finetune/valid.tsv",
                                              "would overwrite finetune/valid.tsv of the prepared folder"),
    "predict over the journal": (predict, "prep/finetune/test.tsv", "prep/records.tsv",
                                 "would overwrite records.tsv of the prepared folder"),
    "embed over a waveform": (embed, "prep/pretrain/train.tsv", "prep/waves/numpy/x.npy", ""),
    "predict over a file of its archive": (predict, "src", "src/records.csv", "would overwrite a file of the input folder"),
    "embed over a recording of its archive": (embed, "src", "", "would overwrite a file of the input folder"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_an_output_over_an_input_is_refused_in_one_line(prepared, tmp_path, capsys, case):
    program, given, out, words = CASES[case]
    if case == "embed over a waveform":  # a real waveform's name
        out = next((prepared / "prep" / "waves").rglob("*.npy")).relative_to(prepared).as_posix()
        words = f"would overwrite {Path(out).relative_to('prep')} of the prepared folder"
    if not out:  # one of the archive's own .npy recordings
        out = next((prepared / "src").rglob("*.npy")).relative_to(prepared).as_posix()
    before = _snapshot(prepared)
    checkpoint = tmp_path / "never-loaded.pt"
    checkpoint.write_bytes(b"not read: the outputs are checked first")
    assert program.main([str(prepared / given), "--checkpoint", str(checkpoint), "--out", str(prepared / out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0] and "choose another --out" in err[0], err
    assert _snapshot(prepared) == before


def test_an_output_that_links_to_an_input_is_the_input(prepared, tmp_path, capsys):
    link = tmp_path / "predictions.csv"
    link.symlink_to(prepared / "prep" / "finetune" / "test.tsv")
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"")
    assert predict.main([str(prepared / "prep" / "finetune" / "test.tsv"), "--checkpoint", str(checkpoint),
                         "--out", str(link)]) == 2
    assert "would overwrite the input" in capsys.readouterr().err
    assert predict.main([str(prepared / "prep" / "finetune" / "test.tsv"), "--checkpoint", str(checkpoint),
                         "--out", str(checkpoint)]) == 2  # nor the checkpoint


def test_embed_run_again_replaces_its_own_outputs(prepared, tmp_path, tiny_pretrained):
    out = tmp_path / "emb" / "test.npy"
    out.parent.mkdir()
    for _ in range(2):  # the second run finds its own .npy, row file and salt: they are outputs, not inputs
        assert embed.main([str(prepared / "prep" / "pretrain" / "valid.tsv"), "--checkpoint", str(tiny_pretrained),
                           "--out", str(out)]) == 0
    assert out.with_suffix(".tsv").read_text().startswith("record\tpatient\tsource\tsegments\n")
