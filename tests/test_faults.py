"""Faults, with real processes and real signals:

- fairseq-hydra-train (tiny pretraining, tiny fine-tuning) SIGKILLed at seeded random points, in
  start-up, in training and right after a checkpoint write began, then rerun until it finishes:
  every rerun resumes from checkpoint_last.pt, the update count never goes back, every ``*.pt``
  in the save folder loads after every kill (stock fairseq fails this: it copies a saved
  checkpoint to checkpoint_best/last.pt non-atomically; fairseq_ecg.patches.resume fixes that);
- a truncated checkpoint_last.pt: one line naming it and the checkpoint to resume from, and the
  override it gives works;
- fairseq-ecg-manifest killed three times mid-run, then finished: the same bytes as one
  uninterrupted run;
- the experiments runner killed mid-matrix: the rerun repeats no finished run and completes the rest;
- a data-parallel job (two CPU ranks, gloo) with a failing worker (rank 1 reads a bad manifest;
  rank 0 is SIGKILLed in training): the survivor exits with gloo's error, it does not hang.

Nearly all the time goes into starting Python programs that import fairseq (seconds each, on one
core), so the scenarios run three at a time in the module fixture ``scenarios``; each test then
takes its scenario's outcome (re-raising the scenario's own assertion). Every wait is bounded by
a deadline, and no assertion depends on how long something took. FAULTS_VERBOSE=1 with
``pytest -s`` prints the kills and resumes as they happen; FAULTS_SEED=N picks other kill points.
"""
import csv
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from conftest import BIN, REPO, write_random_manifest
from fairseq_ecg.checkpoints import CheckpointError
from fairseq_ecg.labels import SCORED_CLASSES
from fairseq_ecg.manifest import write_classes
from fairseq_ecg.preparation import JOURNAL_COLUMNS, main as prepare, wave_relative_path
from fairseq_ecg.synth import synthesize_archive
from test_classification import _write_split
from test_preparation import tree_hashes

# Programs run two or three at a time on a 2-core machine: one thread each.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
WAIT_S = 120  # bound of every wait for a process to reach a point or to end
VERBOSE = os.environ.get("FAULTS_VERBOSE") == "1"
SEED = int(os.environ.get("FAULTS_SEED", "0"))  # another value: other kill points
T0 = time.monotonic()
RESUME_LINE = re.compile(r"Loaded checkpoint (\S+) \(epoch \d+ @ (\d+) updates\)")
STARTED = ("Loaded checkpoint", "No existing checkpoint found")


def say(*args) -> None:
    if VERBOSE:
        print(f"[faults {time.monotonic() - T0:6.1f}s]", *args, flush=True)


# --- processes --------------------------------------------------------------------------------

def start(command: list[str], log: Path) -> subprocess.Popen:
    """Run ``command`` from the repository root in its own process group, output to ``log``."""
    with open(log, "w") as out:
        return subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=ENV,
                                start_new_session=True)


def finish(command: list[str], log: Path) -> tuple[int, str]:
    process = start(command, log)
    try:
        process.wait(timeout=WAIT_S * 2)
    finally:
        kill_group(process)
    return process.returncode, log.read_text()


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the process and its children (pool workers, the runs of the experiments runner)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=WAIT_S)


def wait_for(condition, process: subprocess.Popen, seconds: float = WAIT_S, step: float = 0.02) -> bool:
    """Poll ``condition`` until it holds, the process ends, or ``seconds`` pass."""
    end = time.monotonic() + seconds
    while time.monotonic() < end and process.poll() is None:
        if condition():
            return True
        time.sleep(step)
    return condition()


# --- checkpoints --------------------------------------------------------------------------------

def num_updates(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["optimizer_history"][-1]["num_updates"]


def check_save_dir(save_dir: Path) -> int | None:
    """Every ``*.pt`` of the folder loads (none is truncated); the update count of checkpoint_last.pt."""
    for path in sorted(save_dir.glob("*.pt")):
        try:
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise AssertionError(f"{path} ({path.stat().st_size} bytes) does not load: {error}") from None
    last = save_dir / "checkpoint_last.pt"
    return num_updates(last) if last.exists() else None


def temporaries(folder: Path) -> set:
    try:
        return {(e.name, e.inode()) for e in os.scandir(folder) if e.name.endswith(".tmp")}
    except FileNotFoundError:
        return set()


@dataclass
class KillLoop:
    """A training command killed ``kills`` times at seeded random points, then run to its end."""

    name: str
    command: list[str]
    save_dir: Path
    max_update: int
    kills: int = 0
    modes: list = field(default_factory=list)
    resumes: int = 0  # reruns whose log shows they loaded the update count that checkpoint_last.pt held
    expected_resumes: int = 0  # reruns that found a checkpoint_last.pt and were not killed in start-up
    writes_cut: int = 0  # kills that left a fresh *.tmp behind: a checkpoint write or copy was cut short
    history: list = field(default_factory=list)  # checkpoint_last.pt's update count after each run
    final_log: str = ""

    def kill_at_random_point(self, process: subprocess.Popen, log: Path, mode: str, rng: random.Random) -> bool:
        """SIGKILL the run at a random time from its start (``startup``), at a random time after
        its Nth update (``training``), or right after its Nth checkpoint write began (``saving``).
        Points counted in updates and writes bound how far a killed run gets on any machine."""
        if mode == "startup":
            wait_for(lambda: False, process, rng.uniform(0.5, 4.0))
        else:
            wait_for(lambda: any(s in log.read_text() for s in STARTED), process)
            if mode == "training":  # common.log_interval=1: one "num_updates=N" line per update
                target = rng.randint(1, 4)
                wait_for(lambda: log.read_text().count("num_updates=") >= target, process, step=0.005)
                wait_for(lambda: False, process, rng.uniform(0.0, 0.1))
            else:  # a new *.tmp: torch.save of a checkpoint, or its copy to checkpoint_best/last
                seen, target, count = temporaries(self.save_dir), rng.randint(1, 3), 0
                end = time.monotonic() + WAIT_S
                while process.poll() is None and time.monotonic() < end and count < target:
                    now = temporaries(self.save_dir)
                    count += bool(now - seen)
                    seen = now
                    time.sleep(0.001)
                time.sleep(rng.uniform(0.0, 0.005))
        if process.poll() is not None:
            return False  # it ended first: not a kill
        kill_group(process)
        return True

    def run(self, kills: int, seed: int, log_dir: Path) -> "KillLoop":
        rng = random.Random(seed)
        modes = (["startup"] + ["training", "saving"] * kills)[:kills]  # one kill in start-up, in random order
        rng.shuffle(modes)
        saved = None
        for attempt in range(kills + 1):
            log = log_dir / f"{self.name}_{attempt}.log"
            started_ns = time.time_ns()
            process = start(self.command, log)
            if attempt < kills:
                mode = modes[attempt]
                if attempt > 0 and saved is None and mode != "startup":
                    # kills before the first save would leave nothing to resume from: from the
                    # second run on, a kill waits for checkpoint_last.pt (so >= 1 resume is checked)
                    wait_for(lambda: (self.save_dir / "checkpoint_last.pt").exists(), process)
                assert self.kill_at_random_point(process, log, mode, rng), (
                    f"{self.name} run {attempt} ended before its kill ({mode}):\n{log.read_text()[-2000:]}")
                self.kills += 1
                self.modes.append(mode)
                self.writes_cut += any(p.stat().st_mtime_ns >= started_ns for p in self.save_dir.glob("*.tmp"))
            else:
                process.wait(timeout=WAIT_S * 2)
                assert process.returncode == 0, f"{self.name}: the last run failed:\n{log.read_text()[-3000:]}"
            text = log.read_text()
            loaded = RESUME_LINE.search(text)
            self.expected_resumes += saved is not None and (attempt == kills or self.modes[-1] != "startup")
            if saved is not None and loaded is not None:
                assert loaded[1] == str(self.save_dir / "checkpoint_last.pt") and int(loaded[2]) == saved, (
                    f"{self.name} run {attempt}: {loaded[0]}, but checkpoint_last.pt held {saved} updates")
                self.resumes += 1
            now = check_save_dir(self.save_dir)
            assert saved is None or (now is not None and now >= saved), (
                f"{self.name}: checkpoint_last.pt went from {saved} to {now} updates")
            saved = now if now is not None else saved
            self.history.append(saved)
            say(self.name, attempt, self.modes[-1] if attempt < kills else "final", "->", saved, "updates")
        self.final_log = text
        return self


def pretrain_command(data: Path, save_dir: Path, max_update: int, *extra: str) -> list[str]:
    return [str(BIN / "fairseq-hydra-train"), "--config-dir", "examples/pretrain", "--config-name", "w2v_cmsc_rlm",
            "+size=tiny", f"task.data={data}", f"checkpoint.save_dir={save_dir}", "task.segment_seconds=1.0",
            "dataset.batch_size=4", "optimization.max_epoch=0", f"optimization.max_update={max_update}",
            "checkpoint.save_interval_updates=3", "checkpoint.keep_interval_updates=2", "common.log_interval=1", *extra]


def finetune_command(data: Path, model_path: Path, save_dir: Path, max_update: int) -> list[str]:
    return [str(BIN / "fairseq-hydra-train"), "--config-dir", "examples/finetune", "--config-name", "classification",
            "+size=tiny", f"task.data={data}", f"model.model_path={model_path}", f"checkpoint.save_dir={save_dir}",
            "task.segment_seconds=1.0", "dataset.batch_size=4", "optimization.max_epoch=0",
            f"optimization.max_update={max_update}", "checkpoint.save_interval_updates=2",
            "checkpoint.keep_interval_updates=2", "common.log_interval=1"]


# --- the scenarios ------------------------------------------------------------------------------

def truncated_last_checkpoint(pretraining: KillLoop, data: Path, root: Path) -> dict:
    """Cut a copy of the finished pretraining's checkpoint_last.pt in half and run on: the run
    stops with one line naming the newest readable checkpoint; the override it names resumes."""
    save_dir = root / "ckpt"
    shutil.copytree(pretraining.save_dir, save_dir)  # times kept: the newest file stays the newest
    for stale in save_dir.glob("*.tmp"):
        stale.unlink()
    last = save_dir / "checkpoint_last.pt"
    good = max((p for p in save_dir.glob("*.pt") if p != last), key=lambda p: p.stat().st_mtime_ns)
    good_updates = num_updates(good)
    content = last.read_bytes()
    last.write_bytes(content[: len(content) // 2])  # as if a copy was cut short or the disk filled up
    more = pretraining.max_update + 4
    code, failed = finish(pretrain_command(data, save_dir, more), root / "truncated.log")
    code_resumed, resumed = finish(pretrain_command(data, save_dir, more, f"checkpoint.restore_file={good}"),
                                   root / "restored.log")
    return dict(last=last, good=good, good_updates=good_updates, code=code, log=failed,
                code_resumed=code_resumed, resumed=resumed, final=check_save_dir(save_dir), max_update=more)


MANIFEST_ARGS = ["--workers", "2", "--seed", "5"]


def manifest_killed_and_finished(root: Path) -> dict:
    synthesize_archive(root / "src", records=150, patients=50, seed=5)
    dest, rng = root / "out", random.Random(SEED + 303)
    # the reference: one uninterrupted run into the same folder (manifests start with its path)
    assert prepare([str(root / "src"), "--dest", str(dest), "--workers", "1", "--seed", "5"]) == 0
    reference = tree_hashes(dest)
    shutil.rmtree(dest)
    command = [str(BIN / "fairseq-ecg-manifest"), str(root / "src"), "--dest", str(dest), *MANIFEST_ARGS]
    count = lambda: sum(1 for _ in (dest / "waves").rglob("*.npy"))  # noqa: E731
    points = sorted(rng.sample(range(5, 140), 3))  # kill once this many records are written
    written = []
    for attempt, point in enumerate(points):
        log = root / f"manifest_{attempt}.log"
        process = start(command, log)
        wait_for(lambda: count() >= point, process, step=0.002)
        time.sleep(rng.uniform(0, 0.05))
        assert process.poll() is None, f"fairseq-ecg-manifest ended before its kill:\n{log.read_text()[-2000:]}"
        kill_group(process)  # the program and its two pool workers
        written.append(count())
        assert not (dest / "finetune" / "train.tsv").exists()
    say("manifest killed after", points, "records; written by then:", written)
    journal = [line.split("\t") for line in (dest / "records.tsv").read_text().splitlines()[2:]]
    done = [dest / wave_relative_path(f[0]) for f in journal if len(f) == len(JOURNAL_COLUMNS) and f[1] == "ok"]
    before = {p: p.stat().st_mtime_ns for p in done}  # what the journal holds as done at the last kill
    # finished in this process (one worker: no fork from a process with threads)
    code = prepare([str(root / "src"), "--dest", str(dest), "--workers", "1", "--seed", "5"])
    rewritten = [p for p, mtime in before.items() if p.stat().st_mtime_ns != mtime]
    return dict(points=points, written=written, code=code, journalled=len(before), rewritten=rewritten,
                hashes=tree_hashes(dest), reference=reference)


def experiments_killed_and_rerun(root: Path) -> dict:
    synthesize_archive(root / "src", records=60, patients=30, seed=6)
    data, out = root / "data", root / "results"
    assert prepare([str(root / "src"), "--dest", str(data), "--workers", "1", "--valid-percent", "20",
                    "--test-percent", "20"]) == 0
    command = [str(BIN / "fairseq-ecg-experiments"), "--data", str(data), "--out", str(out), "--preset", "demo",
               "--variants", "w2v", "--leads", "12", "--seeds", "1", "--no-linear-probe",
               "--tasks", "classification", "--experiments", "1", "--jobs", "2",  # one thread per run
               "--pretrain-args", "optimization.max_update=4 task.segment_seconds=1 dataset.batch_size=8",
               # 2 epochs under the demo's interval of 5: the runner makes the fine-tunings save at epoch 2
               "--finetune-args", "optimization.max_epoch=2 task.segment_seconds=1"]
    done = lambda: sorted(p.parent for p in (out / "runs").rglob("done")) if out.is_dir() else []  # noqa: E731
    process = start(command, root / "first.log")
    # killed once the pretraining and one of the two fine-tunings (run side by side) have finished
    reached = wait_for(lambda: len(done()) >= 2, process, seconds=WAIT_S * 2, step=0.01)
    assert reached and process.poll() is None, (root / "first.log").read_text()[-3000:]
    wait_for(lambda: False, process, random.Random(SEED + 404).uniform(0.0, 0.5))
    kill_group(process)
    finished = {p: ((p / "done").stat().st_mtime_ns, (p / "log.txt").stat().st_mtime_ns) for p in done()}
    started = {p.parent for p in (out / "runs").rglob("log.txt")} - set(finished)
    say("experiments killed with", len(finished), "runs done and", len(started), "started")
    code, log = finish(command, root / "rerun.log")
    rows = []
    if (out / "results.csv").exists():
        with open(out / "results.csv") as handle:
            rows = list(csv.DictReader(handle))
    after = {p: ((p / "done").stat().st_mtime_ns, (p / "log.txt").stat().st_mtime_ns) for p in finished}
    return dict(out=out, finished=finished, after=after, started=started, done=done(), code=code, log=log,
                rows=rows)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def data_parallel_with_a_failing_worker(data: Path, root: Path, failure: str) -> dict:
    """Two CPU ranks (one process each, as in test_pretraining). ``bad_manifest``: rank 1 reads a
    manifest with a bad line and fails at start; ``sigkill``: rank 0 (which also holds the
    rendezvous store) is SIGKILLed once training has begun."""
    broken = root / "broken"
    shutil.copytree(data, broken)
    with open(broken / "train.tsv", "a") as manifest:
        manifest.write("half a line\n")
    port = free_port()
    processes = []
    for rank, folder in enumerate([data, broken if failure == "bad_manifest" else data]):
        command = pretrain_command(folder, root / "ckpt", 40) + [
            "common.cpu=true", "distributed_training.distributed_world_size=2",
            f"distributed_training.distributed_rank={rank}",
            f"distributed_training.distributed_init_method=tcp://127.0.0.1:{port}",
            "distributed_training.distributed_no_spawn=true", "distributed_training.distributed_backend=gloo",
            "distributed_training.device_id=0"]
        processes.append(start(command, root / f"rank{rank}.log"))
    if failure == "sigkill":  # only rank 0 logs progress; common.log_interval=1
        first = root / "rank0.log"
        began = wait_for(lambda: first.read_text().count("num_updates=") >= 2, processes[0], step=0.005)
        wait_for(lambda: False, processes[0], random.Random(SEED + 505).uniform(0.0, 0.2))
        assert began and processes[0].poll() is None, first.read_text()[-3000:]
        kill_group(processes[0])
    end = time.monotonic() + 120
    while time.monotonic() < end and any(p.poll() is None for p in processes):
        time.sleep(0.1)
    hung = [rank for rank, p in enumerate(processes) if p.poll() is None]
    for p in processes:
        kill_group(p)
    return dict(hung=hung, codes=[p.returncode for p in processes], broken=broken / "train.tsv",
                logs=[(root / f"rank{rank}.log").read_text() for rank in range(2)])


@pytest.fixture(scope="module")
def short_pretrain_data(tmp_path_factory) -> Path:
    """16 training records (one CMSC pair of 1 s segments each) and 4 validation records."""
    folder = tmp_path_factory.mktemp("faults_pretrain")
    write_random_manifest(folder, "train", 16, samples=1000, seed=1)
    write_random_manifest(folder, "valid", 4, samples=1000, seed=2)
    return folder


@pytest.fixture(scope="module")
def short_finetune_data(tmp_path_factory) -> Path:
    """A ``finetune`` folder over the 26 scored classes: 12 / 3 / 3 records of 2 s."""
    folder = tmp_path_factory.mktemp("faults_finetune")
    for split, count, seed in (("train", 12, 1), ("valid", 3, 2), ("test", 3, 3)):
        _write_split(folder, split, [1000] * count, seed=seed)
    write_classes(folder, SCORED_CLASSES)
    return folder


# the scenarios each test takes its outcome from (parameters: the test's own)
USES = {
    "test_training_killed_at_random_points_resumes_to_the_end": lambda p: {p["name"]},
    "test_truncated_last_checkpoint_names_the_checkpoint_to_resume_from": lambda p: {"truncated"},
    "test_corrupt_checkpoint_is_one_line_for_every_fairseq_loader": lambda p: {"finetune"},
    "test_manifest_killed_three_times_finishes_with_the_same_bytes": lambda p: {"manifest"},
    "test_experiments_runner_killed_mid_matrix_redoes_only_unfinished_runs": lambda p: {"experiments"},
    "test_a_failing_worker_stops_the_data_parallel_job": lambda p: {f"ddp_{p['failure']}"},
}


@pytest.fixture(scope="module")
def scenarios(request, short_pretrain_data, tmp_path_factory) -> dict:
    """The futures of the scenarios that the selected tests use, run three at a time (on two
    cores: each is mostly one process on one core, and a third keeps both busy while another
    waits for a kill point), longest first."""
    needed = set()
    for item in request.session.items:
        if item.module is request.module:
            needed |= USES[item.originalname](getattr(getattr(item, "callspec", None), "params", {}))
    folder = lambda name: tmp_path_factory.mktemp(f"faults_{name}")  # noqa: E731  (here: not thread-safe)

    def timed(name, function, *args):
        def run():
            say(name, "starts")
            try:
                return function(*args)
            finally:
                say(name, "ends")
        return run

    jobs, loops, pretrained = {}, [], Future()
    if needed & {"pretrain", "truncated"}:
        # a killed run gets at most ~10 updates further (see kill_at_random_point): 5 kills stay below
        save_dir, logs, truncated = folder("ckpt_pretrain"), folder("logs_pretrain"), folder("truncated")
        pretraining = KillLoop("pretrain", pretrain_command(short_pretrain_data, save_dir, 50), save_dir, 50)
        loops.append(pretraining)

        def pretraining_then_truncation():
            try:
                pretrained.set_result(pretraining.run(5, SEED + 101, logs))
            except BaseException as error:
                pretrained.set_exception(error)
                raise
            if "truncated" in needed:
                return truncated_last_checkpoint(pretraining, short_pretrain_data, truncated)

        jobs["truncated"] = timed("pretrain+truncated", pretraining_then_truncation)
    if "finetune" in needed:
        model, data = request.getfixturevalue("tiny_pretrained"), request.getfixturevalue("short_finetune_data")
        save_dir = folder("ckpt_finetune")
        finetuning = KillLoop("finetune", finetune_command(data, model, save_dir, 40), save_dir, 40)
        loops.append(finetuning)
        jobs["finetune"] = timed("finetune", finetuning.run, 5, SEED + 202, folder("logs_finetune"))
    if "experiments" in needed:
        jobs["experiments"] = timed("experiments", experiments_killed_and_rerun, folder("experiments"))
    if "manifest" in needed:
        jobs["manifest"] = timed("manifest", manifest_killed_and_finished, folder("manifest"))
    for failure in ("bad_manifest", "sigkill"):
        if f"ddp_{failure}" in needed:
            jobs[f"ddp_{failure}"] = timed(f"ddp_{failure}", data_parallel_with_a_failing_worker,
                                           short_pretrain_data, folder(f"ddp_{failure}"), failure)
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {name: pool.submit(job) for name, job in jobs.items()}
        for future in futures.values():
            future.exception()  # wait for all
    futures["pretrain"] = pretrained
    for loop in loops:
        say(f"{loop.name}: {loop.kills} kills {loop.modes}, {loop.resumes} resumes verified, "
            f"{loop.writes_cut} checkpoint writes cut short, updates {loop.history}")
    return futures


# --- the tests ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["pretrain", "finetune"])
def test_training_killed_at_random_points_resumes_to_the_end(scenarios, name):
    loop = scenarios[name].result()  # the per-run checks (resume point, no truncated *.pt) ran there
    assert loop.kills == 5
    assert loop.resumes == loop.expected_resumes >= 1
    counts = [c for c in loop.history if c is not None]
    assert counts == sorted(counts) and counts[-1] == loop.max_update
    assert num_updates(loop.save_dir / "checkpoint_last.pt") == loop.max_update
    assert f"num_updates {loop.max_update}" in loop.final_log


def test_truncated_last_checkpoint_names_the_checkpoint_to_resume_from(scenarios):
    outcome = scenarios["truncated"].result()
    assert outcome["code"] != 0
    lines = [line for line in outcome["log"].splitlines() if "truncated or corrupt checkpoint" in line]
    assert len(lines) == 1 and "Traceback" not in outcome["log"], outcome["log"][-3000:]  # one line, no traceback
    line, last, good = lines[0], outcome["last"], outcome["good"]
    assert f"{last}: truncated or corrupt checkpoint" in line
    assert f"{good} (epoch" in line and f"@ {outcome['good_updates']} updates" in line
    assert f"checkpoint.restore_file={good} " in line
    # the override it names resumes from that checkpoint and writes a whole checkpoint_last.pt
    assert outcome["code_resumed"] == 0, outcome["resumed"][-3000:]
    assert f"Loaded checkpoint {good} (epoch" in outcome["resumed"]
    assert outcome["final"] == outcome["max_update"]


def test_corrupt_checkpoint_is_one_line_for_every_fairseq_loader(scenarios, tmp_path):
    from fairseq import checkpoint_utils

    source = scenarios["finetune"].result().save_dir / "checkpoint_last.pt"
    bad = tmp_path / "checkpoint_best.pt"
    bad.write_bytes(source.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"checkpoint_best.pt: truncated or corrupt checkpoint \(.*\); "
                                              r"no other readable checkpoint in .*Move the file away"):
        checkpoint_utils.load_model_ensemble_and_task([str(bad)])  # as fairseq-validate --path does
    shutil.copy(source, tmp_path / "checkpoint_3_7.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty.pt: truncated or corrupt checkpoint \(an empty file\)\. "
                                              r"The newest readable .*checkpoint_3_7.pt \(epoch \d+ @ 40 updates\)"):
        checkpoint_utils.load_checkpoint_to_cpu(str(tmp_path / "empty.pt"))


def test_manifest_killed_three_times_finishes_with_the_same_bytes(scenarios):
    outcome = scenarios["manifest"].result()
    written = outcome["written"]
    assert written == sorted(written) and 0 < written[-1] < 150
    assert outcome["code"] == 0
    # the waveforms that the journal held at the last kill were reused, not computed again
    assert outcome["journalled"] > written[0] / 2 and not outcome["rewritten"]
    assert outcome["hashes"] == outcome["reference"]  # manifests, labels, journal and every waveform


def test_experiments_runner_killed_mid_matrix_redoes_only_unfinished_runs(scenarios):
    outcome = scenarios["experiments"].result()
    out, finished = outcome["out"], outcome["finished"]
    assert out / "runs" / "pretrain" / "w2v_L12_s0" in finished and len(finished) < 5
    # --pretrain-args / --finetune-args come after the preset's overrides, so they win
    from fairseq_ecg.experiments.runner import PRESETS

    assert (out / "runs" / "pretrain" / "w2v_L12_s0" / "command.sh").read_text().endswith(
        " ".join(PRESETS["demo"]["pretrain"]) + " optimization.max_update=4 task.segment_seconds=1 dataset.batch_size=8\n")
    assert outcome["code"] == 0, outcome["log"][-3000:]
    assert f"5 runs planned, {len(finished)} already done" in outcome["log"]
    assert "5/5 runs done, 0 failed" in outcome["log"]
    assert outcome["after"] == finished  # done and log.txt of the finished runs untouched: not run again
    assert len(outcome["done"]) == 5 and outcome["started"] <= set(outcome["done"])
    cells = sorted((r["variant"], r["finetune_leads"], r["metric"]) for r in outcome["rows"])
    from fairseq_ecg.experiments.runner import METRICS  # with the calibration's ece/brier before and after

    assert cells == sorted((v, "12", m) for v in ("random_init", "w2v") for m in METRICS["classification"])


# "Connection closed by peer" or "Read error ...: Connection reset by peer", then "This is typically
# caused by a remote worker crashing / hanging"
GLOO_PEER_LOST = re.compile(r"RuntimeError: \[.*gloo.*\] .*(closed|reset) by peer.*typically caused by a remote worker")


@pytest.mark.parametrize("failure", ["bad_manifest", "sigkill"])
def test_a_failing_worker_stops_the_data_parallel_job(scenarios, failure):
    outcome = scenarios[f"ddp_{failure}"].result()
    logs = outcome["logs"]
    assert not outcome["hung"], f"ranks {outcome['hung']} still running 120 s after the failure:\n{logs[0][-2000:]}"
    failed, survivor = (1, 0) if failure == "bad_manifest" else (0, 1)
    assert outcome["codes"][failed] == (1 if failure == "bad_manifest" else -signal.SIGKILL)
    if failure == "bad_manifest":
        assert f"{outcome['broken']}:18:" in logs[failed]  # the failing worker names its bad line
    # the surviving rank stops at its next collective with gloo's message, not after a timeout
    assert outcome["codes"][survivor] == 1
    assert GLOO_PEER_LOST.search(logs[survivor]), logs[survivor][-2000:]
