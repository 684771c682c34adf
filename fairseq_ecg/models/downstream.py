"""What the downstream models share: an ``ecg_wav2vec2`` encoder, pretrained or freshly
initialised, pooled into one global vector per segment, with options to freeze it.

Not registered itself; ``ecg_wav2vec2_classifier`` and ``ecg_wav2vec2_identifier`` subclass it.
"""
import logging
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from omegaconf import OmegaConf

from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.models import BaseFairseqModel

from ..errors import EcgError
from ..checkpoints import read_encoder
from .ecg_wav2vec2 import EcgWav2Vec2Config, EcgWav2Vec2Model

logger = logging.getLogger(__name__)

ENCODER_INIT = ChoiceEnum(["pretrained", "random"])
# The encoder settings a fine-tuning run sets itself, over those of the pretraining run.
FINETUNE_REGULARISATION = ("dropout", "attention_dropout", "activation_dropout", "dropout_input", "encoder_layerdrop")
# The CNN feature encoder's gradient multiplier when model.feature_grad_mult is left empty: a
# pretrained CNN stays frozen, as in fairseq-signals' fine-tuning configs
# (examples/w2v_cmsc/config/finetuning/ecg_transformer/diagnosis.yaml: 0.0); a random one trains, as
# in its from-scratch classification config (examples/scratch/ecg_classification/ecg_transformer/
# diagnosis_physionet2021.yaml: 0.1), since a CNN frozen at its random initialisation is no
# baseline. fairseq-signals' from-scratch identification config keeps 0.0; here both tasks follow
# one rule, so the identification baseline's CNN trains too.
FEATURE_GRAD_MULT_BY_INIT = {"pretrained": 0.0, "random": 0.1}


@dataclass
class EcgEncoderConfig(FairseqDataclass):
    model_path: Optional[str] = field(
        default=None,
        metadata={"help": "checkpoint of an ecg_wav2vec2 pretraining run; its architecture (and, with "
                  "init=pretrained, its weights) are used"},
    )
    init: ENCODER_INIT = field(
        default="pretrained",
        metadata={"help": "pretrained: load the weights of model_path; random: same architecture, fresh "
                  "weights (the baseline)"},
    )
    encoder_args: Any = field(
        default=None,
        metadata={"help": "ecg_wav2vec2 settings; filled from model_path, or given for a random encoder "
                  "without a checkpoint"},
    )
    freeze_encoder_updates: int = field(
        default=0,
        metadata={"help": "keep the encoder frozen for this many updates (linear probing, then fine-tuning); "
                  "-1 = frozen throughout"},
    )
    feature_grad_mult: Optional[float] = field(
        default=None,
        metadata={"help": "gradient multiplier of the CNN feature encoder (0 = frozen CNN); empty: by init, "
                  "0.0 for a pretrained CNN (frozen) and 0.1 for init=random (it trains, as fairseq-signals' "
                  "from-scratch runs do); the value used is saved with the checkpoint"},
    )
    final_dropout: float = field(default=0.0, metadata={"help": "dropout before the head"})
    # Fine-tuning's own regularisation, applied over the pretrained architecture (``encoder_args``
    # says only what to build). Defaults: fairseq-signals' fine-tuning values (its YAMLs under
    # examples/{wav2vec2,cmsc,w2v_cmsc}/config/finetuning/ and TransformerFinetuningConfig).
    dropout: float = field(
        default=0.0, metadata={"help": "dropout in the transformer (fairseq-signals' fine-tuning: 0.0; "
                               "pretraining: 0.1)"})
    attention_dropout: float = field(
        default=0.0, metadata={"help": "dropout of the attention weights (fairseq-signals' fine-tuning: 0.0)"})
    activation_dropout: float = field(
        default=0.1, metadata={"help": "dropout after the feed-forward activation (fairseq-signals' fine-tuning: 0.1)"})
    dropout_input: float = field(
        default=0.0, metadata={"help": "dropout of the CNN features entering the transformer (fairseq-signals' "
                               "fine-tuning: 0.0; pretraining: 0.1)"})
    encoder_layerdrop: float = field(
        default=0.0, metadata={"help": "probability of skipping a transformer layer in training (fairseq-signals' "
                               "fine-tuning: 0.0; pretraining: 0.05)"})


class EcgEncoderModel(BaseFairseqModel):
    def __init__(self, cfg: EcgEncoderConfig, encoder: EcgWav2Vec2Model) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        if cfg.feature_grad_mult is None:
            cfg.feature_grad_mult = FEATURE_GRAD_MULT_BY_INIT[str(cfg.init)]
        self.encoder.feature_grad_mult = cfg.feature_grad_mult
        self.final_dropout = torch.nn.Dropout(cfg.final_dropout)
        self.num_updates = 0

    @staticmethod
    def build_encoder(cfg: EcgEncoderConfig) -> EcgWav2Vec2Model:
        """Build the encoder from ``encoder_args`` or ``model_path``; load weights when pretrained.

        ``encoder_args`` is written back into ``cfg`` so that a saved downstream checkpoint
        rebuilds without the pretraining file. The architecture comes from there, the
        regularisation (``FINETUNE_REGULARISATION``) from ``cfg``: a fine-tuning run sets its own,
        as fairseq-signals' ``from_pretrained`` overrides the pretraining run's with the fine-tuning
        config's, instead of inheriting the pretraining's dropouts and layerdrop.
        """
        weights = None
        if cfg.model_path and (cfg.init == "pretrained" or cfg.encoder_args is None):
            encoder_args, weights = read_encoder(cfg.model_path)
            if cfg.encoder_args is None:
                cfg.encoder_args = encoder_args
        if cfg.encoder_args is None:
            raise EcgError("model: give model.model_path (a pretraining checkpoint) or model.encoder_args")
        args = OmegaConf.to_container(cfg.encoder_args) if OmegaConf.is_config(cfg.encoder_args) else dict(cfg.encoder_args)
        args.pop("_name", None)
        known = set(EcgWav2Vec2Config.__dataclass_fields__)
        encoder_cfg = EcgWav2Vec2Config(**{k: v for k, v in args.items() if k in known})
        encoder_cfg.rlm_prob = 0.0  # lead masking belongs to pretraining only
        changed = []
        for name in FINETUNE_REGULARISATION:
            value = float(getattr(cfg, name))
            if value != float(getattr(encoder_cfg, name)):
                changed.append(f"{name}={value:g} (pretraining {float(getattr(encoder_cfg, name)):g})")
            setattr(encoder_cfg, name, value)
        if changed:
            logger.info(f"fine-tuning regularisation: {', '.join(changed)}")
        encoder = EcgWav2Vec2Model(encoder_cfg)
        if weights is not None and cfg.init == "pretrained":
            encoder.load_state_dict(weights, strict=True)
        return encoder

    def set_num_updates(self, num_updates: int) -> None:
        super().set_num_updates(num_updates)
        self.num_updates = num_updates

    @property
    def encoder_frozen(self) -> bool:
        limit = self.cfg.freeze_encoder_updates
        return limit < 0 or self.num_updates < limit

    def embed(self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The encoder's global representation, without gradients while the encoder is frozen.

        Args:
            source: [batch, leads, time]; padding_mask: [batch, time] (True = padding) or None.
        Returns:
            [batch, dim], after ``final_dropout``.
        """
        if self.encoder_frozen:
            with torch.no_grad():
                self.encoder.eval()
                pooled = self.encoder.extract_global(source, padding_mask)["global"]
            if self.training:
                self.encoder.train()
        else:
            pooled = self.encoder.extract_global(source, padding_mask)["global"]
        return self.final_dropout(pooled)
