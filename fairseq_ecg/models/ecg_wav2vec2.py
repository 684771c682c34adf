"""``ecg_wav2vec2``: fairseq's wav2vec 2.0 on multi-lead input, with random lead masking.

Only two things differ from ``Wav2Vec2Model``: the first convolution reads ``input_leads`` channels
instead of one, and ``forward`` applies random lead masking (RLM) in training and also returns the
global representation (time-average of the context network's output over unpadded frames) that
CMSC and the downstream heads use.
"""

from dataclasses import dataclass, field
from typing import Optional

import torch
from omegaconf import OmegaConf, open_dict
from torch import nn

from fairseq.data.data_utils import compute_mask_indices
from fairseq.dataclass import ChoiceEnum
from fairseq.models import register_model
from fairseq.models.wav2vec.wav2vec2 import (
    ConvFeatureExtractionModel,
    Wav2Vec2Config,
    Wav2Vec2Model,
)
from fairseq.modules import Fp32GroupNorm, GumbelVectorQuantizer
from fairseq.utils import index_put

from ..checkpoints import register_upgrade
from ..errors import EcgError
from .precision import full_precision

RLM_MODES = ("independent", "redraw_silent")
RLM_MODE_CHOICES = ChoiceEnum(list(RLM_MODES))
# What a checkpoint saved before ``rlm_mode`` existed was trained with: the redraw was the only mode.
RLM_MODE_BEFORE_THE_OPTION = "redraw_silent"


@dataclass
class EcgWav2Vec2Config(Wav2Vec2Config):
    input_leads: int = field(
        default=12, metadata={"help": "input channels of the feature encoder (12 for the canonical order)"}
    )
    rlm_prob: float = field(
        default=0.0,
        metadata={
            "help": "random lead masking: each lead of each training segment is zeroed with this "
            "probability (0 = off, 0.5 = the paper, below 1); never applied in eval mode"
        },
    )
    rlm_mode: RLM_MODE_CHOICES = field(
        default="independent",
        metadata={
            "help": "independent: every present lead is zeroed independently, a segment may go all silent "
            "(the paper and fairseq-signals; a lead is kept with probability 1 - rlm_prob whatever the lead "
            "count); redraw_silent: a draw that silences every present lead is redrawn (a lead is then kept "
            "more often the fewer leads are present: at 0.5, 0.571 with 3 leads and always with 1; checkpoints "
            "saved before this option existed were trained with it and keep it when resumed)"
        },
    )


class MultiLeadFeatureEncoder(ConvFeatureExtractionModel):
    """fairseq's convolutional feature encoder with a multi-channel first layer ([B, leads, T]).

    In ``extractor_mode=default`` the first layer's group norm normalises each channel over the
    whole time axis, so in fairseq (and fairseq-signals, which pads short records in a batch) a
    zero-padded segment's features depend on how much padding its batch gave it: a 4.9 s record's
    embedding moved by 0.05 between alone and beside 5 s segments. Here the statistics are taken
    over each segment's own frames (``valid_samples``, set from the padding mask by
    :class:`EcgWav2Vec2Model` for the call), so a record's outputs do not depend on its batch;
    unpadded inputs are computed exactly as by fairseq.
    """

    def __init__(self, input_leads: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.valid_samples: Optional[torch.Tensor] = None  # [B] unpadded samples per row, during a call
        first = self.conv_layers[0][0]
        replacement = nn.Conv1d(
            input_leads, first.out_channels, first.kernel_size, stride=first.stride,
            bias=first.bias is not None,
        )
        nn.init.kaiming_normal_(replacement.weight)
        self.conv_layers[0][0] = replacement

    @property
    def receptive_field(self) -> int:
        """Samples one output frame sees: a shorter input gives no frame (a convolution error)."""
        need = 1
        for block in reversed(self.conv_layers):
            conv = block[0]
            need = (need - 1) * conv.stride[0] + conv.kernel_size[0]
        return need

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args:
            x: [batch, leads, time] segments.
        Returns:
            [batch, channels, frames] features.
        """
        if x.dim() != 3:
            raise ValueError(f"expected input of shape [batch, leads, time], found {tuple(x.shape)}")
        lengths = self.valid_samples
        for number, block in enumerate(self.conv_layers):
            if number == 0 and lengths is not None and isinstance(block[2] if len(block) > 2 else None, Fp32GroupNorm):
                x = self._first_block_over_own_frames(block, x, lengths)
            else:
                x = block(x)
        return x

    @staticmethod
    def _first_block_over_own_frames(block: nn.Sequential, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """conv, dropout, group norm, GELU, the norm's statistics over each row's unpadded frames
        (the frames fairseq's padding mask keeps: those computed from unpadded samples only)."""
        conv, dropout, norm, activation = block
        y = dropout(conv(x))
        frames = torch.div(lengths - conv.kernel_size[0], conv.stride[0], rounding_mode="floor") + 1
        out = norm(y)
        for row in torch.nonzero(frames < y.shape[-1]).flatten().tolist():
            own = int(frames[row].clamp(min=1))
            out[row, :, :own] = norm(y[row:row + 1, :, :own])[0]
            out[row, :, own:] = 0
        return activation(out)


class Fp32GumbelVectorQuantizer(GumbelVectorQuantizer):
    """fairseq's Gumbel quantiser, computed in fp32 under bf16 autocast too: bf16 code logits
    flip the hard code choice of near ties, which changes the InfoNCE targets and which negatives
    count as positives. Its projection is about 0.2 % of the model's FLOPs."""

    def forward(self, x, produce_targets=False):
        with full_precision(x):
            return super().forward(x.float(), produce_targets)


def random_lead_mask(source: torch.Tensor, prob: float, generator: Optional[torch.Generator] = None,
                     mode: str = "independent") -> torch.Tensor:
    """Keep-mask [batch, leads, 1] that zeroes each present lead of each segment with probability
    ``prob``.

    A lead is "present" when it is not all zeros in the segment (absent leads stay zeros). The
    number of leads comes from ``source``.

    ``independent`` (the default) is the paper's RLM and fairseq-signals' ``RandomLeadsMask``: one
    independent draw per lead, so a present lead is kept with probability ``1 - prob`` whether the
    record has 12 leads or one, and a segment may go all silent (fairseq-signals passes such a
    segment through the model unchanged; so does this model: zeros give finite features, and its
    InfoNCE targets are then all equal, which fairseq's loss masks out as negatives).

    ``redraw_silent`` redraws a draw that silences every present lead: each segment's mask follows
    the conditional distribution of the independent draws given that at least one present lead
    survives. It raises the keep rate of reduced lead sets (at 0.5: 0.508 / 0.571 / 0.667 / 1.0 for
    6 / 3 / 2 / 1 present leads), which makes RLM on a 1-lead record a no-op; kept for runs trained
    with it (the project's default before the paper's draws). The redraw is exact, not a rejection
    loop: the first surviving present lead (in lead order) is drawn with probability proportional
    to ``prob**k * (1 - prob)`` for the k-th present lead, the leads before it are silenced and each
    lead after it survives independently with probability ``1 - prob``. A segment with no present
    lead stays empty in both modes.
    """
    if not 0.0 <= prob < 1.0:
        raise ValueError(f"random lead masking probability must be in [0, 1), found {prob}")
    if mode not in RLM_MODES:
        raise ValueError(f"random lead masking mode must be one of {', '.join(RLM_MODES)}, found {mode!r}")
    present = source.detach().abs().amax(dim=-1) > 0  # [B, L]
    keep = (torch.rand(present.shape, device=source.device, generator=generator) >= prob) & present
    silenced = ~keep.any(dim=1) & present.any(dim=1)
    if mode == "redraw_silent" and silenced.any():
        rows = present[silenced]
        rank = rows.long().cumsum(dim=1) - 1  # position among the segment's present leads
        weights = torch.where(rows, prob ** rank.double() * (1.0 - prob), torch.zeros((), dtype=torch.float64,
                                                                                      device=source.device))
        first = torch.multinomial(weights, 1, generator=generator)  # [S, 1]
        first_rank = rank.gather(1, first)
        later = (torch.rand(rows.shape, device=source.device, generator=generator) >= prob) & rows & (rank > first_rank)
        keep[silenced] = later.scatter(1, first, True)
    return keep.unsqueeze(-1)


def upgrade_saved_model_cfg(model_cfg) -> None:
    """Fill in, in place, what an ``ecg_wav2vec2`` config saved by an older version lacks, with
    the value that version trained with (``rlm_mode``: the redraw), so that such a checkpoint
    rebuilds and resumes as it was trained, not with today's defaults. Other models: untouched."""
    if model_cfg is None or model_cfg.get("_name") != "ecg_wav2vec2":
        return
    if "rlm_mode" not in model_cfg:
        if OmegaConf.is_config(model_cfg):
            with open_dict(model_cfg):
                model_cfg["rlm_mode"] = RLM_MODE_BEFORE_THE_OPTION
        else:
            model_cfg["rlm_mode"] = RLM_MODE_BEFORE_THE_OPTION


@register_upgrade(from_format=1)
def _model_cfg_from_format_1(state: dict) -> None:
    upgrade_saved_model_cfg(state["cfg"].get("model"))


def masked_time_mean(x: torch.Tensor, padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Average [B, T, D] over time, ignoring padded frames (``padding_mask`` True = padding)."""
    if padding_mask is None or not padding_mask.any():
        return x.mean(dim=1)
    weights = (~padding_mask).unsqueeze(-1).to(x.dtype)
    return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


@register_model("ecg_wav2vec2", dataclass=EcgWav2Vec2Config)
class EcgWav2Vec2Model(Wav2Vec2Model):
    def __init__(self, cfg: EcgWav2Vec2Config) -> None:
        super().__init__(cfg)
        if not 0.0 <= cfg.rlm_prob < 1.0:
            raise EcgError(f"model.rlm_prob={cfg.rlm_prob}: the lead masking probability must be in [0, 1)")
        if cfg.rlm_mode not in RLM_MODES:
            raise EcgError(f"model.rlm_mode={cfg.rlm_mode}: choose one of {', '.join(RLM_MODES)}")
        self.rlm_prob = cfg.rlm_prob
        self.rlm_mode = str(cfg.rlm_mode)  # a resumed run may set it to the mode its checkpoint trained with
        self.feature_extractor = MultiLeadFeatureEncoder(
            input_leads=cfg.input_leads,
            conv_layers=eval(cfg.conv_feature_layers),  # fairseq's own config convention
            dropout=0.0,
            mode=cfg.extractor_mode,
            conv_bias=cfg.conv_bias,
        )
        if type(self.quantizer) is GumbelVectorQuantizer:  # built by fairseq: keep it, weights and keys alike
            self.quantizer.__class__ = Fp32GumbelVectorQuantizer

    @classmethod
    def build_model(cls, cfg: EcgWav2Vec2Config, task=None) -> "EcgWav2Vec2Model":
        return cls(cfg)

    def forward(self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None, **kwargs) -> dict:
        """wav2vec 2.0's forward pass over ECG segments (lead masking in training with ``rlm_prob``).

        Args:
            source: [batch, leads, time], an absent lead as zeros.
            padding_mask: [batch, time] bool, True where ``source`` is padding (at its end), or None.
            **kwargs: fairseq's (``mask``, ``features_only``, ...).
        Returns:
            fairseq's outputs (``x``, ``padding_mask`` over frames, the InfoNCE ``x``/``y`` when
            masked, ...) plus ``global`` [batch, dim]: the time-average of the context network's
            output over unpadded frames.
        """
        if source.dim() != 3:
            raise ValueError(f"expected source of shape [batch, leads, time], found {tuple(source.shape)}")
        if self.training and self.rlm_prob > 0:
            source = source * random_lead_mask(source, self.rlm_prob, mode=self.rlm_mode).to(source.dtype)
        captured = {}
        hook = self.encoder.register_forward_hook(lambda _m, _i, out: captured.__setitem__("context", out[0]))
        if padding_mask is not None and padding_mask.any():
            self.feature_extractor.valid_samples = (~padding_mask).sum(-1)
        try:
            result = super().forward(source, padding_mask=padding_mask, **kwargs)
        finally:
            hook.remove()
            self.feature_extractor.valid_samples = None
        result["global"] = masked_time_mean(captured["context"].float(), result.get("padding_mask"))
        return result

    def apply_mask(self, x, padding_mask, mask_indices=None, mask_channel_indices=None):
        """fairseq's time masking, drawn repeatably: its ``compute_mask_indices`` seeds each span
        draw from fresh OS entropy unless given seeds, so two runs with the same ``common.seed``
        masked different frames, and two validations of one run different frames. The seeds now
        come from torch's generator, which fairseq seeds for training and the pretraining task's
        ``valid_step`` keys by the batch for validation."""
        if self.mask_prob > 0 and mask_indices is None:
            batch, frames, _ = x.shape
            seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
            mask_indices = torch.from_numpy(compute_mask_indices(
                (batch, frames), padding_mask, self.mask_prob, self.mask_length, self.mask_selection,
                self.mask_other, min_masks=2, no_overlap=self.no_mask_overlap, min_space=self.mask_min_space,
                require_same_masks=self.cfg.require_same_masks, mask_dropout=self.cfg.mask_dropout,
                seed=seed, epoch=0, indices=torch.arange(batch),
            )).to(x.device)
        # Under bf16 autocast the features are bf16 and fairseq writes the fp32 mask_emb into them
        # in place, which torch refuses; fp32 features take it (the next layer casts to bf16 again).
        x = x.to(self.mask_emb.dtype)
        return super().apply_mask(x, padding_mask, mask_indices, mask_channel_indices)

    def compute_preds(self, x, y, negatives):
        """fairseq's InfoNCE logits (cosine / temperature, -inf where a negative equals the
        target), kept in fp32 under bf16 autocast: bf16 logits of up to 1/logit_temp would carry
        only 2-3 significant digits into the loss.

        The cosine is torch.cosine_similarity's, x.t / max(|x| |t|, 1e-8), computed as one batched
        dot product of x [B, M, D] with its targets [N+1, B, M, D]: torch broadcasts x against every
        negative first, and that took most of a small model's training step (benchmarks/README.md)."""
        with full_precision(x):
            x, y, negatives = x.float(), y.float(), negatives.float()
            neg_is_pos = (y == negatives).all(-1)
            targets = torch.cat([y.unsqueeze(0), negatives], dim=0)
            norms = (x.norm(dim=-1).unsqueeze(0) * targets.norm(dim=-1)).clamp_min(1e-8)
            logits = torch.einsum("bmd,nbmd->nbm", x, targets) / norms / self.logit_temp
            if neg_is_pos.any():
                logits[1:] = index_put(logits[1:], neg_is_pos, float("-inf"))
            return logits

    def extract_global(self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None) -> dict:
        """Unmasked forward pass for downstream use.

        Args:
            source: [batch, leads, time]; padding_mask: [batch, time] (True = padding) or None.
        Returns:
            ``x`` [batch, frames, dim] context, its frame ``padding_mask`` and ``global`` [batch, dim].
        """
        return self.forward(source, padding_mask=padding_mask, mask=False, features_only=True)
