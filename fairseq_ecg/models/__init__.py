"""Models: the ECG wav2vec 2.0 encoder and the downstream heads built on it."""
from . import ecg_wav2vec2  # noqa: F401
from . import ecg_identifier  # noqa: F401
from . import ecg_classifier  # noqa: F401
