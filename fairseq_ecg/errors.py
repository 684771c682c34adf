"""The one base class of the plugin's own errors.

An :class:`EcgError` is a mistake in what the user gave (a manifest, a lead name, an archive, a
checkpoint, a run's settings) and its message names the file and the fix, so every program prints
it as one line: the plugin's programs catch it (``PROGRAM: error: ...``), ``fairseq-validate`` and
``fairseq-train`` through the ``sys.excepthook`` the plugin installs (``fairseq_ecg.patches.resume``), and
Hydra (``fairseq-hydra-train``) prints a ``CompactHydraException`` as its message alone. Anything
else is a bug and keeps its traceback. It stays a ``ValueError`` for callers that caught that.
"""
from hydra.errors import CompactHydraException


class EcgError(ValueError, CompactHydraException):
    """A user's input the plugin cannot use; the message is one line naming the file and the fix."""
