"""fairseq_ecg: lead-agnostic self-supervised ECG learning as a ``common.user_dir`` plugin.

Importing the package registers its tasks, models and criterions with fairseq, makes fairseq's
checkpoint copies kill-safe (see ``fairseq_ecg.patches.resume``) and has a training run check the settings
saved beside the checkpoints it would resume (see ``fairseq_ecg.patches.run_settings``); in fairseq's own
programs it silences what a user cannot act on and makes Ctrl-C one line (``fairseq_ecg.patches.console``).
"""
import logging


def _no_tensorboardx_notice(record: logging.LogRecord) -> bool:
    return "tensorboardX" not in record.getMessage()


# fairseq's text_to_speech task logs "Please install tensorboardX" when fairseq is imported (nothing
# here uses it). The plugin's own commands import this package before fairseq, so they stay quiet;
# fairseq-hydra-train and fairseq-validate import fairseq first and still print it (harmless).
logging.getLogger("fairseq.tasks.text_to_speech").addFilter(_no_tensorboardx_notice)

from . import criterions, models, tasks  # noqa: E402,F401  (registration)
from .patches import resume  # noqa: E402,F401  (kill-safe checkpoint copies, one-line error for a corrupt checkpoint)
from .patches import run_settings  # noqa: E402,F401  (run_settings.json beside checkpoints, stop on other settings)
from .patches.console import install as _quiet_fairseq_programs  # noqa: E402

_quiet_fairseq_programs()  # fairseq-hydra-train / -train / -validate only; see fairseq_ecg.patches.console

__version__ = "0.1.0"


def print_user_dir() -> None:
    """``fairseq-ecg-userdir``: the folder to give fairseq as ``common.user_dir`` / ``--user-dir``."""
    import os

    print(os.path.dirname(os.path.abspath(__file__)))
