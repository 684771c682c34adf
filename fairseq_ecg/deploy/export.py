"""``fairseq-ecg-export``: a checkpoint's model as one ONNX or TorchScript file that runs without fairseq.

    fairseq-ecg-export CHECKPOINT --format onnx|torchscript --out FILE [--kind classifier|encoder]

Deployment (a hospital's inference server, a device) should not need fairseq, this plugin or the
preprocessing code to get the numbers ``fairseq-ecg-predict`` gives, so the file holds everything
between 12-lead segments in mV and the outputs, and states what it expects in its metadata.

Input ``segments``: [batch, 12, segment_samples] float32 in mV at the checkpoint's sampling rate,
the canonical lead order (I, II, III, aVR, aVL, aVF, V1-V6), an absent lead as zeros: the
consecutive whole segments of ONE record (``probabilities`` and ``record`` normalisation combine
the whole batch). In the graph, as :meth:`~fairseq_ecg.data.model_input.ModelInput.segments` and
predict prepare and combine them:

- the checkpoint's normalisation: ``segment``, each lead of each segment z-scored; ``record``,
  each lead z-scored with the mean and standard deviation over all the batch's segments (the
  record's statistics); ``none``;
- the leads the model was not trained on zeroed;
- classifier (``--kind classifier``, the default): ``probabilities`` [1, classes], the record's
  probabilities: the sigmoid of each segment's logits, combined over the batch by the checkpoint's
  aggregation (mean or max), then its calibration (per fitted class ``sigmoid(a * logit(p) + b)``,
  ``p`` clipped to [1e-6, 1 - 1e-6]); and ``segment_probabilities`` [batch, classes], each
  segment's sigmoid before aggregation and calibration;
- encoder (``--kind encoder``, any plugin checkpoint): ``embeddings`` [batch, dim], each segment's
  global vector as ``fairseq-ecg-embed`` computes it (the record's embedding is their mean).

Where this differs from predict: predict's ``record`` statistics are over the whole record, the
file's over the segments given, so the two agree when the record is a whole number of segments
(predict leaves a shorter tail out of the segments, not out of the statistics); a record shorter
than one segment (which predict runs at its own length) does not fit the file's fixed length.
Resampling to the file's rate is the caller's.

Metadata (ONNX: the model's ``metadata_props``, each value a JSON string; TorchScript: the extra
file ``fairseq_ecg.json``, one JSON object, read with ``torch.jit.load(FILE, _extra_files=...)``):
``format_version``, ``kind``, ``sample_rate``, ``segment_samples``, ``lead_order``, ``leads`` (those
fed), ``normalize``, ``aggregate``, ``classes``, ``thresholds`` (tuned on validation, on the scale of
``probabilities``; null: none, predict uses 0.5), ``calibration`` (PlattCalibration's state or
null), ``inputs``, ``outputs`` and ``source`` (the checkpoint's file name).

Both formats are traced (``torch.jit.trace``, and the TorchScript-based ``torch.onnx.export``,
``dynamo=False``) with a free batch axis and the segment length fixed; fairseq's
``pad_to_multiple`` reads a traced size as a float, which fails under tracing, so the export
replaces it with an equivalent on Python ints for the trace only. The written file is checked
against the model on a batch of another size before it is kept. ONNX needs the ``onnx`` and
``onnxruntime`` packages (``pip install 'fairseq_ecg[export]'``); TorchScript only torch.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import warnings
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoints import CheckpointError, load_checkpoint, model_name
from ..data.model_input import ModelInput
from ..errors import EcgError
from ..inference import run_program
from ..leads import LEADS, NUM_LEADS, lead_mask, parse_leads
from ..manifest import atomic_output
from ..models.ecg_classifier import RecordProbabilities
from ..models.loading import CLASSIFIER, load_model
from ..normalization import normalize_segment
from ..preparation import check_outputs

PROGRAM = "fairseq-ecg-export"
FORMATS = ("onnx", "torchscript")
KINDS = ("classifier", "encoder")
FORMAT_VERSION = 1  # of the exported file's metadata and graph contract
METADATA_FILE = "fairseq_ecg.json"  # the TorchScript extra file holding the metadata
INPUT = "segments"
OUTPUTS = {"classifier": ("probabilities", "segment_probabilities"), "encoder": ("embeddings",)}
EXTRA_HINT = "pip install 'fairseq_ecg[export]'"
ONNX_OPSET = 17
# The written file against the model on the check batch: probabilities and embeddings of float32 graphs
CHECK_TOLERANCE = 1e-4


def _record_moments(segments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-lead mean and population standard deviation [12] in float64 over all segments of the
    batch, the statistics :func:`fairseq_ecg.normalization.record_statistics` takes over a record."""
    wave = segments.double()
    mean = wave.mean(dim=(0, 2))
    centred = wave - mean[None, :, None]
    return mean, (centred * centred).mean(dim=(0, 2)).sqrt()


class _Prepared(torch.nn.Module):
    """Segments in mV -> the model's input: the checkpoint's normalisation, the leads not fed zeroed."""

    def __init__(self, expected: ModelInput) -> None:
        super().__init__()
        self.normalize = expected.normalize
        self.segment_samples = expected.segment_samples
        self.register_buffer("keep", torch.from_numpy(lead_mask(expected.leads).astype(np.float32)).unsqueeze(-1))

    def forward(self, segments: torch.Tensor) -> torch.Tensor:
        # a fixed shape the graph keeps: a batch of another segment length fails here instead of giving numbers
        segments = segments.reshape(segments.shape[0], NUM_LEADS, self.segment_samples)
        if self.normalize == "record":
            moments = _record_moments(segments)
            normalized = normalize_segment(segments, "record", lambda: moments)
        else:
            normalized = normalize_segment(segments, self.normalize)
        return normalized * self.keep


class ExportedClassifier(torch.nn.Module):
    """One record's segments in mV [batch, 12, T] -> (its probabilities [1, classes] as predict gives
    them: aggregated over the batch, calibrated; each segment's sigmoid [batch, classes])."""

    def __init__(self, model: torch.nn.Module, expected: ModelInput) -> None:
        super().__init__()
        self.prepare = _Prepared(expected)
        self.model = model.eval()
        self.record = RecordProbabilities(expected.aggregate, expected.calibration, model.cfg.num_classes)

    def forward(self, segments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        per_segment = torch.sigmoid(self.model(self.prepare(segments))["logits"].float())
        return self.record(per_segment.unsqueeze(0)).float(), per_segment


class ExportedEncoder(torch.nn.Module):
    """Segments in mV [batch, 12, T] -> each segment's global vector [batch, dim], as embed computes it."""

    def __init__(self, encoder: torch.nn.Module, expected: ModelInput) -> None:
        super().__init__()
        self.prepare = _Prepared(expected)
        self.encoder = encoder.eval()

    def forward(self, segments: torch.Tensor) -> torch.Tensor:
        return self.encoder.extract_global(self.prepare(segments))["global"].float()


def metadata(expected: ModelInput, kind: str, source: Path) -> dict:
    """The file's input specification and output meaning (its ``metadata_props`` / ``fairseq_ecg.json``)."""
    classifier = kind == "classifier"
    n = expected.segment_samples
    outputs = ({"probabilities": "[1, classes] the record's (the batch's) probabilities: segments combined by "
                                 "aggregate, then calibration",
                "segment_probabilities": "[batch, classes] each segment's sigmoid, before aggregation and calibration"}
               if classifier else {"embeddings": "[batch, dim] each segment's global vector; a record's is their mean"})
    return {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "sample_rate": float(expected.sample_rate),
        "segment_samples": int(n),
        "lead_order": list(LEADS),
        "leads": list(parse_leads(expected.leads)),
        "normalize": expected.normalize,
        "aggregate": expected.aggregate if classifier else "mean",
        "classes": list(expected.classes) if classifier and expected.classes is not None else None,
        "thresholds": list(expected.thresholds) if classifier and expected.thresholds is not None else None,
        "calibration": expected.calibration.to_state() if classifier and expected.calibration is not None else None,
        "inputs": {INPUT: f"[batch, {NUM_LEADS}, {n}] float32 in mV: one record's consecutive segments, "
                          "leads in lead_order, an absent lead as zeros"},
        "outputs": outputs,
        "source": source.name,
    }


@contextmanager
def _traceable_padding() -> Iterator[None]:
    """fairseq's ``pad_to_multiple`` asks ``(size / multiple).is_integer()``, which a traced size (a
    tensor) cannot answer; the file's segment length is fixed, so the size is a constant there."""
    from fairseq.models.wav2vec import wav2vec2

    def pad_to_multiple(x, multiple, dim=-1, value=0):
        if x is None:
            return None, 0
        remainder = -int(x.shape[dim]) % multiple
        if remainder == 0:
            return x, 0
        return F.pad(x, (0, 0) * (-1 - dim) + (0, remainder), value=value), remainder

    original = wav2vec2.pad_to_multiple
    wav2vec2.pad_to_multiple = pad_to_multiple
    try:
        with warnings.catch_warnings():  # the trace's notes on sizes read as constants, and the legacy exporter's
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        wav2vec2.pad_to_multiple = original


def example_segments(expected: ModelInput, batch: int, seed: int = 0) -> torch.Tensor:
    """A batch of random segments in mV (the trace's and the check's input)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, NUM_LEADS, expected.segment_samples, generator=generator) * 0.3


def _onnx_modules():
    try:
        import onnx
        import onnxruntime
    except ImportError as error:
        raise EcgError(f"--format onnx needs the {error.name or 'onnx'} package: {EXTRA_HINT}") from None
    return onnx, onnxruntime


def onnx_bytes(wrapper: torch.nn.Module, kind: str, info: dict, example: torch.Tensor) -> bytes:
    """The wrapper as an ONNX model (legacy exporter, free batch axis) with ``info`` in its metadata_props."""
    onnx, _ = _onnx_modules()
    buffer = io.BytesIO()
    outputs = OUTPUTS[kind]
    axes = {INPUT: {0: "batch"}, **{name: {0: "batch"} for name in outputs if name != "probabilities"}}
    with _traceable_padding(), torch.no_grad():
        torch.onnx.export(wrapper, (example,), buffer, input_names=[INPUT], output_names=list(outputs),
                          dynamic_axes=axes, opset_version=ONNX_OPSET, dynamo=False)
    proto = onnx.load_from_string(buffer.getvalue())
    del proto.metadata_props[:]
    for key, value in info.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    return proto.SerializeToString()


def torchscript_bytes(wrapper: torch.nn.Module, info: dict, example: torch.Tensor) -> bytes:
    """The wrapper traced (``torch.jit.trace``) with ``info`` as the extra file ``fairseq_ecg.json``."""
    with _traceable_padding(), torch.no_grad():
        traced = torch.jit.trace(wrapper, (example,), check_trace=False)
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer, _extra_files={METADATA_FILE: json.dumps(info)})
    return buffer.getvalue()


def run_file(content: bytes, fmt: str, segments: np.ndarray) -> list[np.ndarray]:
    """The outputs of an exported file (its bytes) on ``segments`` [batch, 12, T] float32."""
    if fmt == "onnx":
        _, onnxruntime = _onnx_modules()
        session = onnxruntime.InferenceSession(content, providers=["CPUExecutionProvider"])
        return session.run(None, {INPUT: segments})
    module = torch.jit.load(io.BytesIO(content))
    with torch.no_grad():
        out = module(torch.from_numpy(segments))
    return [t.numpy() for t in (out if isinstance(out, (tuple, list)) else (out,))]


def read_metadata(path: Path | str) -> dict:
    """The metadata of an exported file, either format (ONNX needs the ``onnx`` package)."""
    path = Path(path)
    if zipfile.is_zipfile(path):  # a TorchScript archive
        extra = {METADATA_FILE: ""}
        torch.jit.load(str(path), _extra_files=extra)
        return json.loads(extra[METADATA_FILE])
    onnx, _ = _onnx_modules()
    return {entry.key: json.loads(entry.value) for entry in onnx.load(str(path)).metadata_props}


def export(checkpoint: Path, fmt: str, out: Path, kind: str = "classifier") -> dict:
    """Write ``checkpoint``'s model as ``fmt`` to ``out``, checked against the model first; returns its metadata.

    Raises:
        EcgError: in one line: an unknown format or kind, a checkpoint that cannot give ``kind``,
            a missing package, a file that does not compute what the model does.
    """
    if fmt not in FORMATS:
        raise EcgError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    if kind not in KINDS:
        raise EcgError(f"--kind {kind}: choose one of {', '.join(KINDS)}")
    if fmt == "onnx":
        _onnx_modules()  # before the work: a missing package is said at once
    try:
        loaded = load_model(checkpoint, kind)
    except CheckpointError as error:
        if kind == "classifier" and model_name(load_checkpoint(checkpoint)) != CLASSIFIER:
            raise CheckpointError(f"{error}; --kind encoder exports its encoder") from None
        raise
    expected = loaded.input
    if loaded.receptive_field > expected.segment_samples:
        raise CheckpointError(f"{checkpoint}: segments of {expected.segment_samples} samples are shorter than the "
                              f"encoder's receptive field of {loaded.receptive_field}")
    wrapper = (ExportedClassifier if kind == "classifier" else ExportedEncoder)(loaded.model, expected).eval()
    info = metadata(expected, kind, Path(checkpoint))
    example = example_segments(expected, 2)
    content = (onnx_bytes(wrapper, kind, info, example) if fmt == "onnx"
               else torchscript_bytes(wrapper, info, example))
    check = example_segments(expected, 3, seed=1)  # another batch size: the batch axis is free
    with torch.no_grad():
        wanted = wrapper(check)
    wanted = [t.numpy() for t in (wanted if isinstance(wanted, tuple) else (wanted,))]
    got = run_file(content, fmt, check.numpy())
    gap = max(float(np.abs(a - b).max()) for a, b in zip(got, wanted))
    if not gap <= CHECK_TOLERANCE:
        raise EcgError(f"{checkpoint}: the exported {fmt} graph differs from the model by {gap:.3g} on a check batch; "
                       f"nothing was written (try the other --format)")
    with atomic_output(out, "wb", clean_stale=True) as handle:
        handle.write(content)
    return info


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="a checkpoint of the plugin (training or fairseq-ecg-import)")
    parser.add_argument("--format", required=True, metavar="{onnx,torchscript}",
                        help="onnx (needs the export extra) or torchscript (a torch.jit archive)")
    parser.add_argument("--out", type=Path, required=True, help="the file to write (.onnx, .pt)")
    parser.add_argument("--kind", default="classifier", metavar="{classifier,encoder}",
                        help="classifier (default): record probabilities; encoder: segment embeddings, from any "
                             "plugin checkpoint")
    parser.set_defaults(batch_size=1)  # run_program checks it; the file's batch axis is free
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_program(PROGRAM, parser, args, lambda say: _command(args, say))


def _command(args: argparse.Namespace, say) -> int:
    check_outputs([args.out], [args.checkpoint])
    info = export(args.checkpoint, args.format, args.out, args.kind)
    what = (f"{len(info['classes'] or [])} classes, calibration {'saved' if info['calibration'] else 'none'}"
            if args.kind == "classifier" else "segment embeddings")
    say(f"{args.checkpoint} -> {args.out} ({args.format}, {args.kind}: {what}; input [batch, {NUM_LEADS}, "
        f"{info['segment_samples']}] in mV at {info['sample_rate']:g} Hz, normalize={info['normalize']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
