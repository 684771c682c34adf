"""Loading checkpoints safely: tensors and plain containers only, never arbitrary pickled code.

A fairseq checkpoint is a pickle. Every place where the plugin reads one (``model.model_path``,
``fairseq-ecg-embed``, the experiments runner) goes through ``load_checkpoint``, which uses
``torch.load(weights_only=True)``; a file that needs more is refused unless the user opts in for a
file they trust (``FAIRSEQ_ECG_TRUST_CHECKPOINTS=1``); fairseq's own loader, hooked in
``fairseq_ecg.patches.resume``, follows the same rule whatever torch's ``TORCH_FORCE_*`` switches say. What it loads is checked before any model
is built from it (:func:`check_settings`): values are as untrusted as pickles.
"""
from __future__ import annotations

import ast
import math
import os
import pickle
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch

from .data.model_input import CURRENT_FORMAT, FORMAT_VERSION, checkpoint_format, task_state_from_format_1
from .errors import EcgError

TRUST_ENV = "FAIRSEQ_ECG_TRUST_CHECKPOINTS"
ENCODER_MODEL = "ecg_wav2vec2"
DOWNSTREAM_MODELS = ("ecg_wav2vec2_classifier", "ecg_wav2vec2_identifier")


class CheckpointError(EcgError):
    """A checkpoint that cannot be used; the message names the file and what was expected. Hydra
    (``fairseq-hydra-train``) prints it as its one line; the plugin's ``sys.excepthook`` does so
    elsewhere (``fairseq-validate``, see ``fairseq_ecg.patches.resume``)."""


TORCH_SWITCHES = ("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_WEIGHTS_ONLY_LOAD")


def trusted() -> bool:
    """The plugin's opt-in for checkpoints that need more than tensors: the only way to load one."""
    return os.environ.get(TRUST_ENV, "") == "1"


@contextmanager
def only_the_plugins_opt_in() -> Iterator[None]:
    """Within the block, ``torch.load`` without ``weights_only`` (fairseq's loader) is weights-only
    unless :func:`trusted`: torch's own switches (``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` turns
    weights-only off for every call that does not pass it) are set aside and restored after."""
    saved = {name: os.environ.pop(name) for name in TORCH_SWITCHES if name in os.environ}
    if trusted():
        os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        for name in TORCH_SWITCHES:
            os.environ.pop(name, None)
        os.environ.update(saved)


def refusal(path: Path | str, error: Exception) -> CheckpointError:
    """The one-line refusal of a file that needs more than tensors to load (torch's weights-only
    ``UnpicklingError``), naming the file, what it holds and the opt-in."""
    return CheckpointError(f"{path}: refused, the file needs more than tensors to load ({refusal_reason(error)}); "
                           f"if you trust its source, set {TRUST_ENV}=1")


def refusal_reason(error: Exception) -> str:
    """The sentence of torch's weights-only refusal that names what the file holds ("Unsupported
    global: GLOBAL exec ..."), without its terminal colour codes; else its first line."""
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(error)).splitlines() if line.strip()]
    for line in lines:
        if "WeightsUnpickler error:" in line:
            return line.split("WeightsUnpickler error:", 1)[1].split(". ")[0].strip()
    return lines[0] if lines else "unsafe content"


def load_checkpoint(path: Path | str) -> dict:
    """Read a fairseq checkpoint on the CPU, tensors and plain containers only; a config saved by
    an older version is upgraded to the current format (``upgrade_checkpoint``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic[:2] != b"PK" and magic[:1] != b"\x80":  # zip (torch >= 1.6) or a bare pickle
        raise CheckpointError(f"{path}: not a checkpoint (neither a torch zip file nor a pickle)")
    try:
        with only_the_plugins_opt_in():
            state = torch.load(path, map_location="cpu", weights_only=not trusted())
    except pickle.UnpicklingError as error:
        raise refusal(path, error) from None
    except Exception as error:  # truncated zip, bad pickle opcodes, ...: whatever torch raises
        raise CheckpointError(f"{path}: not a readable checkpoint, truncated or corrupt "
                              f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})") from None
    if not isinstance(state, dict) or "model" not in state or not isinstance(state.get("cfg"), dict):
        raise CheckpointError(f"{path}: not a fairseq checkpoint written by fairseq-hydra-train")
    check_settings(state, path)
    return upgrade_checkpoint(state, path)


# Format n -> n + 1: the steps that fill in what a checkpoint of format n lacks. The task state's
# are here; a layer above registers its own part (the encoder its config's, in models/ecg_wav2vec2.py),
# so that this reader imports nothing above it. A new saved setting (a lead-masking mode, a
# calibration, export metadata) raises CURRENT_FORMAT and registers the step that fills it; format 2
# needs none to become 3 (no calibration saved is no calibration).
UPGRADES: dict[int, list[Callable[[dict], None]]] = {1: [task_state_from_format_1]}


def register_upgrade(from_format: int) -> Callable[[Callable[[dict], None]], Callable[[dict], None]]:
    """Decorator: ``step(state)`` is part of upgrading a checkpoint of ``from_format``, in place."""
    def add(step: Callable[[dict], None]) -> Callable[[dict], None]:
        UPGRADES.setdefault(from_format, []).append(step)
        return step
    return add


def upgrade_checkpoint(state: dict, path: Path | str = "the checkpoint") -> dict:
    """Bring a checkpoint written by an older version to the current format, in place, as fairseq's
    ``_upgrade_state_dict`` does for its own configs: the one place that knows older checkpoints.
    Every reader calls it (``load_checkpoint``, and fairseq's own reader as the plugin patches it
    in :mod:`fairseq_ecg.patches.resume`). Returns ``state``."""
    version = checkpoint_format(state)
    if version > CURRENT_FORMAT:
        raise CheckpointError(f"{path}: a checkpoint of format {version}, written by a newer fairseq_ecg (this one reads "
                              f"formats 1-{CURRENT_FORMAT}): upgrade fairseq_ecg")
    while version < CURRENT_FORMAT:
        for step in UPGRADES.get(version, ()):
            step(state)
        version += 1
        state["task_state"][FORMAT_VERSION] = version
    return state


# ---------------------------------------------------------------- settings checked before building

MAX_SEGMENT_SAMPLES = 10_000_000  # 5.5 h at 500 Hz: far beyond any segment, far below the host's memory
MAX_CLASSES = 100_000
_SIZES = ("encoder_embed_dim", "encoder_ffn_embed_dim", "encoder_layers", "encoder_attention_heads", "conv_pos",
          "conv_pos_groups", "input_leads")


def conv_feature_layers(text: Any) -> list[tuple[int, int, int]]:
    """fairseq's ``conv_feature_layers`` string (``[(512, 10, 5)] + [(512, 3, 2)] * 4``) read
    without ``eval``: lists and tuples of integers joined by ``+`` and ``*`` only, so that a
    checkpoint's text cannot run code when fairseq ``eval``s it building the model."""
    def value(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [value(item) for item in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Mult) and isinstance(right, int) and not 0 <= right <= 1000:
                raise ValueError(f"a repeat of {right}")
            return left + right if isinstance(node.op, ast.Add) else left * right
        raise ValueError(f"{type(node).__name__} is not a list of (dim, kernel, stride) integers")

    try:
        layers = value(ast.parse(str(text), mode="eval").body)
    except (SyntaxError, ValueError, TypeError, RecursionError, MemoryError) as error:
        raise ValueError(str(error) or "not a list of (dim, kernel, stride)") from None
    if not isinstance(layers, list) or not layers or not all(
            isinstance(t, tuple) and len(t) == 3 and all(isinstance(n, int) and 1 <= n <= 1_000_000 for n in t)
            for t in layers):
        raise ValueError("not a non-empty list of (dim, kernel, stride) with positive integers")
    return layers


def _positive_number(value: Any) -> Optional[float]:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def is_probability(value: Any) -> bool:
    """A finite number in [0, 1] (a threshold: NaN would silently assign no label)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return False
    return not isinstance(value, bool) and 0.0 <= number <= 1.0


def _positive_int(value: Any) -> Optional[int]:
    return value if type(value) is int and value > 0 else None


def _weights_in(model: Any) -> int:
    return sum(v.numel() for v in model.values() if torch.is_tensor(v)) if isinstance(model, dict) else 0


def settings_problem(state: dict) -> str:
    """What in a checkpoint's settings would crash, mislead or exhaust memory once a model is
    built from them ("setting = value: why"); "" when they are usable. Sizes must also fit the
    weights the file holds: a model that needs more parameters than the file stores is not one
    that was trained (a 2**20-wide encoder would ask for terabytes before any weight is loaded)."""
    cfg = state.get("cfg") or {}
    task, model = dict(cfg.get("task") or {}), dict(cfg.get("model") or {})
    rate = task.get("sample_rate", 500)
    if _positive_number(rate) is None:
        return f"task.sample_rate = {rate!r}: not a positive number of Hz"
    seconds = task.get("segment_seconds", 5.0)
    if _positive_number(seconds) is None:
        return f"task.segment_seconds = {seconds!r}: not a positive number of seconds"
    samples = round(float(rate) * float(seconds))
    if not 1 <= samples <= MAX_SEGMENT_SAMPLES:
        return (f"task.sample_rate x task.segment_seconds = {rate!r} x {seconds!r} = {samples} samples per segment: "
                f"not between 1 and {MAX_SEGMENT_SAMPLES}")
    name = str(model.get("_name", ""))
    encoder, prefix = (model, "model.") if name == ENCODER_MODEL else (model.get("encoder_args"), "model.encoder_args.")
    if name not in (ENCODER_MODEL,) + DOWNSTREAM_MODELS or not isinstance(encoder, dict):
        return ""  # not the plugin's, or without encoder settings: the loaders say so
    for key in _SIZES:
        if key in encoder and _positive_int(encoder[key]) is None:
            return f"{prefix}{key} = {encoder[key]!r}: not a positive integer"
    embed, heads = encoder.get("encoder_embed_dim", 768), encoder.get("encoder_attention_heads", 12)
    groups = encoder.get("conv_pos_groups", 16)
    if embed % heads or embed % groups:
        return (f"{prefix}encoder_embed_dim = {embed}: not divisible by encoder_attention_heads = {heads} and "
                f"conv_pos_groups = {groups}")
    try:
        convs = conv_feature_layers(encoder.get("conv_feature_layers", "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2"))
    except ValueError as error:
        return f"{prefix}conv_feature_layers = {str(encoder.get('conv_feature_layers'))[:80]!r}: {error}"
    ffn, layers = encoder.get("encoder_ffn_embed_dim", 3072), encoder.get("encoder_layers", 12)
    channels, needed = encoder.get("input_leads", 12), 0
    for dim, kernel, _ in convs:
        needed, channels = needed + dim * channels * kernel, dim
    needed += layers * (4 * embed * embed + 2 * embed * ffn) + embed * (embed // groups) * encoder.get("conv_pos", 128)
    classes = model.get("num_classes") if name == "ecg_wav2vec2_classifier" else None
    if classes is not None:
        if _positive_int(classes) is None or classes > MAX_CLASSES:
            return f"model.num_classes = {classes!r}: not an integer between 1 and {MAX_CLASSES}"
        needed += classes * embed
    stored = _weights_in(state.get("model"))
    if needed > stored:
        return (f"{prefix}encoder_embed_dim = {embed}, encoder_ffn_embed_dim = {ffn}, encoder_layers = {layers}: a model "
                f"of at least {needed:,} weights, the file holds {stored:,}")
    task_state = state.get("task_state") or {}
    thresholds = task_state.get("thresholds") if isinstance(task_state, dict) else None
    if thresholds is not None:
        values = list(thresholds) if isinstance(thresholds, (list, tuple)) or torch.is_tensor(thresholds) else [thresholds]
        bad = [v for v in values if not is_probability(v)]
        if bad:
            return f"task_state.thresholds holds {bad[0]!r}: thresholds are probabilities in [0, 1]"
    classes_named = task_state.get("classes") if isinstance(task_state, dict) else None
    if classes_named is not None and not all(isinstance(c, str) for c in classes_named):
        return "task_state.classes: class names must be text"
    return ""


def check_settings(state: dict, path: Path | str) -> None:
    """Refuse, in one line, a checkpoint whose settings no model can be built from (see
    :func:`settings_problem`); every loader of the plugin calls it before building anything."""
    problem = settings_problem(state)
    if problem:
        raise CheckpointError(f"{path}: refused, {' '.join(problem.split())}; the checkpoint was edited or damaged, "
                              "train or import it again")


def model_name(state: dict) -> str:
    return str((state["cfg"].get("model") or {}).get("_name", ""))


def encoder_state(state: dict, path: Path | str, allow_downstream: bool = False) -> tuple[dict, dict]:
    """The ``ecg_wav2vec2`` config and weights held by a checkpoint.

    A pretraining checkpoint holds them directly; a classifier or identifier holds them under
    ``encoder.`` (accepted only with ``allow_downstream``, e.g. for embeddings).
    """
    name = model_name(state)
    if name == ENCODER_MODEL:
        return dict(state["cfg"]["model"]), state["model"]
    if allow_downstream and name in DOWNSTREAM_MODELS:
        encoder_cfg = state["cfg"]["model"].get("encoder_args")
        if not encoder_cfg:
            raise CheckpointError(f"{path}: this {name} checkpoint does not record its encoder settings "
                                  "(encoder_args); fine-tune it again with this version of fairseq_ecg")
        weights = {k[len("encoder."):]: v for k, v in state["model"].items() if k.startswith("encoder.")}
        return dict(encoder_cfg), weights
    expected = ENCODER_MODEL if not allow_downstream else ", ".join((ENCODER_MODEL,) + DOWNSTREAM_MODELS)
    raise CheckpointError(
        f"{path}: a {name or 'unknown'} checkpoint, expected {expected} "
        f"(give the checkpoint of a pretraining run, e.g. checkpoints/pretrain/w2v_cmsc_rlm/checkpoint_best.pt)"
    )


def read_encoder(path: Path | str, allow_downstream: bool = False) -> tuple[dict, dict]:
    return encoder_state(load_checkpoint(path), path, allow_downstream)
