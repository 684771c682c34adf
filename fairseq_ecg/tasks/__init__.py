"""Tasks: pretraining, classification and identification on prepared manifests."""
from . import ecg_pretraining  # noqa: F401
from . import ecg_identification  # noqa: F401
from . import ecg_classification  # noqa: F401
