"""``fairseq-ecg-import``: fairseq-signals checkpoints (ECG-FM's) -> checkpoints of this plugin.

    fairseq-ecg-import SRC.pt --out DST.pt [--kind auto|pretrained|classifier] [--labels FILE]
                       [--normalize record|segment|none]

SRC is a file or a Hugging Face hub reference, ``hf://OWNER/REPO[@REVISION]/PATH/IN/REPO`` (ECG-FM's:
``hf://wanglab/ecg-fm/mimic_iv_ecg_physionet_pretrained.pt``), downloaded once into the hub's own cache
(``HF_HOME`` / ``HF_HUB_CACHE``; ``HF_HUB_OFFLINE=1`` reads it from there without network); needs the
``hub`` extra (``pip install 'fairseq_ecg[hub]'``).

- a pretraining checkpoint (``wav2vec2``, ``wav2vec2_cmsc``; ECG-FM's pretrained file) becomes an
  ``ecg_wav2vec2`` checkpoint for ``model.model_path=``, ``fairseq-ecg-embed`` and the runner;
- a fine-tuned ``ecg_transformer_classifier`` becomes an ``ecg_wav2vec2_classifier`` checkpoint for
  ``fairseq-validate``, ``fairseq-ecg-embed`` and ``fairseq-ecg-predict``, with its label names
  (``--labels``: ECG-FM's ``label_def.csv`` or one name per line; else ``label_0 ...``).

The layouts differ little: fairseq-signals' encoder is fairseq's wav2vec 2.0 with ``in_d`` input
channels, the positional convolution at model level (``conv_pos.pos_conv.*``; fairseq:
``encoder.pos_conv.*``) with its weight norm stored as ``weight_g``/``weight_v`` or, by newer
torch, ``parametrizations.weight.original0``/``original1``; the classifier nests the encoder under
``encoder.`` and names its head ``proj``. Every weight and every config key is mapped by an
explicit rule; anything else stops the conversion in one line naming the first key that does
not fit, and a summary says what was mapped, renamed, added and dropped.

One difference in computation remains: fairseq-signals adds the positional convolution before
zeroing padded frames, fairseq after, so outputs agree exactly on unpadded segments (every
segment of a record of at least one segment's length, as ECG-FM's 5 s inputs) and differ near
the end of a padded one.

Nothing in the source file runs: it is unpickled with ``weights_only=True`` and exactly the extra
types such files hold (numpy scalars and dtypes, ``argparse.Namespace``).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import logging
import os
import pickle
import re
import sys
import warnings
from argparse import Namespace
from pathlib import Path
from typing import Any, Optional, Sequence, Union
from urllib.parse import unquote

import numpy as np
import torch

from .errors import EcgError
from .checkpoints import ENCODER_MODEL, CheckpointError, refusal_reason
from .data.model_input import ModelInput
from .manifest import EXIT_MACHINE_ERROR, MachineError, atomic_output
from .normalization import MODES, normalize_mode

PRETRAINED_MODELS = ("wav2vec2", "wav2vec2_cmsc")
CLASSIFIER_MODELS = ("ecg_transformer_classifier",)
CLASSIFIER_MODEL = "ecg_wav2vec2_classifier"
HUB_SCHEME = "hf://"
HUB_FORM = "hf://OWNER/REPO/PATH/IN/REPO or hf://OWNER/REPO@REVISION/PATH/IN/REPO"


class ConversionError(CheckpointError):
    """A source checkpoint that does not fit the conversion; one line naming file and key."""


class HubReferenceError(ConversionError):
    """An ``hf://`` source that cannot be resolved to a file; one line naming the reference and the fix."""


def resolve_hub(reference: str) -> tuple[Path, Optional[str]]:
    """The cached file of an ``hf://`` reference and its commit hash (None if the cache path shows none),
    through ``hf_hub_download``: the hub's own cache, token and offline mode, nothing of ours."""
    match = re.fullmatch(r"hf://([\w.-]+)/([\w.-]+)(?:@([^/]+))?/(.+)", reference)
    if not match or match[4].endswith("/"):
        raise HubReferenceError(f"{reference}: not a hub reference; expected {HUB_FORM} (revision: a branch, "
                                "tag or commit hash), e.g. hf://wanglab/ecg-fm/mimic_iv_ecg_physionet_pretrained.pt")
    repo, revision, filename = f"{match[1]}/{match[2]}", unquote(match[3]) if match[3] else None, match[4]
    try:
        import huggingface_hub
        from huggingface_hub import constants, utils
        from huggingface_hub.utils import logging as hub_logging
    except ImportError:
        raise HubReferenceError(f"{reference}: reading a hub reference needs huggingface_hub, which is not installed; "
                                "pip install 'fairseq_ecg[hub]', or download the file and give its path") from None
    if not os.environ.get("HF_HUB_VERBOSITY"):  # its retry warnings, twice with fairseq's root handler: one line
        hub_logging.set_verbosity_error()
    try:
        local = Path(huggingface_hub.hf_hub_download(repo_id=repo, filename=filename, revision=revision))
    except Exception as error:  # huggingface_hub's, or its HTTP library's: any of them is one line
        at = f"revision {revision or 'main'!r}"
        if isinstance(error, utils.RepositoryNotFoundError):  # also private or gated without a token
            fix = f"no repository {repo} readable here; check OWNER/REPO (HF_TOKEN for a private or gated one)"
        elif isinstance(error, utils.RevisionNotFoundError):
            fix = f"{repo} has no {at}; give a branch, tag or commit hash it has"
        elif isinstance(error, (utils.LocalEntryNotFoundError, utils.OfflineModeIsEnabled, ConnectionError)):
            fix = (f"not in the hub cache {constants.HF_HUB_CACHE} and "
                   + ("HF_HUB_OFFLINE=1 forbids downloading; download it once with network (HF_HUB_OFFLINE unset)"
                      if constants.HF_HUB_OFFLINE else "the hub cannot be reached; check the network and retry")
                   + ", or set HF_HUB_CACHE to a cache that holds it")
        elif isinstance(error, utils.EntryNotFoundError):
            fix = f"{repo} has no file {filename} at {at}; check the path against the repository's files"
        else:
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            fix = f"download failed ({type(error).__name__}: {first}); check the reference and the network, and retry"
        raise HubReferenceError(f"{reference}: {fix}") from None
    commit = local.parts[-len(filename.split("/")) - 1]
    return local, commit if re.fullmatch(r"[0-9a-f]{40}", commit) else None


def _allowed_globals() -> list:
    """The non-tensor types found in fairseq-signals checkpoints, and nothing else: numpy scalars
    (e.g. a best validation score) with their dtypes, and the ``argparse.Namespace`` of older ones."""
    scalar = np.core.multiarray.scalar if not hasattr(np, "_core") else np._core.multiarray.scalar
    kinds = (np.float64, np.float32, np.float16, np.int64, np.int32, np.int16, np.int8, np.uint8, np.bool_)
    return [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"), np.dtype, Namespace,
            *(type(np.dtype(kind)) for kind in kinds)]


def _blocked(error: Exception) -> str:
    """The line of torch's refusal that names the blocked global, else its usual reason."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for n, line in enumerate(lines):
        if "GLOBAL" in line:
            return line.rstrip(".")
        if "WeightsUnpickler error:" in line:
            rest = line.split("WeightsUnpickler error:", 1)[1].strip()
            return (rest or (lines[n + 1] if n + 1 < len(lines) else "unsafe content")).rstrip(".")
    return refusal_reason(error)


def load_source(path: Path, name: Optional[str] = None) -> dict:
    """Unpickle a fairseq-signals checkpoint without running anything in it; messages name ``name``
    (a hub reference) if given, else the path."""
    name = name or str(path)
    if not path.is_file():
        raise ConversionError(f"{name}: checkpoint not found")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic[:2] != b"PK" and magic[:1] != b"\x80":
        raise ConversionError(f"{name}: not a checkpoint (neither a torch zip file nor a pickle)")
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ConversionError(f"{name}: refused, the file holds more than weights, plain containers and numpy "
                              f"scalars ({_blocked(error)}); nothing in it was run") from None
    except Exception as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ConversionError(f"{name}: not a readable checkpoint ({type(error).__name__}: {first})") from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise ConversionError(f"{name}: not a fairseq-signals checkpoint (no 'model' state dict)")
    return state


def source_config(state: dict, section: str) -> Optional[dict]:
    """The source's ``cfg.model`` or ``cfg.task`` as a plain dict; older files: their ``args``
    (``_name`` taken from ``arch``); None without either."""
    cfg, args = state.get("cfg"), state.get("args")
    if isinstance(cfg, dict) and isinstance(cfg.get(section), dict):
        return dict(cfg[section])
    return {"_name": getattr(args, "arch", ""), **vars(args)} if isinstance(args, Namespace) else None


# fairseq-signals' defaults, for a key its file lacks (a full hydra config has them all).
SIGNALS_DEFAULTS: dict[str, Any] = {
    "extractor_mode": "default", "conv_feature_layers": "[(256, 2, 2)] * 4", "in_d": 12, "conv_bias": False,
    "feature_grad_mult": 1.0, "conv_pos": 128, "conv_pos_groups": 16, "encoder_layers": 12,
    "encoder_embed_dim": 768, "encoder_ffn_embed_dim": 3072, "encoder_attention_heads": 12,
    "layer_norm_first": False, "dropout": 0.1, "attention_dropout": 0.1, "activation_dropout": 0.0,
    "encoder_layerdrop": 0.0, "dropout_input": 0.0, "dropout_features": 0.0, "apply_mask": False,
    "final_dim": 0, "quantize_targets": False, "quantize_input": False, "same_quantizer": False,
    "target_glu": False, "latent_vars": 320, "latent_groups": 2, "latent_dim": 0, "logit_temp": 0.1,
}
# Same name and meaning in fairseq-signals and in ecg_wav2vec2 (fairseq's Wav2Vec2Config).
SHARED_KEYS = (
    "extractor_mode", "conv_feature_layers", "conv_bias", "feature_grad_mult", "conv_pos", "conv_pos_groups",
    "encoder_layers", "encoder_embed_dim", "encoder_ffn_embed_dim", "encoder_attention_heads",
    "layer_norm_first", "dropout", "attention_dropout", "activation_dropout", "encoder_layerdrop",
    "dropout_input", "dropout_features", "mask_length", "mask_prob", "mask_selection", "mask_other",
    "no_mask_overlap", "mask_min_space", "mask_channel_length", "mask_channel_prob",
    "mask_channel_selection", "mask_channel_other", "no_mask_channel_overlap", "mask_channel_min_space",
    "final_dim", "quantize_targets", "quantize_input", "same_quantizer", "target_glu", "latent_vars",
    "latent_groups", "latent_dim", "logit_temp", "num_negatives", "negatives_from_everywhere",
    "cross_sample_negatives", "codebook_negatives", "latent_temp",
)
RENAMED_KEYS = {"in_d": "input_leads"}
# Keys with no counterpart: settings of fairseq-signals' own training (interpolated task settings,
# multi-GPU gathering, attention maps for saliency, the pretraining file of a fine-tuning run).
DROPPED_KEYS = ("_name", "apply_mask", "saliency", "all_gather", "normalize", "filter", "data", "args",
                "model_path", "no_pretrained_weights")
# ecg_transformer_classifier's own keys -> ecg_wav2vec2_classifier's.
CLASSIFIER_KEYS = {"num_labels": "num_classes", "final_dropout": "final_dropout",
                   "freeze_finetune_updates": "freeze_encoder_updates"}


@dataclasses.dataclass
class Report:
    """What the conversion did, printed as a summary."""

    mapped: int = 0
    renamed: list = dataclasses.field(default_factory=list)
    added: list = dataclasses.field(default_factory=list)
    dropped: list = dataclasses.field(default_factory=list)
    config_renamed: list = dataclasses.field(default_factory=list)
    config_dropped: list = dataclasses.field(default_factory=list)

    def lines(self) -> list[str]:
        def show(items: list, limit: int = 8) -> str:
            text = ", ".join(items[:limit])
            return text + (f", ... ({len(items)} in all)" if len(items) > limit else "")
        out = [f"weights: {self.mapped} mapped unchanged, {len(self.renamed)} renamed, "
               f"{len(self.added)} added, {len(self.dropped)} dropped"]
        added = "added (pretraining-only modules the source lacks, fresh; unused by a classifier or by fine-tuning)"
        for what, items in (("renamed", self.renamed), (added, self.added), ("dropped", self.dropped)):
            if items:
                out.append(f"  {what}: {show(items)}")
        out.append(f"config: renamed {show(self.config_renamed) or 'nothing'}; "
                   f"dropped {show(self.config_dropped) or 'nothing'}")
        return out


def encoder_config(model: dict, path: Path, report: Report, classifier_keys: Sequence[str] = ()) -> dict:
    """ecg_wav2vec2 settings from a fairseq-signals model config; an unknown key fails."""
    args: dict[str, Any] = {"_name": ENCODER_MODEL}
    if unknown := [key for key in model if key not in (*SHARED_KEYS, *RENAMED_KEYS, *DROPPED_KEYS, *classifier_keys)]:
        raise ConversionError(f"{path}: model config key {unknown[0]!r} has no counterpart in {ENCODER_MODEL}; "
                              "this converter does not know that fairseq-signals setting")
    for key in SHARED_KEYS:
        if key in model or key in SIGNALS_DEFAULTS:
            value = model.get(key, SIGNALS_DEFAULTS.get(key))
            args[key] = list(value) if isinstance(value, tuple) else value
    for old, new in RENAMED_KEYS.items():
        args[new] = int(model.get(old, SIGNALS_DEFAULTS[old]))
        report.config_renamed.append(f"{old} -> {new}")
    if not model.get("apply_mask", SIGNALS_DEFAULTS["apply_mask"]):
        args["mask_prob"] = 0.0  # fairseq-signals masks only with apply_mask
    report.config_dropped.extend(k for k in DROPPED_KEYS if k in model and k != "_name")
    args.update(rlm_prob=0.0, rlm_mode="independent")  # fairseq-signals' RandomLeadsMask: every lead independently
    return args


_POS_CONV = "conv_pos.pos_conv.0."
_WEIGHT_NORM = {"weight_g": "g", "weight_v": "v", "parametrizations.weight.original0": "g",
                "parametrizations.weight.original1": "v"}
# Encoder keys that keep their names (fairseq's Wav2Vec2Model names them as fairseq-signals does).
_SAME_PREFIXES = ("feature_extractor.", "layer_norm.", "post_extract_proj.", "encoder.layers.",
                  "encoder.layer_norm.", "quantizer.", "project_q.", "final_proj.", "target_glu.",
                  "input_quantizer.", "project_inp.")
# Pretraining-only parameters that a fine-tuned source may lack; the target model still has them.
_ADDABLE_PREFIXES = ("mask_emb", "project_q.", "final_proj.")


def _target_pos_conv_names(target: dict[str, torch.Tensor], prefix: str = "") -> dict[str, str]:
    """Where the target encoder keeps weight-norm g and v (depends on the torch that builds it)."""
    if prefix + "encoder.pos_conv.0.weight_g" in target:
        return {"g": "encoder.pos_conv.0.weight_g", "v": "encoder.pos_conv.0.weight_v"}
    return {"g": "encoder.pos_conv.0.parametrizations.weight.original0",
            "v": "encoder.pos_conv.0.parametrizations.weight.original1"}


def map_encoder_key(key: str, pos_conv: dict[str, str]) -> Optional[str]:
    """The ecg_wav2vec2 name of a fairseq-signals encoder weight, None if it has no rule."""
    if key == "mask_emb" or key.startswith(_SAME_PREFIXES):
        return key
    if key.startswith(_POS_CONV):
        rest = key[len(_POS_CONV):]
        if rest == "bias":
            return "encoder.pos_conv.0.bias"
        if rest in _WEIGHT_NORM:
            return pos_conv[_WEIGHT_NORM[rest]]
    return None


def convert_weights(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], path: Path,
                    report: Report, classifier: bool) -> dict[str, torch.Tensor]:
    """Map every source weight onto the target model's state dict; fail on the first misfit."""
    pos_conv = _target_pos_conv_names(target, "encoder." if classifier else "")
    out: dict[str, torch.Tensor] = {}
    for key, value in source.items():
        new = None
        if not classifier:
            new = map_encoder_key(key, pos_conv)
        elif key in ("proj.weight", "proj.bias"):
            new = "head." + key.split(".", 1)[1]
        elif key.startswith("encoder."):
            inner = map_encoder_key(key[len("encoder."):], pos_conv)
            new = None if inner is None else "encoder." + inner
        if new is None or new not in target:
            where = "no rule maps it" if new is None else f"it maps to {new}, which the converted model lacks"
            raise ConversionError(f"{path}: weight {key!r} does not fit ({where}); the checkpoint is not a "
                               "fairseq-signals wav2vec2 / ecg_transformer_classifier of a known layout")
        if not torch.is_tensor(value) or tuple(value.shape) != tuple(target[new].shape):
            shape = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
            raise ConversionError(f"{path}: weight {key!r} has shape {shape}, {new} needs "
                               f"{tuple(target[new].shape)} for the settings in the file's config")
        if new in out:
            raise ConversionError(f"{path}: weight {key!r} maps to {new}, which another key already filled")
        out[new] = value.detach().clone().float() if value.is_floating_point() else value.detach().clone()
        if new == key:
            report.mapped += 1
        else:
            report.renamed.append(f"{key} -> {new}")
    for key, value in target.items():
        if key in out:
            continue
        inner = key[len("encoder."):] if classifier and key.startswith("encoder.") else key
        if inner.startswith(_ADDABLE_PREFIXES):
            out[key] = value.clone()
            report.added.append(key)
            continue
        raise ConversionError(f"{path}: the converted model needs weight {key!r}, which the checkpoint does not hold")
    return out


def read_label_names(path: Path, count: int) -> list[str]:
    """Label names in output order: ECG-FM's ``label_def.csv`` (its ``name`` column) or one name per line."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as error:
        raise ConversionError(f"{path}: cannot read the label file ({error.strerror})") from None
    lines = [line for line in text.splitlines() if line.strip()]
    # a CSV with a name column (ECG-FM's label_def.csv, or a one-column CSV whose header is "name")
    if lines and "name" in [c.strip().lower() for c in next(csv.reader([lines[0]]))]:
        rows = list(csv.DictReader(lines))
        key = next(k for k in rows[0] if k.strip().lower() == "name") if rows else "name"
        names = [row[key].strip() for row in rows]
    else:
        names = [line.strip() for line in lines]
    if len(names) != count:
        raise ConversionError(f"{path}: {len(names)} label names, the classifier has {count} outputs; give one name "
                           "per output, in output order (ECG-FM: the label_def.csv published with the weights)")
    if empty := [n for n, name in enumerate(names, start=1) if not name]:
        raise ConversionError(f"{path}: label {empty[0]} has an empty name")
    return names


def full_config(task_name: str, task_args: dict, model_args: dict, criterion: str) -> dict:
    """A complete fairseq config (as a training run saves it) for the converted checkpoint."""
    from omegaconf import OmegaConf

    from fairseq.criterions import CRITERION_DATACLASS_REGISTRY
    from fairseq.dataclass.configs import FairseqConfig
    from fairseq.tasks import TASK_DATACLASS_REGISTRY

    from . import models, tasks  # noqa: F401  (register the plugin's classes)

    root = OmegaConf.structured(FairseqConfig())
    root.task = OmegaConf.merge(OmegaConf.structured(TASK_DATACLASS_REGISTRY[task_name]()), task_args)
    root.criterion = OmegaConf.structured(CRITERION_DATACLASS_REGISTRY[criterion]())
    root.model = OmegaConf.create(model_args)
    root.task._name, root.criterion._name = task_name, criterion
    root.common.cpu = True
    return OmegaConf.to_container(root, resolve=True, enum_to_str=True)


def save_checkpoint(state: dict, out: Path) -> None:
    """Serialise in memory, then write: torch's zip writer turns a refused write into a RuntimeError
    ("unexpected pos 64 vs 0") without its errno, which would hide a full disk."""
    serialised = io.BytesIO()
    torch.save(state, serialised)
    with atomic_output(out, "wb", clean_stale=True) as handle:
        handle.write(serialised.getbuffer())


def convert(src: Union[Path, str], out: Path, kind: str = "auto", labels: Optional[Path] = None,
            normalize: Optional[str] = None, log=print) -> Report:
    """Convert ``src`` (a file or an ``hf://`` reference) and write ``out``; returns what was done.
    Raises ``ConversionError``."""
    from .models.ecg_classifier import EcgClassifierConfig, EcgClassifierModel
    from .models.ecg_wav2vec2 import EcgWav2Vec2Config, EcgWav2Vec2Model

    if str(src).startswith(HUB_SCHEME):  # recorded as the reference and its commit, not its place in the cache
        local, commit = resolve_hub(str(src))
        origin = {"imported_from": str(src), "imported_revision": commit}
        state = load_source(local, str(src))
    else:
        origin = {"imported_from": str(Path(src))}
        state = load_source(Path(src))
    model_cfg = source_config(state, "model")
    if model_cfg is None:
        raise ConversionError(f"{src}: the checkpoint records no model config (cfg.model or args)")
    name = str(model_cfg.get("_name", ""))
    found = "pretrained" if name in PRETRAINED_MODELS else "classifier" if name in CLASSIFIER_MODELS else None
    if found is None:
        raise ConversionError(f"{src}: a {name or 'unnamed'} model; fairseq-ecg-import converts "
                           f"{', '.join(PRETRAINED_MODELS)} (pretrained) and {', '.join(CLASSIFIER_MODELS)}")
    if kind != "auto" and kind != found:
        raise ConversionError(f"{src}: --kind {kind}, but the checkpoint holds a {name} ({found}); "
                           f"leave --kind at auto")
    classifier = found == "classifier"
    report = Report()
    args = encoder_config(model_cfg, src, report, tuple(CLASSIFIER_KEYS) if classifier else ())
    weights = state["model"]
    if classifier:
        # The classifier never uses the pretraining heads; keep only those the file holds.
        for flag, prefix in (("quantize_targets", "quantizer."), ("quantize_input", "input_quantizer."),
                             ("target_glu", "target_glu.")):
            args[flag] = any(k.startswith("encoder." + prefix) for k in weights)
    known = {f.name for f in dataclasses.fields(EcgWav2Vec2Config)}
    try:
        torch.manual_seed(0)
        encoder = EcgWav2Vec2Model(EcgWav2Vec2Config(**{k: v for k, v in args.items() if k in known}))
    except Exception as error:
        raise ConversionError(f"{src}: its model config does not build an {ENCODER_MODEL} "
                           f"({type(error).__name__}: {error})") from None

    task = source_config(state, "task") or {}
    rate = float(task.get("sample_rate") or 500)
    seconds = float(task["sample_size"]) / rate if task.get("sample_size") else 5.0
    if normalize is None:
        normalize = "segment" if normalize_mode(task.get("normalize", False)) == "segment" else "record"
        why = ("its task normalised each sample" if normalize == "segment" else
               "ECG-FM's inputs: each lead z-scored over the whole record, constant leads zero")
        log(f"normalize={normalize} ({why}); give --normalize if the model was trained otherwise")
    normalize = normalize_mode(normalize, allow_auto=False)
    task_args = {"data": "???", "sample_rate": int(rate) if rate.is_integer() else rate,
                 "segment_seconds": seconds, "leads": "12", "normalize": normalize}

    if classifier:
        num = model_cfg.get("num_labels")
        if not isinstance(num, int) or num < 1:
            raise ConversionError(f"{src}: model config key 'num_labels' is {num!r}, expected a positive integer")
        if labels is not None:
            names = read_label_names(labels, num)
        else:
            names = [f"label_{i}" for i in range(num)]
            log(f"no --labels: the {num} outputs are named label_0 ... label_{num - 1} "
                "(fairseq-signals checkpoints store only num_labels; ECG-FM publishes label_def.csv)")
        model_args = {"_name": CLASSIFIER_MODEL, "model_path": None, "init": "pretrained", "encoder_args": args,
                      "num_classes": num, "freeze_encoder_updates": int(model_cfg.get("freeze_finetune_updates", 0)),
                      "feature_grad_mult": float(model_cfg.get("feature_grad_mult", 0.0)),
                      "final_dropout": float(model_cfg.get("final_dropout", 0.0))}
        report.config_renamed.extend(f"{k} -> {v}" for k, v in CLASSIFIER_KEYS.items() if k in model_cfg and k != v)
        target_model = EcgClassifierModel(EcgClassifierConfig(**{k: v for k, v in model_args.items() if k != "_name"}),
                                          encoder)
        converted = convert_weights(weights, target_model.state_dict(), src, report, classifier=True)
        target_model.load_state_dict(converted, strict=True)
        cfg = full_config("ecg_classification", task_args, model_args, "ecg_bce")
    else:
        converted = convert_weights(weights, encoder.state_dict(), src, report, classifier=False)
        encoder.load_state_dict(converted, strict=True)
        cfg = full_config("ecg_pretraining", task_args, args, "wav2vec2_cmsc")
        names = None
    expected = ModelInput(sample_rate=rate, segment_samples=int(round(seconds * rate)), leads=task_args["leads"],
                          normalize=normalize, classes=None if names is None else tuple(names))
    out_state = {
        "args": None, "cfg": cfg, "model": converted, "criterion": None,
        "optimizer_history": [{"criterion_name": "none", "optimizer_name": "none", "lr_scheduler_state": {},
                               "num_updates": 0}],
        "task_state": expected.task_state(), "extra_state": {**origin, "source_model": name},
        "last_optimizer_state": None,
    }
    save_checkpoint(out_state, out)
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fairseq-ecg-import", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help=f"a fairseq-signals checkpoint (.pt), or one on the Hugging Face hub: "
                                       f"{HUB_FORM}")
    parser.add_argument("--out", type=Path, required=True, help="the converted checkpoint to write (.pt)")
    parser.add_argument("--kind", default="auto", choices=("auto", "pretrained", "classifier"),
                        help="what the source must be (default: read from its config)")
    parser.add_argument("--labels", type=Path, default=None,
                        help="label names of a classifier, in output order: ECG-FM's label_def.csv (column "
                             "'name') or a text file with one name per line")
    parser.add_argument("--normalize", default=None, choices=MODES,
                        help="the input normalisation the model was trained with, recorded in the converted "
                             "checkpoint (default: record, ECG-FM's; segment when the source's task normalised)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.filterwarnings("ignore", message=".*weight_norm` is deprecated", category=FutureWarning)
    logging.getLogger().setLevel(logging.WARNING)
    say = lambda text: print(f"fairseq-ecg-import: {text}")  # noqa: E731
    if args.out.is_dir():
        print(f"fairseq-ecg-import: error: --out {args.out} is a folder; name the file to write, e.g. "
              f"{args.out / 'converted.pt'}", file=sys.stderr)
        return 2
    try:
        report = convert(args.source, args.out, args.kind, args.labels, args.normalize, log=say)
    except MachineError as error:  # the disk, not the checkpoint: nothing half-written is kept
        print(f"fairseq-ecg-import: error: {error}", file=sys.stderr)
        return EXIT_MACHINE_ERROR
    except EcgError as error:  # a checkpoint, label table or lead name that cannot be used
        print(f"fairseq-ecg-import: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    for line in report.lines():
        say(line)
    say(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
