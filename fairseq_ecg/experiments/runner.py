"""``fairseq-ecg-experiments``: the paper's comparisons as a resumable matrix of ordinary runs.

Every run is a plain ``fairseq-hydra-train`` or ``fairseq-validate`` call in its own folder under
``RESULTS/runs/``, with its exact command line saved in ``command.sh`` and its output in ``log.txt``.
A run that finished is not repeated when the command is run again, so a killed matrix resumes where
it stopped, and subsets (``--experiments``, ``--variants``, ``--leads``, ``--seeds``) can be run on
different machines or as cluster jobs into the same RESULTS folder. "Finished" is checked, not
trusted: its ``done`` marker records the command and the markers of the runs it was built on, and
the outputs its successors read (``checkpoint_best.pt``, ``metrics.json``) must exist. A run whose
command changed is refused (``--rerun-changed`` re-runs it); a run built on one that ran again is
re-run.

Experiments (docs/method.md): 1 = pretrain on 12 leads, fine-tune/evaluate on each lead set; 2 = pretrain
and fine-tune on the same reduced lead set; 3 = each variant with and without RLM, plus a sweep of
the RLM probability. ``random_init`` (same architecture, fresh weights) is the baseline row.
"""
import argparse
import functools
import hashlib
import json
import logging
import math
import os
import re
import shlex
import sys
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

from omegaconf import OmegaConf

from .launcher import PreloadedLauncher, subprocess_launcher
from ..leads import lead_list, lead_set_name, parse_leads
from ..models.downstream import FEATURE_GRAD_MULT_BY_INIT
from ..manifest import ManifestError, read_manifest
from ..prepared import GALLERY, PRETRAIN, PROBE, TASK_FOLDERS, held_out, identify_test_missing
from ..spreadsheet import csv_writer

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # fairseq_ecg: the user dir and, installed, examples/
# The YAML configs: an installed package carries a copy (setup.py's build_py); a clone or editable
# install has only the repository's top-level examples/, which fairseq-hydra-train is pointed at.
EXAMPLES_PLACES = (PACKAGE_DIR / "examples", PACKAGE_DIR.parent / "examples")
EXAMPLES_DIR = next((place for place in EXAMPLES_PLACES if place.is_dir()), EXAMPLES_PLACES[0])
RESULT_COLUMNS = ("experiment", "variant", "pretrain_leads", "finetune_leads", "task", "metric", "value", "seed")
BASELINE = "random_init"
METRICS = {"classification": ("challenge_metric", "auroc", "f1", "ece", "ece_uncalibrated", "brier", "brier_uncalibrated"),
           "identification": ("top1_accuracy", "eer")}

# What each preset adds to the YAMLs' own settings. "demo" trains tiny models in minutes on a CPU.
PRESETS = {
    "demo": {
        # lr 1e-3 (the tiny size's) warmed up over the first 10% of the updates, then decayed linearly
        # to 0 (chosen on valid at 250 updates: the 12-lead linear probe of W2V rose from 0.65 to 0.69
        # with it); 250 updates, the length those settings were chosen at, fit the 20 minutes since
        # the runner forks its runs (fairseq_ecg.experiments.launcher)
        "pretrain": ["+size=tiny", "optimization.max_epoch=0", "optimization.max_update=250",
                     "dataset.batch_size=32", "lr_scheduler._name=polynomial_decay", "lr_scheduler.warmup_updates=25",
                     "checkpoint.no_epoch_checkpoints=true"],
        # max_update=0: the tiny size's 100-update limit off, these runs are measured in epochs;
        # per-class thresholds tuned on valid for the Challenge metric and F1 (0.5 is never crossed here)
        "classification": ["+size=tiny", "optimization.max_epoch=10", "optimization.max_update=0", "dataset.batch_size=16",
                           "dataset.validate_interval=5", "checkpoint.save_interval=5",
                           "checkpoint.best_checkpoint_metric=auroc", "checkpoint.no_epoch_checkpoints=true",
                           "task.tune_thresholds=true",
                           # calibration fitted on valid, so that the report shows ECE and Brier before and after
                           # (on the demo it raises the test ECE: tasks/ecg_classification.py)
                           "task.calibration=valid"],
        # ArcFace s=30, m=0.3 at the tiny size instead of the reference's 192 and 1.0 (the YAML's): chosen on
        # valid, W2V+CMSC+RLM after 2 epochs, 2 seeds: EER 0.196 / 0.339 at 12 / 1 leads against 0.250 / 0.371
        # (top-1 0.411 / 0.107 against 0.393 / 0.101); 32 and 0.5 lay between (0.192 / 0.342)
        "identification": ["+size=tiny", "optimization.max_epoch=2", "optimization.max_update=0", "dataset.batch_size=32",
                           "dataset.validate_interval=2", "checkpoint.save_interval=2",
                           "checkpoint.no_epoch_checkpoints=true", "criterion.scale=30", "criterion.margin=0.3"],
        "linear_probe": ["optimization.lr=[0.01]"],
        "variants": ["w2v", "w2v_cmsc_rlm"],
        "leads": ["12", "6", "3", "2", "1"],
        "seeds": 2,
        "pretrain_seeds": 2,  # each fine-tuning seed has its own pretraining: the spread includes both
        "tasks": ["classification", "identification"],
        # the linear probe and identification on the extreme lead sets only (time: each cell is two processes)
        "mode_leads": {"classification_linear_probe": ["12", "1"], "identification": ["12", "1"]},
        # experiment 3 for one variant, reusing experiment 1's runs: W2V+CMSC with and without RLM,
        # fine-tuned classification only (time: it adds 2 pretrainings and 10 fine-tunings)
        "experiments": [1, 3],
        "experiment3": {"variants": ["w2v_cmsc_rlm"], "tasks": ["classification"], "linear_probe": False},
    },
    "paper": {
        "pretrain": [], "classification": [], "identification": [],
        "variants": ["w2v", "cmsc", "w2v_cmsc", "w2v_rlm", "cmsc_rlm", "w2v_cmsc_rlm"],
        "leads": ["12", "6", "3", "2", "1"],
        "seeds": 3,
        "pretrain_seeds": 3,
        "tasks": ["classification", "identification"],
    },
}
CHECKPOINT = "checkpoint_best.pt"  # what a fine-tuning or evaluation reads from the run before it
METRICS_FILE = "metrics.json"  # what the report reads from an evaluation
DONE = "done"  # a finished run's marker (mark_done)
METRIC_PATTERN = re.compile(r"\| ([a-z0-9_]+) ([-+]?[0-9.]+(?:e[-+]?\d+)?)")  # fairseq-validate's "| auroc 0.81"
# Rough seconds per training update on a 2-core CPU, by model size, for --dry-run's estimate: the
# tiny size from the demo (17.7 minutes for about 9,050 updates, runs forked by the launcher,
# evaluations included), the paper's size from a measured ~2 minutes per update (batch 64, CMSC pairs).
SECONDS_PER_UPDATE_CPU = {"tiny": 0.12, "paper": 120.0}
FINETUNE_DATA = {task: TASK_FOLDERS[f"ecg_{task}"] for task in ("classification", "identification")}


@dataclass
class Run:
    """One process of the matrix: its folder, command, the runs it needs, and what it reports."""

    name: str
    command: list[str]
    after: list[str] = field(default_factory=list)
    labels: Optional[dict] = None  # set for evaluation runs: the results.csv columns but metric/value
    # the same run reported again under other labels: experiment 3 shares experiment 1's runs
    also: list[dict] = field(default_factory=list)
    # files (in its folder) that the runs after it read: it is finished only when they exist
    outputs: tuple[str, ...] = ()
    notice: Optional[str] = None  # what the runner changed in the command, said once before running

    def folder(self, out: Path) -> Path:
        return out / "runs" / self.name


@dataclass(frozen=True)
class Settings:
    data: Path
    out: Path
    preset: str
    experiments: tuple[int, ...]
    variants: tuple[str, ...]
    leads: tuple[str, ...]
    rlm_probs: tuple[float, ...]
    seeds: int
    pretrain_seeds: int
    tasks: tuple[str, ...]
    linear_probe: bool
    config_root: Path
    pretrain_args: tuple[str, ...] = ()  # extra hydra overrides, after the preset's
    # experiment 3 (with and without RLM): its variants and tasks (empty: the same as experiment 1's)
    # and whether it repeats the linear probe; the demo compares one variant, fine-tuned only (time)
    rlm_variants: tuple[str, ...] = ()
    rlm_tasks: tuple[str, ...] = ()
    rlm_linear_probe: bool = True
    # fewer lead sets for some modes (classification_linear_probe, identification): (mode, lead sets)
    # pairs; empty or an explicit --leads: every mode runs on every lead set
    mode_leads: tuple[tuple[str, tuple[str, ...]], ...] = ()
    finetune_args: tuple[str, ...] = ()
    pretrained: tuple[tuple[str, Path], ...] = ()  # (row name, checkpoint) of outside pretrained models


def _pretrain_run(s: Settings, variant: str, leads: str, seed: int, rlm_prob: Optional[float] = None) -> Run:
    tag = variant if rlm_prob is None else f"{variant}_p{rlm_prob:g}"
    name = f"pretrain/{tag}_L{lead_set_name(leads)}_s{seed}"
    command = [
        "fairseq-hydra-train", "--config-dir", str(s.config_root / "pretrain"), "--config-name", variant,
        f"common.user_dir={PACKAGE_DIR}", f"task.data={s.data / PRETRAIN}", f"task.leads={leads}",
        f"checkpoint.save_dir={s.out / 'runs' / name}", f"common.seed={seed + 1}", *PRESETS[s.preset]["pretrain"],
        *s.pretrain_args, *([] if rlm_prob is None else [f"model.rlm_prob={rlm_prob}"])]
    return with_checkpoint_schedule(Run(name, command, outputs=(CHECKPOINT,)))


def _finetune_runs(s: Settings, experiment: int, pretrain: Optional[Run], variant: str, pretrain_leads: str,
                   leads: str, seed: int, task: str, linear: bool, checkpoint: Optional[Path] = None) -> list[Run]:
    """Fine-tune (or linear-probe) then evaluate one cell of the matrix, from the checkpoint of
    the run ``pretrain`` or from a given ``checkpoint`` (``--pretrained``)."""
    mode = f"{task}_linear_probe" if linear else task
    name = f"{mode}/{variant}_P{lead_set_name(pretrain_leads)}_F{lead_set_name(leads)}_s{seed}"
    folder = s.out / "runs" / name
    checkpoint = checkpoint or s.out / "runs" / pretrain.name / CHECKPOINT
    init = "random" if variant == BASELINE else "pretrained"  # a random CNN trains, a pretrained one stays frozen
    train = [
        "fairseq-hydra-train", "--config-dir", str(s.config_root / "finetune"), "--config-name", task,
        f"common.user_dir={PACKAGE_DIR}", f"task.data={s.data / FINETUNE_DATA[task]}", f"task.leads={leads}",
        f"model.model_path={checkpoint}", f"model.init={init}", f"model.feature_grad_mult={FEATURE_GRAD_MULT_BY_INIT[init]}",
        f"checkpoint.save_dir={folder}", f"common.seed={seed + 1}", *PRESETS[s.preset][task],
    ]
    if linear:  # a frozen encoder: only the head learns, which takes a larger step size
        train += ["model.freeze_encoder_updates=-1", *PRESETS[s.preset].get("linear_probe", [])]
    train += s.finetune_args
    evaluate = [
        "fairseq-validate", str(s.data / FINETUNE_DATA[task]), "--user-dir", str(PACKAGE_DIR),
        "--task", f"ecg_{task}", "--path", str(folder / CHECKPOINT),
        # reported figures come from the test patients; valid (other patients) chose checkpoint_best
        "--valid-subset", "test", "--batch-size", "16",
        "--per-record-results", str(folder / "evaluate"),  # the report's intervals read them
    ]
    labels = dict(experiment=experiment, variant=variant, pretrain_leads=lead_set_name(pretrain_leads),
                  finetune_leads=lead_set_name(leads), task=mode, seed=seed)
    after = [pretrain.name] if pretrain is not None else []
    return [with_checkpoint_schedule(Run(name, train, after=after, outputs=(CHECKPOINT,))),
            Run(f"{name}/evaluate", evaluate, after=[name], labels=labels, outputs=(METRICS_FILE,))]


def plan(s: Settings) -> list[Run]:
    """Every run of the requested matrix, pretraining first; shared runs appear once."""
    runs: dict[str, Run] = {}

    def add(run: Run) -> Run:
        known = runs.setdefault(run.name, run)
        if known is not run and run.labels is not None and run.labels != known.labels and run.labels not in known.also:
            known.also.append(run.labels)
        return known

    mode_leads = dict(s.mode_leads)
    for seed in range(s.seeds):
        for experiment in s.experiments:
            rlm = experiment == 3
            variants = (s.rlm_variants or s.variants) if rlm else s.variants
            tasks = [t for t in s.tasks if not rlm or not s.rlm_tasks or t in s.rlm_tasks]
            modes = [False] + ([True] if s.linear_probe and (s.rlm_linear_probe or not rlm) else [])
            lead_pairs = [(leads if experiment == 2 else "12", leads) for leads in s.leads]
            cells = []  # (pretraining run or None, row label, pretraining leads, leads, checkpoint)
            for variant in (BASELINE,) + variants:
                source = variants[0] if variant == BASELINE else variant
                pairs = [(source, None)]
                if rlm and variant != BASELINE:  # with and without RLM, and the sweep of its probability
                    other = source.replace("_rlm", "") if source.endswith("_rlm") else f"{source}_rlm"
                    pairs = [(v, None) for v in sorted({source, other})]
                    pairs += [(source, p) for p in s.rlm_probs if source.endswith("_rlm")]
                for pretrain_variant, prob in pairs:
                    label = variant if variant == BASELINE else (
                        pretrain_variant if prob is None else f"{pretrain_variant}_p{prob:g}")
                    for pretrain_leads, leads in lead_pairs:
                        pretrain = add(_pretrain_run(s, pretrain_variant, pretrain_leads, seed % s.pretrain_seeds, prob))
                        cells.append((pretrain, label, pretrain_leads, leads, None))
            if experiment == 1:  # outside pretrained models (12 leads): rows fine-tuned like the others
                cells += [(None, label, "12", leads, path) for label, path in s.pretrained for leads in s.leads]
            for pretrain, label, pretrain_leads, leads, checkpoint in cells:
                for task in tasks:
                    for linear in modes if task == "classification" else [False]:
                        if leads in mode_leads.get(f"{task}_linear_probe" if linear else task, (leads,)):
                            for run in _finetune_runs(s, experiment, pretrain, label, pretrain_leads, leads, seed,
                                                      task, linear, checkpoint):
                                add(run)
    return sorted(runs.values(), key=lambda r: (not r.name.startswith("pretrain/"), r.labels is not None))


def parse_metrics(log: str) -> dict[str, float]:
    """Metrics of the last "valid on ... subset" line that fairseq-validate prints."""
    lines = [line for line in log.splitlines() if "valid on" in line]
    return {key: float(value) for key, value in METRIC_PATTERN.findall(lines[-1])} if lines else {}


class ChangedRuns(Exception):
    """Runs in the results folder ran with another command than the plan's."""


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def mark_done(run: Run, out: Path) -> None:
    """Write a run's ``done`` marker: when it finished, its command, and the markers of the runs it
    was built on (a later run of one of them makes this one stale)."""
    record = {"finished": time.strftime("%Y-%m-%d %H:%M:%S"), "command": shlex.join(run.command),
              "after": {name: _digest(out / "runs" / name / DONE) for name in run.after}}
    marker = run.folder(out) / DONE
    partial = marker.with_name(DONE + ".tmp")
    partial.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(partial, marker)


def run_states(runs: list[Run], out: Path) -> dict[str, tuple[str, str]]:
    """Each run's state in ``out`` and why: ``done`` (finished with this command, its outputs there,
    built on the runs as they are now), ``missing`` (never finished: it runs, resuming from its
    checkpoint), ``stale`` (built on a run that runs again or ran since: it runs afresh) or
    ``changed`` (its folder holds a run of another command)."""
    by_name = {run.name: run for run in runs}

    @functools.cache
    def state(name: str) -> tuple[str, str]:
        run = by_name[name]
        folder = run.folder(out)
        saved, marker = folder / "command.sh", folder / DONE
        before = [after for after in run.after if state(after)[0] != "done"]
        missing = [output for output in run.outputs if not (folder / output).is_file()]
        if saved.is_file() and (old := shlex.split(saved.read_text())) != run.command:
            added, removed = [a for a in run.command if a not in old], [a for a in old if a not in run.command]
            return "changed", f"now {shlex.join(added) or '(nothing added)'}, was {shlex.join(removed) or '(nothing)'}"
        if before and (marker.is_file() or any(folder.glob("checkpoint*.pt"))):
            return "stale", f"built on {before[0]}, which runs again"
        if before:
            return "missing", f"waits on {before[0]}"
        if not marker.is_file():
            return "missing", "not finished"
        if missing:
            return "missing", f"{missing[0]} is gone"
        try:
            record = json.loads(marker.read_text())
        except (ValueError, UnicodeDecodeError):
            record = None  # a marker of an earlier version (a time only): trusted when its command.sh matches
        if isinstance(record, dict) and any(record.get("after", {}).get(after) != _digest(out / "runs" / after / DONE)
                                            for after in run.after):
            return "stale", f"built on an earlier run of {run.after[0]}"
        return "done", ""

    return {run.name: state(run.name) for run in runs}


def execute(run: Run, out: Path, threads: int, launch: Callable = subprocess_launcher,
            afresh: bool = False) -> Optional[str]:
    """Run one command in its folder (``afresh``: its earlier checkpoints removed first); returns
    None when it succeeded and wrote its outputs, else why not."""
    folder = run.folder(out)
    folder.mkdir(parents=True, exist_ok=True)
    if afresh:  # what it must not resume from or leave standing: its checkpoints and markers
        for path in [*folder.glob("checkpoint*.pt"), folder / DONE, folder / METRICS_FILE]:
            path.unlink(missing_ok=True)
    (folder / "command.sh").write_text(shlex.join(run.command) + "\n")
    # the cores are shared out between the runs, unless the user chose the threads
    env = {key: os.environ.get(key, str(threads)) for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    log = folder / "log.txt"
    log.write_text("")
    code = launch(run.command, log, env)
    if code != 0:
        reason = f"exit {code}; see {log}"
    elif run.labels is not None and not (metrics := parse_metrics(log.read_text())):
        reason = f"no metrics in {log}"
    else:
        if run.labels is not None:
            (folder / METRICS_FILE).write_text(json.dumps(metrics, indent=1) + "\n")
        missing = [name for name in run.outputs if not (folder / name).is_file()]
        reason = f"exit 0 but no {missing[0]} in {folder}; see {log}" if missing else None
    if reason is not None:
        print(f"  FAILED {run.name}: {reason}", file=sys.stderr)
        return reason
    mark_done(run, out)
    return None


def run_matrix(runs: list[Run], out: Path, jobs: int, launch: Callable = subprocess_launcher,
               rerun_changed: bool = False) -> dict[str, str]:
    """Run everything in dependency order, ``jobs`` processes at a time, each as soon as the runs it
    needs have finished (pretrainings first, then evaluations, so results arrive as they can);
    returns the runs that failed or could not run because one they need failed, with why. A run
    whose folder holds a run of another command raises ChangedRuns unless ``rerun_changed``.
    ``launch`` starts one command (fairseq_ecg.experiments.launcher)."""
    known = {run.name for run in runs}
    for run in runs:
        if any(name not in known for name in run.after):
            raise RuntimeError(f"{run.name} needs runs that are not in the plan: {run.after}")
    states = run_states(runs, out)
    changed = [run for run in runs if states[run.name][0] == "changed"]
    if changed and not rerun_changed:
        first = changed[0]
        raise ChangedRuns(f"{len(changed)} run{'s' if len(changed) != 1 else ''} in {out / 'runs'} ran with another "
                          f"command (first: {first.name}: {states[first.name][1]}); add --rerun-changed to run "
                          "them again with the new one, with the runs built on them (their outputs are replaced), "
                          "or choose another --out")
    threads = max(1, (os.cpu_count() or 1) // jobs)
    finished = {name for name, (status, _) in states.items() if status == "done"}  # from an earlier call
    pending = sorted((run for run in runs if run.name not in finished),  # pretrainings, evaluations, the rest
                     key=lambda r: 0 if r.name.startswith("pretrain/") else 1 if r.labels is not None else 2)
    failed: dict[str, str] = {}
    running: dict = {}
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        while pending or running:
            while blocked := [r for r in pending if any(name in failed for name in r.after)]:
                for run in blocked:  # a failure blocks what needs it, and what needs that
                    pending.remove(run)
                    failed[run.name] = f"not run: it needs {next(n for n in run.after if n in failed)}, which failed"
            for run in [r for r in pending if all(name in finished for name in r.after)]:
                if len(running) >= jobs:
                    break
                pending.remove(run)
                afresh = states[run.name][0] in ("stale", "changed")
                running[pool.submit(execute, run, out, threads, launch, afresh)] = run
            if not running:  # only runs that wait on each other are left
                failed.update((run.name, "not run: it waits on a run that waits on it") for run in pending)
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                run = running.pop(future)
                if (reason := future.result()) is None:
                    finished.add(run.name)
                else:
                    failed[run.name] = reason
                print(f"[experiments] {len(finished)}/{len(runs)} runs done, {len(failed)} failed "
                      f"({run.name})", flush=True)
    return failed


def missing_cells(runs: list[Run], out: Path, failed: dict[str, str]) -> list[tuple[dict, str]]:
    """The report's cells (labels) that have no figure, with why."""
    return [(labels, failed.get(run.name, "not run"))
            for run in runs if run.labels is not None and not (run.folder(out) / METRICS_FILE).is_file()
            for labels in [run.labels, *run.also]]


def collect(runs: list[Run], out: Path) -> list[dict]:
    rows = []
    for run in runs:
        if run.labels is None or not (run.folder(out) / METRICS_FILE).exists():
            continue
        metrics = json.loads((run.folder(out) / METRICS_FILE).read_text())
        task = "identification" if run.labels["task"].startswith("identification") else "classification"
        rows += [{**labels, "metric": metric, "value": metrics[metric], "results": str(run.folder(out))}
                 for labels in [run.labels, *run.also] for metric in METRICS[task] if metric in metrics]
    return rows


def write_results(rows: list[dict], out: Path) -> Path:
    path = out / "results.csv"
    with open(path, "w", newline="") as handle:
        writer = csv_writer(handle)  # names from the runs' settings: never a spreadsheet formula
        writer.writerow(RESULT_COLUMNS)
        writer.writerows([row[k] for k in RESULT_COLUMNS] for row in rows)
    return path


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fairseq-ecg-experiments", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, type=Path, help="folder written by fairseq-ecg-manifest")
    parser.add_argument("--out", required=True, type=Path, help="results folder (runs/, results.csv, report.md)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="paper")
    parser.add_argument("--experiments", help="comma-separated: 1, 2, 3 (default: the preset's)")
    parser.add_argument("--leads", help="lead sets, e.g. 12,6,3,2,1 (default: the preset's)")
    parser.add_argument("--variants", help="pretraining variants (YAML names); default: the preset's")
    parser.add_argument("--rlm-probs", default="", help="experiment 3: RLM probabilities to sweep, e.g. 0.25,0.5,0.75")
    parser.add_argument("--seeds", type=int, help="seeds per cell (default: the preset's)")
    parser.add_argument("--pretrain-seeds", type=int, help="pretraining seeds, shared round-robin by the fine-tuning "
                        "seeds (default: the preset's; paper: as many as --seeds)")
    parser.add_argument("--tasks", help="classification,identification (default: the preset's)")
    parser.add_argument("--no-linear-probe", action="store_true", help="skip the frozen-encoder evaluation")
    parser.add_argument("--pretrain-args", default="", metavar="OVERRIDES", help="extra hydra overrides for every "
                        "pretraining run, after the preset's, e.g. 'optimization.max_update=50 dataset.batch_size=8'")
    parser.add_argument("--finetune-args", default="", metavar="OVERRIDES",
                        help="extra hydra overrides for every fine-tuning run, e.g. 'optimization.max_epoch=2'")
    parser.add_argument("--pretrained", action="append", default=[], metavar="NAME=CHECKPOINT",
                        help="experiment 1: add a row NAME fine-tuned from this ecg_wav2vec2 checkpoint (e.g. "
                             "ECG-FM's, converted with fairseq-ecg-import) like the pretrained variants; repeatable")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (the cores are shared out between them unless OMP_NUM_THREADS is set)")
    parser.add_argument("--launch", choices=("preloaded", "subprocess"), default="preloaded",
                        help="preloaded (default): fork each run from a process that has imported fairseq once (saves "
                             "3.5-5 s per run; the same argv as its command.sh); subprocess: a new interpreter per run")
    parser.add_argument("--config-root", type=Path, default=EXAMPLES_DIR, help="folder holding pretrain/ and finetune/ YAMLs")
    parser.add_argument("--rerun-changed", action="store_true",
                        help="run again, afresh, the runs in --out whose command changed (other settings or "
                             "overrides), and the runs built on them; without it they are refused")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    return parser.parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> Settings:
    preset = PRESETS[args.preset]
    # Lead sets are comma-separated; use ";" when one of them is an explicit list: "12;[I,II,V2]".
    text = args.leads or ",".join(preset["leads"])
    leads = tuple(part.strip() for part in text.split(";" if ";" in text else ",") if part.strip())
    for spec in leads:
        parse_leads(spec)
    variants = tuple(args.variants.split(",")) if args.variants else tuple(preset["variants"])
    if args.config_root == EXAMPLES_DIR and not EXAMPLES_DIR.is_dir():
        raise SystemExit(f"fairseq-ecg-experiments: no YAML configs: neither {EXAMPLES_PLACES[0]} nor {EXAMPLES_PLACES[1]} "
                         "exists; reinstall fairseq_ecg or give --config-root DIR")
    for variant in variants:
        if not (args.config_root / "pretrain" / f"{variant}.yaml").is_file():
            raise SystemExit(f"fairseq-ecg-experiments: no pretraining config {variant}.yaml in "
                             f"{args.config_root / 'pretrain'}; choose from the YAML names there")
    tasks = tuple(t for t in args.tasks.split(",") if t) if args.tasks else tuple(preset["tasks"])
    if unknown := set(tasks) - set(METRICS):
        raise SystemExit(f"fairseq-ecg-experiments: unknown task {sorted(unknown)[0]!r}; use {', '.join(METRICS)}")
    pretrained = []
    for item in args.pretrained:
        label, _, path = item.partition("=")
        if not label or not path or not re.fullmatch(r"[A-Za-z0-9_.-]+", label):
            raise SystemExit(f"fairseq-ecg-experiments: --pretrained {item!r}: expected NAME=CHECKPOINT, NAME of "
                             "letters, digits, '_', '-' or '.'")
        if label in variants or label == BASELINE or label in dict(pretrained):
            raise SystemExit(f"fairseq-ecg-experiments: --pretrained {item!r}: the row name {label} is taken")
        if not Path(path).is_file():
            raise SystemExit(f"fairseq-ecg-experiments: --pretrained {item!r}: {path} is not a file")
        pretrained.append((label, Path(path).resolve()))
    # experiment 3 of a preset may compare fewer variants and tasks; explicit --variants/--tasks rule
    rlm = preset.get("experiment3", {})
    experiments = args.experiments or ",".join(str(e) for e in preset.get("experiments", [1]))
    return Settings(
        pretrained=tuple(pretrained), data=args.data.resolve(), out=args.out.resolve(), preset=args.preset,
        experiments=tuple(int(e) for e in experiments.split(",")), variants=variants, leads=leads,
        rlm_probs=tuple(float(p) for p in args.rlm_probs.split(",") if p), seeds=args.seeds or preset["seeds"],
        pretrain_seeds=max(1, min(args.pretrain_seeds or preset["pretrain_seeds"], args.seeds or preset["seeds"])),
        tasks=tasks, linear_probe=not args.no_linear_probe, config_root=args.config_root.resolve(),
        pretrain_args=tuple(shlex.split(args.pretrain_args)), finetune_args=tuple(shlex.split(args.finetune_args)),
        rlm_variants=() if args.variants else tuple(rlm.get("variants", ())),
        rlm_tasks=() if args.tasks else tuple(rlm.get("tasks", ())), rlm_linear_probe=rlm.get("linear_probe", True),
        mode_leads=() if args.leads else tuple((mode, tuple(sets)) for mode, sets in preset.get("mode_leads", {}).items()),
    )


def without_empty_tasks(s: Settings) -> Settings:
    """Leave out a task whose training manifest exists but holds no record, with a notice: the
    PhysioNet/CinC 2021 archive has no patient ids, so its ``identify/`` manifests are empty."""
    kept = []
    for task in s.tasks:
        manifest = s.data / FINETUNE_DATA[task] / "train.tsv"
        try:
            empty = manifest.is_file() and len(read_manifest(manifest).rows) == 0
        except ManifestError:
            empty = False  # the run itself reports a broken manifest, with its line
        if empty:
            print(f"[experiments] {task} left out: {manifest} holds no record (it needs patients with at "
                  "least 2 records; PTB-XL has them)", file=sys.stderr)
        elif task == "identification" and manifest.is_file() and identify_test_missing(manifest.parent):
            raise SystemExit(f"fairseq-ecg-experiments: {identify_test_missing(manifest.parent)}")
        else:
            kept.append(task)
    return replace(s, tasks=tuple(kept))


def _override(command: list[str], key: str) -> Optional[str]:
    """The value of the last ``key=VALUE`` override in a command line, if any."""
    return next((arg.split("=", 1)[1] for arg in reversed(command) if arg.startswith(f"{key}=")), None)


def training_config(command: list[str]):
    """The settings a training command runs with: its YAMLs (``base.yaml`` for pretraining,
    ``size/tiny.yaml`` with ``+size=tiny``) merged, and a function reading a key's value with the
    command's own overrides first."""
    config_dir = Path(command[command.index("--config-dir") + 1])
    name = command[command.index("--config-name") + 1]
    paths = [config_dir / "base.yaml", config_dir / f"{name}.yaml"]
    paths += [config_dir / "size" / "tiny.yaml"] if "+size=tiny" in command else []
    cfg = OmegaConf.merge(OmegaConf.create(), *(OmegaConf.load(path) for path in paths if path.is_file()))

    def value(key: str, default: int) -> int:
        given = _override(command, key)
        found = OmegaConf.select(cfg, key, default=default) if given is None else given
        return int(float(found or 0))

    return value


def with_checkpoint_schedule(run: Run) -> Run:
    """Make a training run that stops at its epoch limit save (and validate, which chooses
    ``checkpoint_best.pt``) at its last epoch: fairseq saves only every ``checkpoint.save_interval``
    epochs, so ``optimization.max_epoch=2`` under the demo's interval of 5 would train and write no
    checkpoint. The intervals follow the epochs, in the command (``command.sh`` shows them) and in a
    notice."""
    value = training_config(run.command)
    epochs = value("optimization.max_epoch", 0)
    save, validate = value("checkpoint.save_interval", 1), value("dataset.validate_interval", 1)
    if epochs <= 0 or epochs >= max(save, validate):
        return run
    notice = (f"{kind_of(run)} runs train {epochs} epoch{'s' if epochs != 1 else ''}, fewer than their interval between "
              f"checkpoints ({save}) or validations ({validate}), so they would write no {CHECKPOINT}: "
              f"checkpoint.save_interval={epochs} dataset.validate_interval={epochs} added to their commands")
    command = [*run.command, f"checkpoint.save_interval={epochs}", f"dataset.validate_interval={epochs}"]
    return replace(run, command=command, notice=notice)


def run_length(run: Run) -> tuple[str, int, int, Optional[int]]:
    """(size, max_epoch, max_update, training updates) of a training run, from its settings
    (``training_config``; 0 means no limit, as in fairseq); the updates are None when its epochs
    cannot be counted (no manifest yet)."""
    value, data = training_config(run.command), _override(run.command, "task.data")
    epochs, updates = value("optimization.max_epoch", 0), value("optimization.max_update", 0)
    batch, records = value("dataset.batch_size", 1), None
    try:
        if data and (Path(data) / "train.tsv").is_file():
            records = len(read_manifest(Path(data) / "train.tsv").rows)
    except ManifestError:
        pass  # counted as unknown, as without a manifest
    by_epochs = epochs * math.ceil(records / max(batch, 1)) if epochs and records is not None else None
    count = min(updates, by_epochs) if updates and by_epochs is not None else updates or by_epochs
    return "tiny" if "+size=tiny" in run.command else "paper", epochs, updates, count


def kind_of(run: Run) -> str:
    return ("evaluation" if run.labels is not None else "pretraining" if run.name.startswith("pretrain/")
            else run.name.split("/", 1)[0].replace("_", " "))


def _duration(seconds: float) -> str:
    if seconds < 3600:
        minutes = max(1, round(seconds / 60))
        return f"{minutes} minute{'s' if minutes != 1 else ''}"
    return f"{seconds / 3600:,.1f} hours" if seconds < 48 * 3600 else f"{seconds / 86400:,.0f} days"


def plan_summary(runs: list[Run]) -> list[str]:
    """``--dry-run``'s closing lines: runs per kind with their length, and a rough CPU time."""
    lines, seconds, unknown = [], 0.0, 0
    kinds: dict[str, list[Run]] = {}
    for run in runs:
        kinds.setdefault(kind_of(run), []).append(run)
    for kind, members in kinds.items():
        if kind == "evaluation":
            lines.append(f"{len(members)} evaluations (fairseq-validate, one pass over the test split each)")
            continue
        lengths = [run_length(run) for run in members]
        known = [count for *_, count in lengths if count is not None]
        unknown += len(lengths) - len(known)
        for size, _, _, count in lengths:
            if count is not None:
                seconds += count * SECONDS_PER_UPDATE_CPU[size]
        size, epochs, updates, _ = lengths[0]
        length = (f"about {sum(known) // max(len(known), 1):,} updates each" if known
                  else f"{epochs} epochs each" if epochs else f"{updates} updates each")
        lines.append(f"{len(members)} {kind} runs ({size} size, {length})")
    counted = sum(1 for r in runs if r.labels is None) - unknown
    estimate = (f"rough cost of {counted:,} training runs: about {_duration(seconds)} of an idle 2-core CPU (~{SECONDS_PER_UPDATE_CPU['tiny']:g} s of wall time per update of the tiny size, two runs at a time, as the demo measured; "
                f"~{SECONDS_PER_UPDATE_CPU['paper'] / 60:g} min of the paper's size; a GPU is far faster)")
    if unknown:
        estimate += (f"; {unknown} runs measured in epochs are not counted: --data holds no manifest to count "
                     "their records")
    return [f"{len(runs)} runs: " + "; ".join(lines), estimate]


def test_leads_notes(s: Settings) -> list[str]:
    """For the report: the leads the test records of each task really have, when not all have the
    12 (a column's lead set is what the model is fed; a lead a record lacks goes in as zeros), so
    that results on 2-lead records do not read as 12-lead ones."""
    notes, full = [], lead_list([True] * 12)
    for task in s.tasks:
        folder = s.data / FINETUNE_DATA[task]
        names = ["test.tsv"] if task == "classification" else [f"{held_out('test', role)}.tsv" for role in (GALLERY, PROBE)]
        seen: Counter = Counter()
        for name in names:
            try:
                rows = read_manifest(folder / name).rows if (folder / name).is_file() else []
            except ManifestError:
                rows = []
            seen.update(lead_list(row.present_leads) for row in rows)
        if set(seen) - {full}:
            counts = "; ".join(f"{n} have {'all 12 leads' if key == full else key}" for key, n in seen.most_common())
            notes.append(f"The {task} test records do not all have 12 leads: {counts}. A column names the leads "
                         "the model is fed; a lead a record lacks goes in as zeros.")
    return notes


def main(argv=None) -> int:
    args = parse_args(argv)
    # importing fairseq (through the package) sets the root logger to DEBUG; matplotlib's font
    # manager would then log every font it looks at while the report is drawn
    logging.getLogger().setLevel(logging.WARNING)
    s = settings_from_args(args)
    if not s.data.is_dir():
        raise SystemExit(f"fairseq-ecg-experiments: --data {args.data}: no such folder; prepare the archive first "
                         "with fairseq-ecg-manifest SRC --dest DIR")
    if not args.dry_run and not (s.data / PRETRAIN / "train.tsv").is_file():
        raise SystemExit(f"fairseq-ecg-experiments: {s.data / PRETRAIN / 'train.tsv'} not found; "
                         "prepare the archive first with fairseq-ecg-manifest SRC --dest DIR")
    s = without_empty_tasks(s)
    runs = plan(s)
    if args.dry_run:  # the summary as comments: the output stays a runnable script
        print(*(shlex.join(run.command) for run in runs), *(f"# {line}" for line in plan_summary(runs)), sep="\n")
        return 0
    s.out.mkdir(parents=True, exist_ok=True)
    for notice in dict.fromkeys(run.notice for run in runs if run.notice):
        print(f"[experiments] {notice}", file=sys.stderr)
    states = run_states(runs, s.out)
    counts = {status: sum(state == status for state, _ in states.values()) for status in ("done", "stale")}
    print(f"[experiments] {len(runs)} runs planned, {counts['done']} already done"
          + (f", {counts['stale']} to run again (built on runs that run again)" if counts["stale"] else "")
          + f"; results in {s.out}", flush=True)
    launch = PreloadedLauncher() if args.launch == "preloaded" else subprocess_launcher
    try:
        failed = run_matrix(runs, s.out, args.jobs, launch, rerun_changed=args.rerun_changed)
    except ChangedRuns as error:
        raise SystemExit(f"fairseq-ecg-experiments: {error}")
    except KeyboardInterrupt:  # a run cut short is not marked done: the same command goes on from there
        print(f"\nfairseq-ecg-experiments: interrupted; run the same command to resume ({s.out})",
              file=sys.stderr, flush=True)
        return 130
    rows = collect(runs, s.out)
    write_results(rows, s.out)
    from .report import write_report

    report = write_report(rows, s.out, missing=missing_cells(runs, s.out, failed), notes=test_leads_notes(s))
    print(report.read_text())
    print(f"[experiments] report: {report} (results: {s.out / 'results.csv'})", flush=True)
    if failed:
        print(f"[experiments] {len(failed)} run{'s' if len(failed) != 1 else ''} failed:", file=sys.stderr)
        for name, reason in failed.items():
            print(f"  {name}: {reason}", file=sys.stderr)
        return 1
    return 0

