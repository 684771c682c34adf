"""bf16 mixed precision: one setting (``task.precision``, ``--precision``) and the contexts that apply it.

``bf16`` runs the model's forward pass under ``torch.autocast(dtype=torch.bfloat16)``: matrix
multiplies and convolutions compute in bf16, everything autocast keeps in fp32 stays there. The
weights (master copies), gradients, optimizer state and checkpoints stay fp32, so a checkpoint does
not know the precision it was trained at and loads in either. The losses, the InfoNCE logits, the
Gumbel quantiser's softmax, the heads' outputs and every metric are computed in fp32 (the parts
that do so open ``full_precision`` or cast with ``.float()``).

This is neither fairseq's ``common.bf16`` (which converts the weights themselves to bf16) nor
``common.amp`` (CUDA fp16 with loss scaling); leave both off.
"""
from __future__ import annotations

import contextlib
import logging
import weakref
from functools import lru_cache
from pathlib import Path
from typing import ContextManager, Union

import torch

from fairseq.dataclass import ChoiceEnum

from ..errors import EcgError

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16")
PRECISION_CHOICES = ChoiceEnum(list(PRECISIONS))
# CPU flags (Linux /proc/cpuinfo) of native bf16 arithmetic: AVX-512 BF16 (Zen 4, Cooper Lake) or
# AMX (Sapphire Rapids and later). Without them torch emulates bf16, which is slower than fp32.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
_warned: set = set()


def check_precision(precision: str) -> str:
    """``precision`` as one of ``PRECISIONS``; a ValueError naming the choices otherwise."""
    value = str(precision).strip().lower()
    if value not in PRECISIONS:
        raise EcgError(f"precision: expected one of {', '.join(PRECISIONS)}, found {precision!r}")
    return value


@lru_cache(maxsize=1)
def cpu_bf16_flags(cpuinfo: str = "/proc/cpuinfo") -> tuple:
    """The native-bf16 flags this CPU reports (empty where none, or where /proc/cpuinfo is absent)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return ()
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[-1].split())
    return tuple(flag for flag in NATIVE_BF16_FLAGS if flag in flags)


def native_bf16(device_type: str) -> bool:
    """Whether ``device_type`` ("cpu", "cuda") computes bf16 natively (else torch emulates it, slowly)."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device_type == "cpu":
        return bool(cpu_bf16_flags())
    return True  # other backends: no known check; trust torch


def _device_type(device: Union[str, torch.device, torch.Tensor, torch.nn.Module]) -> str:
    if isinstance(device, torch.nn.Module):
        parameter = next(device.parameters(), None)
        return parameter.device.type if parameter is not None else "cpu"
    if isinstance(device, torch.Tensor):
        return device.device.type
    return torch.device(device).type


def autocast_context(precision: str, device: Union[str, torch.device, torch.Tensor, torch.nn.Module]) -> ContextManager:
    """The context to run a forward pass in at ``precision`` on ``device`` (a device, a tensor or a
    module on it): nothing for fp32, bf16 autocast for bf16. The first bf16 use on a device
    without native bf16 says so in one line (it works, but slower than fp32)."""
    precision = check_precision(precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    device_type = _device_type(device)
    if device_type not in _warned:
        _warned.add(device_type)
        if not native_bf16(device_type):
            what = "this CPU has neither avx512_bf16 nor amx_bf16" if device_type == "cpu" else \
                f"this {device_type} device has no native bf16"
            logger.warning(f"precision=bf16: {what}, so torch emulates bf16 and training/inference will be "
                           "slow (slower than fp32); use precision=fp32 here")
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16)


def full_precision(device: Union[str, torch.device, torch.Tensor, torch.nn.Module]) -> ContextManager:
    """A region that computes in fp32 even inside a bf16 autocast (losses, logits, cosines); cast
    its inputs with ``.float()``."""
    return torch.autocast(device_type=_device_type(device), enabled=False)


def check_bf16_convolutions(model: torch.nn.Module) -> None:
    """Refuse (ValueError, one line) a model whose grouped 1-d convolutions this torch computes
    wrongly in bf16 on the CPU. torch 2.13's oneDNN kernel returns garbage for 2 to 8 channels
    per group (measured: relative error about 1 instead of 0.003), which is fairseq's positional
    convolution at small ``encoder_embed_dim / conv_pos_groups``; the paper's sizes have 48 or
    more. Each distinct shape is tried once on a small random input, so a fixed torch passes."""
    if model in _checked_models:
        return
    generator = torch.Generator().manual_seed(0)
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Conv1d) or module.groups == 1:
            continue
        parameter = next(module.parameters())
        if parameter.device.type != "cpu":
            continue
        key = (module.in_channels, module.out_channels, module.groups, module.kernel_size[0])
        if key not in _checked_convolutions:
            x = torch.randn(2, module.in_channels, 4 * module.kernel_size[0] + 8, generator=generator)
            w = torch.randn(module.out_channels, module.in_channels // module.groups, module.kernel_size[0],
                            generator=generator)
            exact = torch.nn.functional.conv1d(x, w, groups=module.groups)
            rounded = torch.nn.functional.conv1d(x.bfloat16(), w.bfloat16(), groups=module.groups).float()
            error = float((exact - rounded).abs().mean() / exact.abs().mean().clamp(min=1e-12))
            _checked_convolutions[key] = error < 0.05
        if not _checked_convolutions[key]:
            per_group = module.in_channels // module.groups
            raise EcgError(
                f"precision=bf16: this torch computes {name} (Conv1d, {per_group} channels per group, kernel "
                f"{module.kernel_size[0]}) wrongly in bf16 on the CPU; use precision=fp32, or a model with at least "
                "16 channels per group (model.encoder_embed_dim / model.conv_pos_groups)")
    _checked_models.add(model)


_checked_convolutions: dict = {}  # (in, out, groups, kernel) -> bf16 result right on this CPU
_checked_models: "weakref.WeakSet" = weakref.WeakSet()


class AutocastForward:
    """``model`` as a criterion sees it, with only its forward call under ``autocast_context``: the
    criterion's own arithmetic (the losses) and the backward pass stay outside autocast, in fp32.
    Every other attribute (``get_logits``, ``train()``, ...) is the model's."""

    def __init__(self, model: torch.nn.Module, precision: str) -> None:
        self.model, self.precision = model, check_precision(precision)

    def __call__(self, *args, **kwargs):
        if self.precision == "bf16":
            check_bf16_convolutions(self.model)
        with autocast_context(self.precision, self.model):
            return self.model(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.model, name)
