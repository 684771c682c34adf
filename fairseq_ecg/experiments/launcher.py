"""Start console commands (``fairseq-hydra-train``, ``fairseq-validate``, ...) without paying the
fairseq import in every process.

A matrix of experiments is a hundred short processes, and each one spends 3.5 to 5 s importing
torch, fairseq and hydra before it does any work. Here a multiprocessing *forkserver* imports them
once; every run is then forked from it: still a fresh process of its own (its own hydra state,
registries as after import, seeds set by fairseq), given exactly the argv of its ``command.sh``,
with stdout and stderr in its log file. So a run started this way and the same ``command.sh`` run
alone compute the same thing (tests/test_experiments.py checks one cell).

The forkserver must not have run a tensor operation before it forks (OpenMP's thread pool does
not survive a fork); importing does not run one, and each child sets its own thread count.
"""
import multiprocessing
import os
import subprocess
import sys
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Optional

# what the forkserver imports once: the plugin (which registers its tasks, models and criterions),
# the programs the runs call, and the runner's modules (multiprocessing runs the parent's main
# module again in each child). Not fairseq_cli.hydra_train: importing it warns (hydra's
# version_base) on the runner's terminal; a run imports it in a moment, warning in its own log.
PRELOAD = ["fairseq_ecg", "fairseq_cli.train", "fairseq_cli.validate", "fairseq_ecg.experiments.runner",
           "fairseq_ecg.preparation", "fairseq_ecg.synth"]  # not a runner's main module itself (runpy warns)


def as_a_fresh_interpreter() -> None:
    """Undo what multiprocessing leaves in a forkserver child that a new interpreter would not
    have: its default start method is "forkserver", so a data loader's workers would start a second
    forkserver (importing the runner again, seconds each) instead of forking as they do in a run
    started from ``command.sh``."""
    multiprocessing.set_start_method(None, force=True)


def console_script(name: str) -> Optional[EntryPoint]:
    """The installed console script ``name`` (e.g. ``fairseq-validate``), not yet imported, or None."""
    return next(iter(entry_points(group="console_scripts", name=name)), None)


def _run_in_child(command: list[str], log: str, env: dict[str, str]) -> None:
    """The forked child: output to the log, the run's environment and threads, then the program's
    own entry point with the command's argv, as ``command.sh`` would call it."""
    as_a_fresh_interpreter()
    handle = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(handle, 1)
    os.dup2(handle, 2)
    os.close(handle)
    os.environ.update(env)
    if threads := env.get("OMP_NUM_THREADS"):
        import torch

        torch.set_num_threads(int(threads))
    entry = console_script(command[0]).load()
    sys.argv = list(command)
    try:
        sys.exit(entry())  # as the console script does: None is 0, a message is printed and is 1
    except Exception:  # as an interpreter does with an uncaught exception (multiprocessing would not)
        sys.excepthook(*sys.exc_info())
        sys.exit(1)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


class PreloadedLauncher:
    """Runs commands as forks of one process that has imported fairseq (see the module docstring).
    Safe to call from several threads at once: each call starts and waits for its own child."""

    def __init__(self, preload: list[str] = PRELOAD):
        self.context = multiprocessing.get_context("forkserver")
        self.context.set_forkserver_preload(preload)

    def __call__(self, command: list[str], log: Path, env: dict[str, str]) -> int:
        if console_script(command[0]) is None:  # not a console script of this environment: exec it
            return subprocess_launcher(command, log, env)
        child = self.context.Process(target=_run_in_child, args=(command, str(log), env), daemon=False)
        child.start()
        child.join()
        return child.exitcode if child.exitcode is not None else 1


def subprocess_launcher(command: list[str], log: Path, env: dict[str, str]) -> int:
    """The plain way: a new interpreter per command (``--launch subprocess``)."""
    program = Path(sys.executable).parent / command[0]
    argv = [str(program) if program.exists() else command[0], *command[1:]]
    with open(log, "a") as handle:
        return subprocess.run(argv, stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, **env},
                              stdin=subprocess.DEVNULL).returncode
