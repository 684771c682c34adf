"""Why the classifier said it, drawn on the ECG: integrated gradients over leads and time, and the
record in the clinical layout with the attribution shaded on the trace (``fairseq-ecg-predict --explain``).

Attribution: integrated gradients (Sundararajan et al. 2017, Captum's implementation) of the
record's class probability as predict reports it (every segment's sigmoid, combined by the
checkpoint's ``aggregate``, then its calibration), with respect to the model's input (the
normalised segments, leads not fed zeroed). All of a record's segments are integrated together,
so the attributions sum to ``p(record) - p(baseline)`` (completeness; the gap is saved).

The baseline is the input blurred (a Gaussian of ``BLUR_SECONDS`` per lead), not zero: the first
CNN layer's group norm makes the model scale-invariant, so its output along the straight path from
zero stays that of the record down to 10% of its amplitude and changes only below 1% (measured on
a tiny classifier: p = 0.608 at 1 and 0.1, 0.658 at 0.01, 0.893 at 0.001, 0.953 at 0); a zero
baseline then explains signal against no signal, concentrated where 64 steps miss it (a 4-37%
completeness gap, closed only at 256), not the waveform's shape. Against the blurred record the
path keeps the record's scale and morphology is what is attributed (blur baselines: Sturmfels et
al. 2020, Xu et al. 2020); the gap is ~1e-7 at 64 steps. A lead the model is not fed is zero in
input and baseline alike and gets exactly zero. The CNN's gradient multiplier (``feature_grad_mult``,
0 for a frozen pretrained CNN: fairseq then runs it without gradients) and a frozen encoder are
training settings, not part of the function, and are lifted while explaining.

The image: 25 mm/s and 10 mm/mV on the usual grid (1 mm and 5 mm lines), 3 x 4 panels of 2.5 s
(I aVR V1 V4 / II aVL V2 V5 / III aVF V3 V6) and a 10 s rhythm strip of lead II; with fewer leads
fed, one strip per fed lead. The 10 s shown are those with the largest total |attribution| (a
longer record's window is named in the title). Red shading: the 0.1 s bins that raise the
probability, blue: those that lower it, opacity by |attribution| relative to the record's largest bin.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from ..data.ecg_dataset import collate_segments
from ..leads import LEADS, parse_leads
from ..manifest import atomic_output
from ..models.ecg_classifier import RecordProbabilities

STEPS = 64  # integration steps (Gauss-Legendre): the completeness gap stays within 1% in the tests
BIN_SECONDS = 0.1  # attribution is summed per lead over bins of this length
BLUR_SECONDS = 0.1  # the baseline's Gaussian smoothing (standard deviation): no QRS, P or T wave detail left
SHOWN_SECONDS = 10.0
PANEL_SECONDS = 2.5
LAYOUT = (("I", "aVR", "V1", "V4"), ("II", "aVL", "V2", "V5"), ("III", "aVF", "V3", "V6"))
RHYTHM_LEAD = "II"
MM_PER_SECOND, MM_PER_MV = 25.0, 10.0


@dataclass
class Explanation:
    """One record's attribution for one class. ``attribution`` [12, bins]: per lead (canonical
    order) and ``BIN_SECONDS`` bin of the record's segments laid end to end; ``gap``: the sum of
    the attribution minus ``probability - baseline`` (integration error)."""

    record: str
    column: str
    probability: float
    threshold: float
    baseline: float
    attribution: np.ndarray
    gap: float


@contextmanager
def _gradients_through(model: torch.nn.Module) -> Iterator[None]:
    encoder = model.encoder  # the downstream model's wav2vec 2.0 encoder (models/downstream.py)
    saved = encoder.feature_grad_mult, model.cfg.freeze_encoder_updates
    encoder.feature_grad_mult, model.cfg.freeze_encoder_updates = 1.0, 0  # 0: never frozen
    try:
        yield
    finally:
        encoder.feature_grad_mult, model.cfg.freeze_encoder_updates = saved


def record_attributions(predictor, segments: Sequence[torch.Tensor], classes: Sequence[int],
                        steps: int = STEPS, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integrated gradients of one record's class probabilities (as ``predictor`` reports them).

    Args:
        predictor: a :class:`fairseq_ecg.predict.Predictor`.
        segments: the record's model input, [12, T_i] each (``ModelInput.segments``).
        classes: the class indices to explain.
    Returns:
        (attributions [classes, 12, sum T_i], probabilities [classes], baseline probabilities [classes]).
    """
    from captum.attr import IntegratedGradients

    model = predictor.model
    device = next(model.parameters()).device
    net_input = {k: v.to(device) for k, v in collate_segments(list(segments)).items()}
    source, padding = net_input["source"], net_input.get("padding_mask")
    count = source.shape[0]
    record = RecordProbabilities(predictor.input.aggregate, predictor.calibration, len(predictor.columns)).to(device)

    def probability(batch: torch.Tensor) -> torch.Tensor:  # [k, S, 12, T] -> [k, classes]
        k = batch.shape[0]
        mask = None if padding is None else padding.repeat(k, 1)
        probs = torch.sigmoid(model(source=batch.reshape(k * count, *batch.shape[2:]), padding_mask=mask)["logits"].float())
        return record(probs.view(k, count, -1))

    explainer = IntegratedGradients(probability)
    inputs, baseline = source.unsqueeze(0), blurred(source, padding, predictor.sample_rate).unsqueeze(0)
    attributions = []
    with _gradients_through(model):
        for k in classes:
            attribution = explainer.attribute(inputs, baselines=baseline, target=int(k), n_steps=steps,
                                              internal_batch_size=max(1, batch_size // count))
            attributions.append(attribution[0])
        with torch.no_grad():
            ends = probability(torch.cat([inputs, baseline])).cpu().numpy()
    lengths = [seg.shape[-1] for seg in segments]
    laid = [torch.cat([a[i, :, :n] for i, n in enumerate(lengths)], dim=-1).detach().cpu().numpy() for a in attributions]
    index = list(classes)
    return np.stack(laid).astype(np.float64), ends[0, index].astype(np.float64), ends[1, index].astype(np.float64)


def blurred(source: torch.Tensor, padding: Optional[torch.Tensor], sample_rate: float) -> torch.Tensor:
    """The baseline: each segment's leads smoothed by a Gaussian of ``BLUR_SECONDS`` (within its
    own samples; padding and leads not fed stay zero)."""
    from scipy.ndimage import gaussian_filter1d

    out = torch.zeros_like(source)
    for i, segment in enumerate(source.detach().cpu().numpy()):
        length = segment.shape[-1] if padding is None else int((~padding[i]).sum())
        out[i, :, :length] = torch.from_numpy(gaussian_filter1d(segment[:, :length], BLUR_SECONDS * sample_rate,
                                                                axis=-1, mode="nearest"))
    return out


def binned(attribution: np.ndarray, sample_rate: float) -> np.ndarray:
    """[12, T] -> [12, bins]: summed per ``BIN_SECONDS`` (the last bin may be shorter)."""
    width = max(1, int(round(BIN_SECONDS * sample_rate)))
    bins = -(-attribution.shape[-1] // width)
    padded = np.zeros((attribution.shape[0], bins * width))
    padded[:, :attribution.shape[-1]] = attribution
    return padded.reshape(attribution.shape[0], bins, width).sum(axis=-1)


def shown_window(attribution: np.ndarray, seconds: float) -> tuple[int, int]:
    """The ``SHOWN_SECONDS`` (in bins) of largest total |attribution|: (first bin, end bin)."""
    per_bin = np.abs(attribution).sum(axis=0)
    width = int(round(SHOWN_SECONDS / BIN_SECONDS))
    if len(per_bin) <= width:
        return 0, len(per_bin)
    totals = np.convolve(per_bin, np.ones(width), "valid")
    start = int(np.argmax(totals))
    return start, start + width


def file_stem(record: str, column: str) -> str:
    """A file name for one record's explanation of one class (no path separators or spaces)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{record}__{column}").strip("_")


def draw(path: Path, wave: np.ndarray, sample_rate: float, explanation: Explanation, fed: np.ndarray,
         record_seconds: Optional[float] = None) -> None:
    """The record ``wave`` [12, T] (mV, the model's rate, the segments' samples) in the clinical
    layout with ``explanation`` shaded (module docstring), written to ``path`` as a PNG;
    ``record_seconds``: the whole record's length, said when the model read less of it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    first, end = shown_window(explanation.attribution, wave.shape[-1] / sample_rate)
    bins_per_panel = int(round(PANEL_SECONDS / BIN_SECONDS))
    scale = max(float(np.abs(explanation.attribution[:, first:end]).max()), 1e-12)
    full = bool(fed.all())
    rows = [[(name, c * bins_per_panel) for c, name in enumerate(row)] for row in LAYOUT] if full else []
    strips = [RHYTHM_LEAD] if full else [name for name, on in zip(LEADS, fed) if on]
    panel_height_mm = 30.0
    width_mm = (end - first) * BIN_SECONDS * MM_PER_SECOND
    height_mm = panel_height_mm * (len(rows) + len(strips))
    title_inches = 0.5
    figure = plt.figure(figsize=(max(width_mm, 100.0) / 25.4 + 0.2, height_mm / 25.4 + title_inches + 0.1))
    axes = figure.add_axes([0.1 / figure.get_figwidth(), 0.1 / figure.get_figheight(), width_mm / 25.4 / figure.get_figwidth(),
                            height_mm / 25.4 / figure.get_figheight()])
    for step, colour, width in ((1.0, "#f4c7c7", 0.3), (5.0, "#e58f8f", 0.6)):  # 1 mm and 5 mm lines
        xs, ys = np.arange(0, width_mm + 1e-9, step), np.arange(0, height_mm + 1e-9, step)
        grid = [[(x, 0), (x, height_mm)] for x in xs] + [[(0, y), (width_mm, y)] for y in ys]
        axes.add_collection(LineCollection(grid, colors=colour, linewidths=width, zorder=0))
    red, blue = np.array(matplotlib.colors.to_rgb("#d62728")), np.array(matplotlib.colors.to_rgb("#1f77b4"))
    samples_per_bin = BIN_SECONDS * sample_rate
    lines = [[(name, offset, bins_per_panel) for name, offset in row] for row in rows]
    lines += [[(name, 0, end - first)] for name in strips]
    for number, line in enumerate(lines):
        middle = height_mm - panel_height_mm * (number + 0.5)
        for name, offset, length in line:
            lead = LEADS.index(name)
            b0, b1 = first + offset, min(first + offset + length, end)
            if b1 <= b0:  # a record shorter than the layout: its later panels stay empty
                continue
            values = explanation.attribution[lead, b0:b1]
            shade = np.concatenate([np.where(values[:, None] > 0, red, blue),
                                    0.6 * np.minimum(1.0, np.abs(values) / scale)[:, None]], axis=1)[None]
            x0 = (b0 - first) * BIN_SECONDS * MM_PER_SECOND
            axes.imshow(shade, extent=(x0, x0 + len(values) * BIN_SECONDS * MM_PER_SECOND, middle - 14, middle + 14),
                        aspect="auto", interpolation="nearest", zorder=1)
            s0, s1 = int(b0 * samples_per_bin), int(min(b1 * samples_per_bin, wave.shape[-1]))
            t = (np.arange(s0, s1) / sample_rate - first * BIN_SECONDS) * MM_PER_SECOND
            axes.plot(t, middle + wave[lead, s0:s1] * MM_PER_MV, color="black", linewidth=0.6, zorder=2)
            axes.text(offset * BIN_SECONDS * MM_PER_SECOND + 1, middle + 10, name, fontsize=7, zorder=3)
    axes.set_xlim(0, width_mm)
    axes.set_ylim(0, height_mm)
    axes.set_aspect("equal")
    axes.axis("off")
    read = wave.shape[-1] / sample_rate
    window = f"{first * BIN_SECONDS:.1f}-{min(end * BIN_SECONDS, read):.1f} s of the {read:.1f} s the model read"
    if record_seconds is not None and record_seconds > read + 1e-6:
        window += f" (record: {record_seconds:.1f} s)"
    figure.suptitle(f"{explanation.record}: {explanation.column}, p = {explanation.probability:.3f} (threshold "
                    f"{explanation.threshold:.3f}); shown: {window}\n25 mm/s, 10 mm/mV; shading: integrated gradients per "
                    "0.1 s against the blurred record (red raises, blue lowers the probability)", fontsize=8,
                    x=0.1 / figure.get_figwidth(), ha="left", y=1 - 0.05 / figure.get_figheight(), va="top")
    with atomic_output(path, mode="wb") as handle:
        figure.savefig(handle, format="png", dpi=100)
    plt.close(figure)


def explain_record(predictor, name: str, wave: np.ndarray, classes: Sequence[int], thresholds: np.ndarray,
                   leads=None, steps: int = STEPS) -> list[Explanation]:
    """Explanations of ``classes`` for one record ``wave`` [12, T] (mV, the model's rate)."""
    segments = predictor.input.segments(wave, leads)
    attributions, probs, baselines = record_attributions(predictor, segments, classes, steps)
    return [Explanation(name, predictor.columns[k], float(p), float(thresholds[k]), float(b),
                        binned(a, predictor.sample_rate), float(a.sum() - (p - b)))
            for k, a, p, b in zip(classes, attributions, probs, baselines)]


def write_explanations(folder: Path, predictor, name: str, wave: np.ndarray, classes: Sequence[int],
                       thresholds: np.ndarray, leads=None, steps: int = STEPS) -> list[Explanation]:
    """``FOLDER/RECORD__CLASS.npy`` (the [12, bins] attribution) and ``.png`` per class."""
    fed = parse_leads(predictor.leads if leads is None else leads)
    fed_mask = np.array([lead in fed for lead in LEADS])
    found = explain_record(predictor, name, wave, classes, thresholds, leads, steps)
    segments_samples = sum(seg.shape[-1] for seg in predictor.input.segments(wave, leads))
    for explanation in found:
        stem = file_stem(name, explanation.column)
        with atomic_output(folder / f"{stem}.npy", mode="wb") as handle:
            np.save(handle, explanation.attribution.astype(np.float32))
        draw(folder / f"{stem}.png", wave[:, :segments_samples], predictor.sample_rate, explanation, fed_mask,
             wave.shape[-1] / predictor.sample_rate)
    return found


def explained_classes(probs: np.ndarray, thresholds: np.ndarray, columns: Sequence[str],
                      wanted: Optional[Sequence[str]] = None) -> list[int]:
    """The classes to explain for one record: ``wanted`` (column names or class codes), else those
    at or above their threshold."""
    if wanted:
        return [k for k, column in enumerate(columns) if column in wanted or column.split(" ")[0] in wanted]
    return [k for k, (p, t) in enumerate(zip(probs, thresholds)) if p >= t]
