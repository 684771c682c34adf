"""The one recipe from a checkpoint file to a model ready to run and the input it expects.

``fairseq-ecg-predict``, ``fairseq-ecg-embed`` and the Python API (:class:`fairseq_ecg.predict.Predictor`)
build their model here; fine-tuning builds its encoder with
:meth:`~fairseq_ecg.models.downstream.EcgEncoderModel.build_encoder`, which this recipe uses too, and
``fairseq-validate`` rebuilds through fairseq's own ``load_model_ensemble`` on the same upgraded
checkpoint (:func:`fairseq_ecg.checkpoints.upgrade_checkpoint`). What the model expects as input
comes from :class:`~fairseq_ecg.data.model_input.ModelInput`, never from defaults of the caller's.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from ..checkpoints import CheckpointError, encoder_state, load_checkpoint, model_name
from ..data.model_input import ModelInput
from .ecg_wav2vec2 import MultiLeadFeatureEncoder

CLASSIFIER = "ecg_wav2vec2_classifier"


@dataclass
class LoadedModel:
    """A checkpoint's model in eval mode, on the CPU, with what it expects as input."""

    model: torch.nn.Module  # an EcgClassifierModel, or an EcgWav2Vec2Model encoder
    input: ModelInput
    path: Path

    @property
    def receptive_field(self) -> int:
        """Samples of the CNN's receptive field: a shorter record gives no frame to encode."""
        return next(m.receptive_field for m in self.model.modules() if isinstance(m, MultiLeadFeatureEncoder))


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def load_model(path: Path | str, part: Literal["classifier", "encoder"] = "classifier") -> LoadedModel:
    """Read a checkpoint (safely, upgraded) and build its model.

    Args:
        path: a checkpoint written by this project's training or ``fairseq-ecg-import``.
        part: ``classifier``, the whole ``ecg_wav2vec2_classifier`` (other models are refused);
            ``encoder``, the ``ecg_wav2vec2`` encoder of any plugin checkpoint (pretraining,
            classifier or identifier).
    Returns:
        the model in eval mode and its :class:`ModelInput`.
    Raises:
        CheckpointError: in one line naming the file, for a checkpoint that cannot give ``part``.
    """
    from .ecg_classifier import EcgClassifierConfig, EcgClassifierModel
    from .downstream import EcgEncoderConfig, EcgEncoderModel

    path = Path(path)
    state = load_checkpoint(path)
    if part == "classifier":
        name = model_name(state)
        if name != CLASSIFIER:
            raise CheckpointError(f"{path}: a {name or 'unknown'} checkpoint; predictions need an {CLASSIFIER} "
                                  "(fine-tune one, or convert a fairseq-signals classifier with fairseq-ecg-import)")
        cfg = dict(state["cfg"]["model"])
        if not cfg.get("encoder_args"):
            raise CheckpointError(f"{path}: the checkpoint does not record its encoder settings (model.encoder_args)")
        cfg["model_path"] = None  # the architecture is in encoder_args; the pretraining file is not needed
        known = set(EcgClassifierConfig.__dataclass_fields__)
        model = EcgClassifierModel.build_model(EcgClassifierConfig(**{k: v for k, v in cfg.items() if k in known}))
        weights = state["model"]
    else:
        try:
            args, weights = encoder_state(state, path, allow_downstream=True)
        except TypeError:  # a downstream checkpoint saved before encoder_args was written back
            raise CheckpointError(f"{path}: the checkpoint does not record its encoder settings "
                                  "(model.encoder_args)") from None
        if not args or not weights:
            raise CheckpointError(f"{path}: the checkpoint holds no encoder settings or weights")
        model = EcgEncoderModel.build_encoder(EcgEncoderConfig(encoder_args=args, init="random"))
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{path}: weights do not fit its settings ({_first_line(error)})") from None
    return LoadedModel(model=model.eval(), input=ModelInput.of_checkpoint(state), path=path)
