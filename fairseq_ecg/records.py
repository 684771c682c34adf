"""Kept for code that imports ``fairseq_ecg.records``: the readers are :mod:`fairseq_ecg.sources`."""
from .sources import *  # noqa: F401,F403
from .sources import __all__  # noqa: F401
