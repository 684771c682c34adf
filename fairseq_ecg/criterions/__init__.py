"""Criterions: the pretraining loss and the downstream losses."""
from . import wav2vec2_cmsc  # noqa: F401
