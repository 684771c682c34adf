"""A checkpoint's settings are checked before anything is built from them (issue 20 item 8): a rate
or segment length of 0, a negative rate, an encoder size the file's weights cannot hold, a
conv_feature_layers text that fairseq would eval, NaN thresholds: refused in one line by every
loader of the plugin, nothing run, nothing allocated. Class names reach CSV files as text a
spreadsheet does not run as a formula (one writer for every CSV)."""
import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import write_random_manifest
from fairseq_ecg import embed, importer, predict
from fairseq_ecg.experiments import runner as experiments
from fairseq_ecg.checkpoints import CheckpointError, conv_feature_layers, load_checkpoint
from fairseq_ecg.spreadsheet import spreadsheet_text
from signals_reference import signals_checkpoint

FORMULA = '=cmd|"/c calc"!A1'


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("classifier")
    signals_checkpoint(root / "source.pt", "classifier", "parametrizations", seed=2, num_labels=4)
    (root / "labels.txt").write_text(f"{FORMULA}\n+SUM(A1)\n-2+3\n@SNR\n")
    assert importer.main([str(root / "source.pt"), "--out", str(root / "cls.pt"), "--kind", "classifier",
                          "--labels", str(root / "labels.txt")]) == 0
    return root / "cls.pt"


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("records")
    write_random_manifest(folder, "test", 2, seed=3)
    return folder / "test.tsv"


def _edited(classifier: Path, folder: Path, edit) -> Path:
    state = torch.load(classifier, weights_only=True)
    edit(state)
    path = folder / "edited.pt"
    torch.save(state, path)
    return path


def _encoder(state: dict) -> dict:
    return state["cfg"]["model"]["encoder_args"]


CASES = {
    "rate_zero": (lambda s: s["cfg"]["task"].update(sample_rate=0), "task.sample_rate = 0"),
    "rate_negative": (lambda s: s["cfg"]["task"].update(sample_rate=-500), "task.sample_rate = -500"),
    "rate_nan": (lambda s: s["cfg"]["task"].update(sample_rate=float("nan")), "task.sample_rate = nan"),
    "segment_zero": (lambda s: s["cfg"]["task"].update(segment_seconds=0), "task.segment_seconds = 0"),
    "segment_huge": (lambda s: s["cfg"]["task"].update(segment_seconds=1e12), "samples per segment"),
    "embed_dim_2_20": (lambda s: _encoder(s).update(encoder_embed_dim=2 ** 20, encoder_attention_heads=4),
                       "the file holds"),
    "layers_many": (lambda s: _encoder(s).update(encoder_layers=100_000), "the file holds"),
    "heads_zero": (lambda s: _encoder(s).update(encoder_attention_heads=0), "encoder_attention_heads = 0"),
    "dim_text": (lambda s: _encoder(s).update(encoder_embed_dim="32"), "not a positive integer"),
    "heads_indivisible": (lambda s: _encoder(s).update(encoder_attention_heads=5), "not divisible"),
    "conv_code": (None, "conv_feature_layers"),  # filled in below: a text that runs code when eval'd
    "thresholds_nan": (lambda s: s["task_state"].update(thresholds=[float("nan")] * 4), "task_state.thresholds"),
    "thresholds_big": (lambda s: s["task_state"].update(thresholds=[0.5, 2.0, 0.5, 0.5]), "task_state.thresholds"),
    "classes_zero": (lambda s: s["cfg"]["model"].update(num_classes=0), "model.num_classes = 0"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_settings_are_refused_in_one_line_before_building(classifier, records, tmp_path, case, capsys):
    edit, expected = CASES[case]
    marker = tmp_path / "ran"
    if case == "conv_code":
        text = f"[(open({str(marker)!r}, 'w').write('ran') * 0 + 24, 4, 2)] * 3"
        edit = lambda s: _encoder(s).update(conv_feature_layers=text)  # noqa: E731
    path = _edited(classifier, tmp_path, edit)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    assert expected in str(error.value) and "refused" in str(error.value) and str(path) in str(error.value)
    capsys.readouterr()
    out = tmp_path / "out"
    assert predict.main(["--checkpoint", str(path), str(records), "--out", str(out / "p.csv"), "--cpu"]) == 2
    assert embed.main(["--checkpoint", str(path), str(records), "--out", str(out / "e.npy"), "--cpu"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("fairseq-ecg-")]
    assert len(lines) == 2 and all(expected in line and "refused" in line for line in lines), lines
    assert not marker.exists() and not out.exists()


def test_conv_feature_layers_are_read_without_eval():
    assert conv_feature_layers("[(512, 10, 5)] + [(512, 3, 2)] * 2") == [(512, 10, 5), (512, 3, 2), (512, 3, 2)]
    for text in ("__import__('os').system('true')", "[(24, 4, 2)] * 10 ** 9", "[(24, 4)]", "[]", "[(0, 4, 2)]"):
        with pytest.raises(ValueError):
            conv_feature_layers(text)


def test_thresholds_given_by_the_user_are_probabilities(classifier, records, tmp_path, capsys):
    thresholds = tmp_path / "t.txt"
    thresholds.write_text("0.5\nnan\n0.5\n0.5\n")
    for spec in ("nan", "1.5", str(thresholds)):
        assert predict.main(["--checkpoint", str(classifier), str(records), "--out", str(tmp_path / "p.csv"),
                             "--thresholds", spec, "--cpu"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines()
             if line.startswith("fairseq-ecg-predict") and "no calibration saved" not in line]  # a notice, not an error
    assert len(lines) == 3 and all("probability" in line for line in lines), lines
    assert f"{thresholds}:2" in lines[2]


def test_class_names_reach_csv_as_text_never_as_formulas(classifier, records, tmp_path):
    out = tmp_path / "p.csv"
    assert predict.main(["--checkpoint", str(classifier), str(records), "--out", str(out), "--thresholds", "0",
                         "--cpu"]) == 0
    with open(out, newline="") as handle:
        header, *rows = list(csv.reader(handle))
    assert header == ["record", "segments", "leads", "quality", "'" + FORMULA, "'+SUM(A1)", "'-2+3", "'@SNR", "labels"]
    for row in rows:
        assert row[-1] == "'" + ";".join([FORMULA, "+SUM(A1)", "-2+3", "@SNR"])
        assert all(0 <= float(p) <= 1 for p in row[4:-1])  # numbers stay numbers
    assert spreadsheet_text("-0.25") == "-0.25" and spreadsheet_text(-3) == -3 and spreadsheet_text("a=b") == "a=b"
    results = experiments.write_results([{**dict.fromkeys(experiments.RESULT_COLUMNS, "x"), "variant": "=HYPERLINK(1)",
                                          "value": -0.5}], tmp_path)
    with open(results, newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["variant"] == "'=HYPERLINK(1)" and row["value"] == "-0.5"


def test_a_trained_sized_checkpoint_passes(classifier, records, tmp_path):
    assert embed.main(["--checkpoint", str(classifier), str(records), "--out", str(tmp_path / "e.npy"), "--cpu"]) == 0
    assert np.isfinite(np.load(tmp_path / "e.npy")).all()
