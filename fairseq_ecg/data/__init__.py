"""Datasets: segments of prepared records, ready for fairseq's batching."""
from .ecg_dataset import CUT_MODES, EcgSegmentDataset  # noqa: F401
