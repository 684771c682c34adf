"""Quiet, one-line, interrupt-safe fairseq runs.

fairseq's programs print every epoch what a user cannot act on: torch and NumPy deprecation
warnings from fairseq's own code, ``pin_memory`` without a GPU, the whole configuration as one
10 KB line, the model's module tree and the epoch iterator's bookkeeping. :func:`install` silences
those in ``fairseq-hydra-train``, ``fairseq-train`` and ``fairseq-validate`` (it is called when the
plugin is imported there), keeps fairseq's progress, metrics and checkpoint lines, and turns Ctrl-C
into one line that says how to resume. What Hydra prints before the plugin is imported (its
``version_base`` and schema warnings) is out of the plugin's reach; the README says so.
``FAIRSEQ_ECG_VERBOSE=1`` keeps everything.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import warnings
from typing import Any

FAIRSEQ_PROGRAMS = ("fairseq-hydra-train", "fairseq-train", "fairseq-validate")
VERBOSE_ENV = "FAIRSEQ_ECG_VERBOSE"
MAIN_PID_ENV = "FAIRSEQ_ECG_MAIN_PID"  # set by the first process; its spawned ranks inherit it

# (category, start of the message): raised inside fairseq or torch, not by anything a user set.
SILENCED_WARNINGS = (
    (FutureWarning, r"`torch.nn.utils.weight_norm` is deprecated"),
    (FutureWarning, r"`torch.cuda.amp.autocast\(args...\)` is deprecated"),
    (UserWarning, r"'pin_memory' argument is set as true but no accelerator is found"),
    (UserWarning, r"Converting a tensor with requires_grad=True to a scalar"),
    (UserWarning, r"The given NumPy array is not writable"),
)
CHATTY_LOGGERS = ("fairseq_cli.train", "fairseq_cli.validate", "fairseq.tasks.fairseq_task", "fairseq.trainer",
                  "fairseq.data.iterators")
# fairseq's epoch-iterator bookkeeping, logged at INFO every epoch.
SILENCED_LOG_PHRASES = ("can_reuse_epoch_itr", "reuse_dataloader", "rebuild_batches", "creating new batches",
                        "detected shared parameter", "grouped total_num_itrs", "Start iterating over samples")


def program_name() -> str:
    """The running program as the user typed it (``fairseq-hydra-train``, ...)."""
    return os.path.basename(sys.argv[0] if sys.argv and sys.argv[0] else "python")


def _quiet_record(record: logging.LogRecord) -> bool:
    """Logging filter: drop fairseq's bookkeeping lines and the model's module tree; the whole
    configuration becomes one line (every checkpoint holds it in full)."""
    message = record.msg
    if hasattr(message, "keys") and "task" in message:  # the DictConfig fairseq_cli logs at start
        task, model = message.get("task") or {}, message.get("model") or {}
        record.msg, record.args = ("task %s, leads %s, precision %s, model %s, data %s (the full configuration is "
                                   "saved in each checkpoint)", (task.get("_name"), task.get("leads"),
                                                                 task.get("precision"), model.get("_name"),
                                                                 task.get("data")))
        return True
    if type(message).__module__.startswith("torch.nn") or hasattr(message, "named_parameters"):
        return False
    return not any(phrase in str(message) for phrase in SILENCED_LOG_PHRASES)


def _interrupted(signum: int, frame: Any) -> None:
    """SIGINT: the main process prints one line and every process but a data-loader worker ends
    at once with exit status 130.

    It exits with ``os._exit`` rather than raising: a ``KeyboardInterrupt`` or ``SystemExit`` that
    lands in a ``__del__`` (fairseq frees the last epoch's data-loader iterators during a checkpoint
    save) is swallowed and the run hangs joining its workers. Ending at once is as safe as a kill:
    fairseq writes a checkpoint to ``.tmp`` and renames it, so ``checkpoint_last.pt`` is the last
    complete one, and a log record is flushed when it is written.
    """
    from torch.utils.data import get_worker_info

    if get_worker_info() is not None:
        raise KeyboardInterrupt  # a data-loader worker: torch's worker loop ends it quietly
    if str(os.getpid()) == os.environ.get(MAIN_PID_ENV):
        print(f"\n{program_name()}: interrupted; run the same command to resume (from checkpoint_last.pt)",
              file=sys.stderr, flush=True)
    sys.stdout.flush()
    # Workers end first: a worker's file-descriptor sharer thread that loses its peer mid-handshake
    # prints a ConnectionResetError traceback after we are gone.
    children = multiprocessing.active_children()
    for child in children:
        child.kill()
    for child in children:
        child.join(timeout=10)
    os._exit(130)


def install() -> None:
    """Quiet the running fairseq program; does nothing in other programs or with FAIRSEQ_ECG_VERBOSE=1."""
    if program_name() not in FAIRSEQ_PROGRAMS or os.environ.get(VERBOSE_ENV) == "1":
        return
    for category, message in SILENCED_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name in CHATTY_LOGGERS:
        logger = logging.getLogger(name)
        if _quiet_record not in logger.filters:
            logger.addFilter(_quiet_record)
    os.environ.setdefault(MAIN_PID_ENV, str(os.getpid()))
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        try:
            signal.signal(signal.SIGINT, _interrupted)
        except ValueError:  # imported outside the main thread: Ctrl-C stays Python's
            pass
