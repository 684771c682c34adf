"""Criterions: the pretraining loss and the downstream losses."""
from . import wav2vec2_cmsc  # noqa: F401
from . import arcface  # noqa: F401
from . import ecg_bce  # noqa: F401
