"""fairseq_ecg: lead-agnostic self-supervised ECG learning as a ``common.user_dir`` plugin.

Importing the package registers its tasks, models and criterions with fairseq, and makes
fairseq's checkpoint copies kill-safe (see ``fairseq_ecg.resume``).
"""
from . import criterions, models, tasks  # noqa: F401  (registration)
from . import resume  # noqa: F401  (kill-safe checkpoint copies, one-line error for a corrupt checkpoint)

__version__ = "0.1.0"


def print_user_dir() -> None:
    """``fairseq-ecg-userdir``: the folder to give fairseq as ``common.user_dir`` / ``--user-dir``."""
    import os

    print(os.path.dirname(os.path.abspath(__file__)))
