"""fairseq-ecg-export: the ONNX and TorchScript files give fairseq-ecg-predict's probabilities (1e-5)
from raw segments in mV, without fairseq, for a record-normalised calibrated classifier and a
segment-normalised reduced-lead one with max aggregation; the metadata round-trips; the README's
snippet runs; the encoder gives embed's vectors; errors are one line."""
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from conftest import REPO, run_cli
from fairseq_ecg.data.ecg_dataset import consecutive_starts
from fairseq_ecg.deploy.export import export, main as export_main, read_metadata
from fairseq_ecg.importer import convert
from fairseq_ecg.labels import SCORED_CLASSES
from fairseq_ecg.metrics.calibration import PlattCalibration
from fairseq_ecg.models.loading import load_model
from fairseq_ecg.predict import load_predictor
from signals_reference import signals_checkpoint

ort = pytest.importorskip("onnxruntime")
RATE = 500.0
SEGMENT = 2500  # the imported checkpoints' 5 s at 500 Hz
CALIBRATION = PlattCalibration(tuple([2.0] * 13 + [1.0] * 13), tuple([-1.0] * 13 + [0.0] * 13))
THRESHOLDS = [0.3] * 13 + [0.6] * 13


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict:
    """An imported classifier (record-normalised, 12 leads) given a calibration and thresholds, a
    copy normalised per segment, fed I, II and V2 and aggregating by max, and an imported
    pretrained checkpoint."""
    root = tmp_path_factory.mktemp("export")
    signals_checkpoint(root / "cls_src.pt", "classifier", "parametrizations", seed=2, num_labels=26)
    signals_checkpoint(root / "pre_src.pt", "pretrained", "weight_g", seed=1)
    (root / "labels.txt").write_text("".join(f"{name}\n" for name in SCORED_CLASSES))
    convert(root / "cls_src.pt", root / "cls.pt", "classifier", root / "labels.txt", log=lambda _: None)
    convert(root / "pre_src.pt", root / "pre.pt", "auto", log=lambda _: None)
    state = torch.load(root / "cls.pt", weights_only=True)
    state["task_state"].update(calibration=CALIBRATION.to_state(), thresholds=THRESHOLDS)
    torch.save(state, root / "record.pt")
    state["task_state"].update(normalize="segment", trained_leads="I+II+V2")
    state["cfg"]["task"].update(normalize="segment", leads=["I", "II", "V2"], aggregate="max")
    torch.save(state, root / "segment.pt")
    return {"record": root / "record.pt", "segment": root / "segment.pt", "pretrained": root / "pre.pt"}


def _records() -> dict[str, np.ndarray]:
    """5 s and 10 s records in mV (whole numbers of segments), a lead left flat, and a 7 s one."""
    rng = np.random.default_rng(5)
    waves = {}
    for name, seconds in (("five", 5), ("ten", 10), ("seven", 7)):
        wave = (rng.standard_normal((12, int(seconds * RATE))) * 0.3 + rng.standard_normal((12, 1))).astype(np.float32)
        wave[:, int(5 * RATE):] *= 2.0  # the second segment differs: record and segment statistics differ
        wave[9] = 0.0  # V4 absent: a constant lead
        waves[name] = wave
    return waves


def _segments(wave: np.ndarray) -> np.ndarray:
    """The raw mV segments predict cuts (ModelInput.segments before normalisation)."""
    return np.stack([wave[:, s:s + SEGMENT] for s in consecutive_starts(wave.shape[1], SEGMENT)])


def _wanted(mode: str) -> list[str]:
    return ["five", "ten"] if mode == "record" else ["five", "ten", "seven"]  # record: whole segments only


@pytest.fixture(scope="module")
def exported(checkpoints, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("exported")
    files = {}
    for mode, fmt in (("record", "onnx"), ("record", "torchscript"), ("segment", "onnx")):
        files[mode, fmt] = root / f"{mode}.{'onnx' if fmt == 'onnx' else 'pt'}"
        export(checkpoints[mode], fmt, files[mode, fmt])
    return files


@pytest.mark.parametrize("mode", ["record", "segment"])
def test_onnx_gives_predicts_probabilities(checkpoints, exported, mode):
    predictor = load_predictor(checkpoints[mode])
    session = ort.InferenceSession(str(exported[mode, "onnx"]), providers=["CPUExecutionProvider"])
    for name in _wanted(mode):
        wave = _records()[name]
        probs, per_segment = session.run(["probabilities", "segment_probabilities"], {"segments": _segments(wave)})
        wanted = predictor.probabilities(wave, RATE)
        np.testing.assert_allclose(probs[0], wanted, atol=1e-5)
        combined = per_segment.max(axis=0) if mode == "segment" else per_segment.mean(axis=0)
        np.testing.assert_allclose(CALIBRATION.apply(combined), wanted, atol=1e-5)  # calibrated after combining
        if mode == "record" and name == "ten":  # calibrating each segment before the mean would not be predict's
            assert not np.allclose(CALIBRATION.apply(per_segment).mean(axis=0), wanted, atol=1e-5)
    with pytest.raises(Exception, match="(?i)dimension|shape"):  # the segment length is the file's
        session.run(None, {"segments": np.zeros((1, 12, SEGMENT - 500), np.float32)})


def test_torchscript_runs_without_fairseq(checkpoints, exported, tmp_path):
    records = _records()
    for name in _wanted("record"):
        np.save(tmp_path / f"{name}.npy", _segments(records[name]))
    script = textwrap.dedent(f"""
        import json, sys
        import numpy as np, torch
        extra = {{"fairseq_ecg.json": ""}}
        model = torch.jit.load({str(exported['record', 'torchscript'])!r}, _extra_files=extra)
        out = {{}}
        with torch.no_grad():
            for name in {_wanted('record')!r}:
                out[name] = model(torch.from_numpy(np.load({str(tmp_path)!r} + f"/{{name}}.npy")))[0][0].numpy()
        np.savez({str(tmp_path / 'out.npz')!r}, **out)
        print(extra["fairseq_ecg.json"].decode())  # torch gives the extra file as bytes
        assert "fairseq" not in sys.modules and "fairseq_ecg" not in sys.modules, sorted(sys.modules)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd="/")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout)["classes"] == list(SCORED_CLASSES)
    predictor = load_predictor(checkpoints["record"])
    got = np.load(tmp_path / "out.npz")
    for name in _wanted("record"):
        np.testing.assert_allclose(got[name], predictor.probabilities(records[name], RATE), atol=1e-5)


@pytest.mark.parametrize("key", [("record", "onnx"), ("record", "torchscript"), ("segment", "onnx")])
def test_metadata_round_trips(exported, key):
    meta = read_metadata(exported[key])
    mode = key[0]
    assert meta["format_version"] == 1 and meta["kind"] == "classifier"
    assert meta["sample_rate"] == RATE and meta["segment_samples"] == SEGMENT
    assert meta["normalize"] == mode and meta["aggregate"] == ("mean" if mode == "record" else "max")
    assert meta["leads"] == (["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
                             if mode == "record" else ["I", "II", "V2"])
    assert meta["lead_order"][6:] == ["V1", "V2", "V3", "V4", "V5", "V6"]
    assert meta["classes"] == list(SCORED_CLASSES) and meta["thresholds"] == THRESHOLDS
    assert PlattCalibration.from_state(meta["calibration"]) == CALIBRATION
    assert meta["source"] == f"{mode}.pt"
    if key[1] == "onnx":  # what the README's snippet reads: onnxruntime's view of metadata_props, JSON strings
        custom = ort.InferenceSession(str(exported[key])).get_modelmeta().custom_metadata_map
        assert {k: json.loads(v) for k, v in custom.items()} == meta


def test_the_readme_snippet_gives_predicts_labels(checkpoints, exported):
    text = (REPO / "README.md").read_text()
    block = text[text.index("**Export for deployment**"):]
    code = textwrap.dedent(block[block.index("```python\n") + 10:block.index("   ```\n", block.index("```python"))])
    code = code.replace('"classifier.onnx"', repr(str(exported["record", "onnx"])))
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    predictor = load_predictor(checkpoints["record"])
    for name in _wanted("record"):
        wave = _records()[name]
        probs, labels = scope["classify"](wave)
        wanted = predictor.probabilities(wave, RATE)
        np.testing.assert_allclose(list(probs.values()), wanted, atol=1e-5)
        assert labels == predictor.labels(wanted)
    with pytest.raises(ValueError, match="shorter than one segment"):
        scope["classify"](np.zeros((12, 100), np.float32))


def test_the_encoder_gives_embeds_vectors(checkpoints, tmp_path):
    export(checkpoints["pretrained"], "onnx", tmp_path / "encoder.onnx", kind="encoder")
    meta = read_metadata(tmp_path / "encoder.onnx")
    assert meta["kind"] == "encoder" and meta["classes"] is None and meta["normalize"] == "record"
    loaded = load_model(checkpoints["pretrained"], "encoder")
    session = ort.InferenceSession(str(tmp_path / "encoder.onnx"))
    wave = _records()["ten"]
    (embeddings,) = session.run(["embeddings"], {"segments": _segments(wave)})
    with torch.no_grad():
        wanted = torch.stack([loaded.model.extract_global(s[None])["global"][0] for s in loaded.input.segments(wave)])
    np.testing.assert_allclose(embeddings, wanted.numpy(), atol=1e-5)


def test_errors_are_one_line(checkpoints, tmp_path, capsys, monkeypatch):
    result = run_cli("fairseq-ecg-export", str(checkpoints["pretrained"]), "--format", "onnx",
                     "--out", str(tmp_path / "x.onnx"), check=False)
    lines = [line for line in result.stderr.splitlines() if line.startswith("fairseq-ecg-export")]
    assert result.returncode == 2 and "Traceback" not in result.stderr and len(lines) == 1, result.stderr
    assert "ecg_wav2vec2_classifier" in lines[0] and "--kind encoder" in lines[0] and "pre.pt" in lines[0]
    for args, phrase in ((["--format", "tflite"], "--format tflite: choose one of onnx, torchscript"),
                         (["--format", "onnx", "--kind", "head"], "--kind head: choose one of classifier, encoder")):
        assert export_main([str(checkpoints["record"]), "--out", str(tmp_path / "x.onnx"), *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and phrase in err[0], err
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # not installed
    assert export_main([str(checkpoints["record"]), "--format", "onnx", "--out", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "onnxruntime" in err[0] and "pip install 'fairseq_ecg[export]'" in err[0], err
    assert not (tmp_path / "x.onnx").exists()
    onto_input = [str(checkpoints["record"]), "--format", "torchscript", "--out", str(checkpoints["record"])]
    assert export_main(onto_input) == 2
    assert "would overwrite the input" in capsys.readouterr().err
