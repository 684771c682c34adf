"""Tasks: pretraining, classification and identification on prepared manifests."""
from . import ecg_pretraining  # noqa: F401
