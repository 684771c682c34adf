"""fairseq-signals checkpoints built from scratch, and a reference forward pass over them.

Written from fairseq-signals' source (Jwoo5/fairseq-signals: models/wav2vec2, ecg_transformer,
classification/ecg_transformer_classifier, modules/conv_feature_extraction,
conv_positional_encoding, transformer_encoder(_layer), multi_head_attention), independently of
the converter: the keys and shapes are listed here as fairseq-signals' modules create them, and the
forward pass follows fairseq-signals' order of operations, in plain tensor functions:

CNN (group norm after the first convolution in ``default`` mode) -> transpose -> layer norm ->
post_extract_proj -> positional convolution at model level (weight norm over dim 2, padding
K//2, the last frame removed for even K, GELU) added -> transformer (input layer norm unless
layer_norm_first; post-LN layers: attention, residual, norm, FFN, residual, norm) -> final layer
norm if layer_norm_first. The classifier pools as fairseq-signals does (sum over time divided by
the count of non-zero entries) and applies ``proj``.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

TINY = {
    "extractor_mode": "default", "conv_feature_layers": "[(24, 4, 2)] * 3", "in_d": 12, "conv_bias": False,
    "feature_grad_mult": 0.1, "conv_pos": 16, "conv_pos_groups": 4, "encoder_layers": 2,
    "encoder_embed_dim": 32, "encoder_ffn_embed_dim": 64, "encoder_attention_heads": 4,
    "layer_norm_first": False, "dropout": 0.1, "attention_dropout": 0.1, "activation_dropout": 0.0,
    "encoder_layerdrop": 0.0, "dropout_input": 0.1, "dropout_features": 0.1, "apply_mask": True,
    "mask_length": 10, "mask_prob": 0.65, "mask_selection": "static", "mask_other": 0.0,
    "no_mask_overlap": False, "mask_min_space": 1, "mask_channel_length": 10, "mask_channel_prob": 0.0,
    "mask_channel_selection": "static", "mask_channel_other": 0.0, "no_mask_channel_overlap": False,
    "mask_channel_min_space": 1, "saliency": False, "all_gather": True, "normalize": False, "filter": False,
    "data": "/data/mimic", "args": None, "logit_temp": 0.1, "quantize_targets": True, "quantize_input": False,
    "same_quantizer": False, "target_glu": False, "latent_vars": 8, "latent_groups": 2, "latent_dim": 0,
    "final_dim": 16, "num_negatives": 100, "negatives_from_everywhere": False, "cross_sample_negatives": 0,
    "codebook_negatives": 0, "latent_temp": [2.0, 0.5, 0.999995],
}


def _encoder_state(cfg: dict, generator: torch.Generator, storage: str, pretraining: bool) -> dict:
    """An ECGTransformer / Wav2Vec2 state dict with fairseq-signals' names and random values."""
    r = lambda *shape: torch.randn(*shape, generator=generator) * 0.3  # noqa: E731
    layers = eval(cfg["conv_feature_layers"])
    state = {}
    in_d = cfg["in_d"]
    for i, (dim, k, _stride) in enumerate(layers):
        state[f"feature_extractor.conv_layers.{i}.0.weight"] = r(dim, in_d, k)
        if cfg["conv_bias"]:
            state[f"feature_extractor.conv_layers.{i}.0.bias"] = r(dim)
        if cfg["extractor_mode"] == "default" and i == 0:  # Fp32GroupNorm after Dropout
            state["feature_extractor.conv_layers.0.2.weight"] = 1 + r(dim)
            state["feature_extractor.conv_layers.0.2.bias"] = r(dim)
        in_d = dim
    embed, e = layers[-1][0], cfg["encoder_embed_dim"]
    state["layer_norm.weight"], state["layer_norm.bias"] = 1 + r(embed), r(embed)
    if embed != e:
        state["post_extract_proj.weight"], state["post_extract_proj.bias"] = r(e, embed), r(e)
    if cfg["apply_mask"]:
        state["mask_emb"] = torch.rand(e, generator=generator)
    k, groups = cfg["conv_pos"], cfg["conv_pos_groups"]
    g, v = 1 + r(1, 1, k).abs(), r(e, e // groups, k)
    if storage == "weight_g":
        state["conv_pos.pos_conv.0.weight_g"], state["conv_pos.pos_conv.0.weight_v"] = g, v
    else:
        state["conv_pos.pos_conv.0.parametrizations.weight.original0"] = g
        state["conv_pos.pos_conv.0.parametrizations.weight.original1"] = v
    state["conv_pos.pos_conv.0.bias"] = r(e)
    f = cfg["encoder_ffn_embed_dim"]
    for n in range(cfg["encoder_layers"]):
        p = f"encoder.layers.{n}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            state[p + f"self_attn.{proj}.weight"] = r(e, e) / math.sqrt(e) * 3
            state[p + f"self_attn.{proj}.bias"] = r(e)
        state[p + "self_attn_layer_norm.weight"], state[p + "self_attn_layer_norm.bias"] = 1 + r(e), r(e)
        state[p + "fc1.weight"], state[p + "fc1.bias"] = r(f, e) / math.sqrt(e) * 3, r(f)
        state[p + "fc2.weight"], state[p + "fc2.bias"] = r(e, f) / math.sqrt(f) * 3, r(e)
        state[p + "final_layer_norm.weight"], state[p + "final_layer_norm.bias"] = 1 + r(e), r(e)
    state["encoder.layer_norm.weight"], state["encoder.layer_norm.bias"] = 1 + r(e), r(e)
    if pretraining:
        final = cfg["final_dim"] or e
        if cfg["quantize_targets"]:
            vq = cfg["latent_dim"] or final
            groups_, num = cfg["latent_groups"], cfg["latent_vars"]
            state["quantizer.vars"] = torch.rand(1, groups_ * num, vq // groups_, generator=generator)
            state["quantizer.weight_proj.weight"] = r(groups_ * num, embed)
            state["quantizer.weight_proj.bias"] = r(groups_ * num)
            state["project_q.weight"], state["project_q.bias"] = r(final, vq), r(final)
        else:
            state["project_q.weight"], state["project_q.bias"] = r(final, embed), r(final)
        state["final_proj.weight"], state["final_proj.bias"] = r(final, e), r(final)
    return state


def signals_checkpoint(path: Path, kind: str = "pretrained", storage: str = "weight_g", seed: int = 0,
                       num_labels: int = 5, **overrides) -> dict:
    """Write a fairseq-signals checkpoint (``wav2vec2_cmsc`` or ``ecg_transformer_classifier``) as
    fairseq-signals' trainer saves one: plain containers, tensors and numpy scalars."""
    generator = torch.Generator().manual_seed(seed)
    cfg = {**TINY, **overrides}
    if kind == "pretrained":
        model_cfg = {"_name": "wav2vec2_cmsc", **cfg}
        weights = _encoder_state(cfg, generator, storage, pretraining=True)
    else:
        # As fairseq-signals fine-tunes: dropouts 0, masking off, pretraining modules removed.
        model_cfg = {"_name": "ecg_transformer_classifier", **cfg, "apply_mask": False, "dropout": 0.0,
                     "attention_dropout": 0.0, "dropout_input": 0.0, "feature_grad_mult": 0.0,
                     "num_labels": num_labels, "final_dropout": 0.0, "model_path": "/ckpt/pretrained.pt",
                     "no_pretrained_weights": False, "freeze_finetune_updates": 0}
        inner = _encoder_state({**cfg, "apply_mask": False}, generator, storage, pretraining=False)
        weights = {f"encoder.{k}": v for k, v in inner.items()}
        weights["proj.weight"] = torch.randn(num_labels, cfg["encoder_embed_dim"], generator=generator) * 0.3
        weights["proj.bias"] = torch.randn(num_labels, generator=generator) * 0.3
    state = {
        "args": None,
        "cfg": {"common": {"seed": 1}, "task": {"_name": "ecg_pretraining" if kind == "pretrained" else
                                                "ecg_classification", "data": "/data/mimic", "sample_rate": 500,
                                                "normalize": False, "filter": False},
                "model": model_cfg, "criterion": {"_name": "wav2vec2_with_cmsc"}},
        "model": weights,
        "criterion": {},
        "optimizer_history": [{"criterion_name": "Wav2Vec2WithCMSCCriterion", "optimizer_name": "Adam",
                               "lr_scheduler_state": {"best": np.float64(0.25)}, "num_updates": 1000}],
        "task_state": {},
        "extra_state": {"epoch": 3, "best": np.float64(0.25), "val_loss": np.float32(1.5)},
        "last_optimizer_state": None,
    }
    torch.save(state, path)
    return state


def _layer_norm(x, weight, bias):
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps=1e-5)


def _attention(x, sd, p, heads):
    """Self-attention [T, B, E] as multi_head_attention_forward with separate projections."""
    t, b, e = x.shape
    d = e // heads
    q = (x @ sd[p + "q_proj.weight"].T + sd[p + "q_proj.bias"]) * d ** -0.5
    k = x @ sd[p + "k_proj.weight"].T + sd[p + "k_proj.bias"]
    v = x @ sd[p + "v_proj.weight"].T + sd[p + "v_proj.bias"]
    split = lambda y: y.reshape(t, b * heads, d).transpose(0, 1)  # noqa: E731
    weights = torch.softmax(split(q) @ split(k).transpose(1, 2), dim=-1)
    out = (weights @ split(v)).transpose(0, 1).reshape(t, b, e)
    return out @ sd[p + "out_proj.weight"].T + sd[p + "out_proj.bias"]


def reference_forward(state: dict, source: torch.Tensor) -> dict:
    """fairseq-signals' eval-mode forward of the checkpoint written by ``signals_checkpoint`` on an
    unpadded batch ``source`` [B, 12, T]: context ``x`` [B, T', E], ``global`` [B, E] and, for a
    classifier, ``logits``."""
    cfg = state["cfg"]["model"]
    classifier = cfg["_name"] == "ecg_transformer_classifier"
    sd = {k[len("encoder."):] if classifier and k.startswith("encoder.") else k: v.double()
          for k, v in state["model"].items()}
    x = source.double()
    for i, (dim, _k, stride) in enumerate(eval(cfg["conv_feature_layers"])):
        x = F.conv1d(x, sd[f"feature_extractor.conv_layers.{i}.0.weight"],
                     sd.get(f"feature_extractor.conv_layers.{i}.0.bias"), stride=stride)
        if cfg["extractor_mode"] == "default" and i == 0:
            x = F.group_norm(x, dim, sd["feature_extractor.conv_layers.0.2.weight"],
                             sd["feature_extractor.conv_layers.0.2.bias"], eps=1e-5)
        x = F.gelu(x)
    x = x.transpose(1, 2)
    x = _layer_norm(x, sd["layer_norm.weight"], sd["layer_norm.bias"])
    if "post_extract_proj.weight" in sd:
        x = x @ sd["post_extract_proj.weight"].T + sd["post_extract_proj.bias"]
    # ConvPositionalEncoding at model level, before the encoder.
    g = sd.get("conv_pos.pos_conv.0.weight_g", sd.get("conv_pos.pos_conv.0.parametrizations.weight.original0"))
    v = sd.get("conv_pos.pos_conv.0.weight_v", sd.get("conv_pos.pos_conv.0.parametrizations.weight.original1"))
    weight = g * v / v.pow(2).sum(dim=(0, 1), keepdim=True).sqrt()
    k = cfg["conv_pos"]
    conv = F.conv1d(x.transpose(1, 2), weight, sd["conv_pos.pos_conv.0.bias"], padding=k // 2,
                    groups=cfg["conv_pos_groups"])
    if k % 2 == 0:
        conv = conv[:, :, :-1]
    x = x + F.gelu(conv).transpose(1, 2)
    # TransformerEncoder
    if not cfg["layer_norm_first"]:
        x = _layer_norm(x, sd["encoder.layer_norm.weight"], sd["encoder.layer_norm.bias"])
    x = x.transpose(0, 1)
    for n in range(cfg["encoder_layers"]):
        p = f"encoder.layers.{n}."
        ln = lambda y, name: _layer_norm(y, sd[p + name + ".weight"], sd[p + name + ".bias"])  # noqa: E731
        ffn = lambda y: F.gelu(y @ sd[p + "fc1.weight"].T + sd[p + "fc1.bias"]) @ sd[p + "fc2.weight"].T + sd[p + "fc2.bias"]  # noqa: E731,E501
        if cfg["layer_norm_first"]:
            x = x + _attention(ln(x, "self_attn_layer_norm"), sd, p + "self_attn.", cfg["encoder_attention_heads"])
            x = x + ffn(ln(x, "final_layer_norm"))
        else:
            x = ln(x + _attention(x, sd, p + "self_attn.", cfg["encoder_attention_heads"]), "self_attn_layer_norm")
            x = ln(x + ffn(x), "final_layer_norm")
    x = x.transpose(0, 1)
    if cfg["layer_norm_first"]:
        x = _layer_norm(x, sd["encoder.layer_norm.weight"], sd["encoder.layer_norm.bias"])
    pooled = x.sum(dim=1) / (x != 0).sum(dim=1)
    out = {"x": x, "global": pooled}
    if classifier:
        out["logits"] = pooled @ sd["proj.weight"].T + sd["proj.bias"]
    return out
