"""The experiments runner's plan (dry run) and the report it writes from results."""
import csv

import numpy as np
import pytest

from fairseq_ecg.experiments import runner as experiments
from fairseq_ecg.experiments.report import write_report


def plan_for(tmp_path, *extra):
    args = experiments.parse_args(["--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"), *extra])
    return experiments.plan(experiments.settings_from_args(args))


def test_dry_run_prints_one_ordinary_command_per_run(tmp_path, capsys):
    code = experiments.main(["--data", str(tmp_path), "--out", str(tmp_path / "out"), "--preset", "demo",
                             "--dry-run"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    programs = [line.split()[0] for line in lines]
    # 3 variants (w2v, w2v_cmsc_rlm, and experiment 3's w2v_cmsc) x 2 pretraining seeds; 3 rows (random_init,
    # w2v, w2v_cmsc_rlm) x 2 seeds x (fine-tuning on 5 lead sets, linear probe and identification on 12 and 1
    # leads) and w2v_cmsc x 2 seeds x 5 lead sets, each trained then evaluated.
    assert programs.count("fairseq-hydra-train") == 6 + 54 + 10 and programs.count("fairseq-validate") == 64
    assert not (tmp_path / "out").exists()  # a dry run writes nothing
    # closing comments (the output stays a shell script): runs per kind, and a rough cost
    summary = [line for line in lines if line.startswith("#")]
    assert summary == lines[-2:] and len(summary) == 2
    assert summary[0].startswith("# 134 runs: 6 pretraining runs (tiny size, about 250 updates each); "
                                 "40 classification runs (tiny size, 10 epochs each); 12 classification linear probe")
    assert "12 identification runs (tiny size, 2 epochs each); 64 evaluations" in summary[0]
    assert summary[1].startswith("# rough cost of 6 training runs: about") and "64 runs measured in epochs" in summary[1]


def test_dry_run_counts_updates_from_the_manifests(tmp_path, capsys):
    """With prepared manifests the epochs become updates: 40 records in batches of 16 are 3 updates an
    epoch, 10 epochs in the demo preset; the explicit max_update of --pretrain-args wins."""
    from conftest import write_random_manifest

    write_random_manifest(tmp_path / "finetune", "train", 40, samples=10)
    write_random_manifest(tmp_path / "pretrain", "train", 40, samples=10)
    code = experiments.main(["--data", str(tmp_path), "--out", str(tmp_path / "out"), "--preset", "demo",
                             "--seeds", "1", "--leads", "12", "--no-linear-probe", "--experiments", "1",
                             "--tasks", "classification",
                             "--pretrain-args", "optimization.max_update=7", "--dry-run"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    assert lines[-2] == ("# 8 runs: 2 pretraining runs (tiny size, about 7 updates each); 3 classification runs "
                         "(tiny size, about 30 updates each); 3 evaluations (fairseq-validate, one pass over the "
                         "test split each)")
    assert lines[-1].startswith("# rough cost of 5 training runs: about 1 minute of an idle 2-core CPU")


def test_plan_matrix_shapes(tmp_path):
    runs = plan_for(tmp_path, "--preset", "demo", "--experiments", "1,2", "--leads", "12,1", "--seeds", "2",
                    "--pretrain-seeds", "2",
                    "--no-linear-probe")
    pretrain = [r for r in runs if r.name.startswith("pretrain/")]
    # Experiment 1 pretrains on 12 leads, experiment 2 on each lead set: w2v and w2v_cmsc_rlm on 12 and 1 leads.
    assert len(pretrain) == 2 * 2 * 2
    assert runs.index(pretrain[-1]) < min(runs.index(r) for r in runs if not r.name.startswith("pretrain/"))
    evaluations = [r for r in runs if r.labels is not None]
    exp2 = [r.labels for r in evaluations if r.labels["experiment"] == 2]
    assert exp2 and all(l["pretrain_leads"] == l["finetune_leads"] for l in exp2)
    baseline = [r for r in runs if r.name.startswith("classification/random_init") and not r.name.endswith("evaluate")]
    assert baseline and all("model.init=random" in r.command for r in baseline)
    # the baseline's CNN trains (fairseq-signals' from-scratch value); a pretrained CNN stays frozen
    assert all("model.feature_grad_mult=0.1" in r.command for r in baseline)
    pretrained = [r for r in runs if r.name.startswith(("classification/w2v", "identification/w2v"))
                  and not r.name.endswith("evaluate")]
    assert pretrained and all("model.feature_grad_mult=0.0" in r.command for r in pretrained)
    for run in runs:
        for dependency in run.after:
            assert runs.index(next(r for r in runs if r.name == dependency)) < runs.index(run)


def test_rlm_sweep_adds_probabilities(tmp_path):
    runs = plan_for(tmp_path, "--preset", "demo", "--experiments", "3", "--variants", "w2v_cmsc_rlm",
                    "--rlm-probs", "0.25,0.75", "--leads", "12", "--seeds", "1", "--no-linear-probe")
    pretrain = sorted(r.name for r in runs if r.name.startswith("pretrain/"))
    assert pretrain == ["pretrain/w2v_cmsc_L12_s0", "pretrain/w2v_cmsc_rlm_L12_s0",
                        "pretrain/w2v_cmsc_rlm_p0.25_L12_s0", "pretrain/w2v_cmsc_rlm_p0.75_L12_s0"]
    sweep = next(r for r in runs if r.name == "pretrain/w2v_cmsc_rlm_p0.25_L12_s0")
    assert "model.rlm_prob=0.25" in sweep.command


def test_unknown_variant_is_a_one_line_error(tmp_path):
    with pytest.raises(SystemExit, match="no pretraining config nope.yaml"):
        plan_for(tmp_path, "--variants", "nope")


def test_metrics_parsed_from_fairseq_validate_output():
    log = ("[2026][valid][INFO] - valid on 'test' subset | loss 0.31 | challenge_metric -0.0125 | "
           "auroc 0.81234 | f1 0.5 | wps 3e+03")
    assert experiments.parse_metrics(log) == {"loss": 0.31, "challenge_metric": -0.0125, "auroc": 0.81234,
                                              "f1": 0.5, "wps": 3000.0}


def test_report_cell_with_one_seed_says_n_1():
    from fairseq_ecg.experiments.report import cell

    assert cell([0.5]) == "0.500 (n=1)"  # not "0.500 ± 0.000": one seed has no spread
    assert cell([0.5, 0.7]) == "0.600 ± 0.141 (n=2)"
    assert cell([]) == "–"


def test_report_tables_and_plots(tmp_path):
    rows = []
    for seed, (random_value, pretrained_value) in enumerate([(0.60, 0.80), (0.64, 0.84)]):
        for variant, value in (("random_init", random_value), ("w2v_cmsc_rlm", pretrained_value)):
            for leads in ("12", "1"):
                rows.append(dict(experiment=1, variant=variant, pretrain_leads="12", finetune_leads=leads,
                                 task="classification", metric="auroc", value=value, seed=seed))
    experiments.write_results(rows, tmp_path)
    with open(tmp_path / "results.csv") as handle:
        assert list(csv.DictReader(handle))[0].keys() == set(experiments.RESULT_COLUMNS)
    report = write_report(rows, tmp_path).read_text()
    assert "| random_init | 0.620 ± 0.028 (n=2) | 0.620 ± 0.028 (n=2) |" in report
    assert "| w2v_cmsc_rlm | 0.820 ± 0.028 (n=2) | 0.820 ± 0.028 (n=2) |" in report
    assert report.index("12 leads") < report.index("1 lead |")
    assert (tmp_path / "exp1_classification_auroc.png").stat().st_size > 1000


def test_fine_tuning_seeds_share_pretraining_seeds_round_robin(tmp_path):
    runs = plan_for(tmp_path, "--preset", "demo", "--variants", "w2v", "--leads", "12", "--seeds", "3",
                    "--pretrain-seeds", "2", "--no-linear-probe", "--experiments", "1")
    assert sorted(r.name for r in runs if r.name.startswith("pretrain/")) == ["pretrain/w2v_L12_s0", "pretrain/w2v_L12_s1"]
    third = next(r for r in runs if r.name == "classification/w2v_P12_F12_s2")
    assert third.after == ["pretrain/w2v_L12_s0"]


def test_matrix_runs_each_as_soon_as_it_can_and_a_failure_blocks_what_needs_it(tmp_path, capsys):
    """Real processes: a failed run blocks its dependents (transitively), the rest still runs, and a
    second call repeats no finished run."""
    log = tmp_path / "ran.txt"

    def run(name, code=0, after=()):
        script = f"open({str(log)!r}, 'a').write({name!r} + '\\n'); raise SystemExit({code})"
        return experiments.Run(name, ["python", "-c", script], after=list(after))

    runs = [run("pretrain/a"), run("b", code=3, after=["pretrain/a"]), run("c", after=["b"]),
            run("d", after=["c"]), run("e", after=["pretrain/a"])]
    failed = experiments.run_matrix(runs, tmp_path, jobs=2)
    assert sorted(failed) == ["b", "c", "d"]
    assert sorted(log.read_text().split()) == ["b", "e", "pretrain/a"]
    assert (tmp_path / "runs" / "e" / "done").exists() and not (tmp_path / "runs" / "b" / "done").exists()
    assert "[experiments] 2/5 runs done" in capsys.readouterr().out  # progress as each run ends
    log.unlink()
    assert sorted(experiments.run_matrix(runs, tmp_path, jobs=1)) == ["b", "c", "d"]
    assert log.read_text().split() == ["b"]  # finished runs are not repeated


def test_a_run_is_done_only_with_its_outputs_its_command_and_the_runs_it_was_built_on(tmp_path):
    """Real processes. A done marker is not trusted alone: a run whose output is gone runs again
    (resuming), and so do the runs built on it (afresh); a run whose command changed is refused in
    one line naming the change until --rerun-changed, which removes its checkpoints before it runs
    again; a run that exits 0 without its output failed, and says so."""
    log = tmp_path / "ran.txt"

    def run(name, after=(), extra="", write=True):
        # each run logs its name and whether it found a checkpoint of an earlier run, then writes one
        script = (f"import os; open({str(log)!r}, 'a').write({name!r} + ' ' + "
                  f"str(os.path.exists('{tmp_path}/runs/{name}/checkpoint_best.pt')) + '\\n')")
        if write:
            script += f"; open('{tmp_path}/runs/{name}/checkpoint_best.pt', 'w').write({extra!r})"
        return experiments.Run(name, ["python", "-c", script], after=list(after), outputs=("checkpoint_best.pt",))

    def ran():
        lines = log.read_text().splitlines() if log.exists() else []
        log.unlink(missing_ok=True)
        return sorted(lines)

    runs = [run("pretrain/a"), run("b", after=["pretrain/a"]), run("c", after=["b"]), run("d")]
    assert experiments.run_matrix(runs, tmp_path, jobs=2) == {}
    assert ran() == ["b False", "c False", "d False", "pretrain/a False"]
    assert experiments.run_matrix(runs, tmp_path, jobs=2) == {} and ran() == []  # all done
    (tmp_path / "runs" / "b" / "checkpoint_best.pt").unlink()
    assert experiments.run_matrix(runs, tmp_path, jobs=1) == {}
    assert ran() == ["b False", "c False"]  # c was built on the b that is gone: afresh
    changed = [run("pretrain/a", extra="other settings"), *runs[1:]]
    with pytest.raises(experiments.ChangedRuns, match=r"^1 run in .* ran with another command \(first: pretrain/a: "
                       r"now .*other settings.*, was .*\); add --rerun-changed"):
        experiments.run_matrix(changed, tmp_path, jobs=1)
    assert ran() == []  # nothing ran
    assert experiments.run_matrix(changed, tmp_path, jobs=1, rerun_changed=True) == {}
    assert ran() == ["b False", "c False", "pretrain/a False"]  # afresh: no earlier checkpoint to resume
    assert experiments.run_matrix(changed, tmp_path, jobs=1) == {} and ran() == []
    (tmp_path / "runs" / "d" / "done").unlink()  # d killed before it finished: it resumes
    assert experiments.run_matrix(changed, tmp_path, jobs=1) == {} and ran() == ["d True"]
    silent = [run("e", write=False), run("f", after=["e"])]
    failed = experiments.run_matrix(silent, tmp_path, jobs=1)
    assert failed == {"e": f"exit 0 but no checkpoint_best.pt in {tmp_path / 'runs' / 'e'}; see "
                           f"{tmp_path / 'runs' / 'e' / 'log.txt'}",
                      "f": "not run: it needs e, which failed"}


def test_an_epoch_limit_under_the_checkpoint_interval_moves_the_interval(tmp_path):
    """The README's own override, --finetune-args 'optimization.max_epoch=2', under the demo's
    interval of 5 epochs between checkpoints and validations: the fine-tunings save and validate at
    epoch 2, said once; identification (2 epochs, interval 2) and pretraining (max_update) keep theirs."""
    runs = plan_for(tmp_path, "--preset", "demo", "--variants", "w2v", "--leads", "12", "--seeds", "1",
                    "--experiments", "1", "--finetune-args", "optimization.max_epoch=2")
    by_kind = {}
    for r in runs:
        if r.labels is None:
            by_kind.setdefault(r.name.split("/")[0], []).append(r)
    for r in by_kind["classification"] + by_kind["classification_linear_probe"]:
        assert r.command[-2:] == ["checkpoint.save_interval=2", "dataset.validate_interval=2"]
        assert "so they would write no checkpoint_best.pt" in r.notice
    for r in by_kind["identification"] + by_kind["pretrain"]:
        assert r.notice is None and not r.command[-1].startswith("dataset.validate_interval")
    assert all(r.outputs == ("checkpoint_best.pt",) for rs in by_kind.values() for r in rs)


def test_report_lists_the_cells_without_a_figure_and_why(tmp_path):
    runs = [experiments.Run("x/evaluate", ["true"], labels=dict(experiment=1, variant="w2v", pretrain_leads="12",
                                                                  finetune_leads="6", task="classification", seed=1),
                            outputs=("metrics.json",))]
    missing = experiments.missing_cells(runs, tmp_path, {"x/evaluate": "not run: it needs x, which failed"})
    report = write_report([], tmp_path, missing=missing).read_text()
    assert ("- experiment 1, classification, w2v, pretrained on 12 leads, 6 leads, seed 1: not run: it needs x, "
            "which failed") in report
    assert "1 planned evaluation gave no figure" in report


def test_matrix_refuses_a_plan_with_unknown_dependencies(tmp_path):
    with pytest.raises(RuntimeError, match="not in the plan"):
        experiments.run_matrix([experiments.Run("x", ["true"], after=["missing"])], tmp_path, jobs=1)


def test_a_task_with_an_empty_training_manifest_is_left_out_with_a_notice(tmp_path, capsys):
    """PhysioNet/CinC 2021 has no patient ids: its identify/train.tsv is empty."""
    from fairseq_ecg.manifest import write_manifest

    (tmp_path / "identify").mkdir()
    write_manifest(tmp_path / "identify" / "train.tsv", tmp_path, [])
    code = experiments.main(["--data", str(tmp_path), "--out", str(tmp_path / "out"), "--preset", "paper",
                             "--variants", "w2v", "--leads", "12", "--seeds", "1", "--dry-run"])
    captured = capsys.readouterr()
    assert code == 0
    assert "--task ecg_classification" in captured.out and "ecg_identification" not in captured.out
    assert f"identification left out: {tmp_path / 'identify' / 'train.tsv'} holds no record" in captured.err


def test_finished_matrix_prints_a_quiet_report_and_its_path(tmp_path):
    """The real console script over a matrix whose runs all finished (done markers and metrics, as
    execute() leaves them): it only collects and reports, and its output holds no DEBUG lines
    (matplotlib logs every font at DEBUG once fairseq set the root logger so), no tensorboardX
    notice, cells with one seed read n=1, and the last line names report.md."""
    from conftest import run_cli, write_random_manifest

    data, out = tmp_path / "data", tmp_path / "out"
    write_random_manifest(data / "pretrain", "train", 2, samples=10)
    write_random_manifest(data / "finetune", "train", 2, samples=10)
    args = ["--data", str(data), "--out", str(out), "--preset", "demo", "--variants", "w2v", "--leads", "12",
            "--seeds", "1", "--no-linear-probe", "--tasks", "classification", "--experiments", "1"]
    for run in experiments.plan(experiments.settings_from_args(experiments.parse_args(args))):
        folder = run.folder(out)
        folder.mkdir(parents=True)
        (folder / "done").write_text("earlier\n")  # a marker of an earlier version: a time only
        for output in run.outputs:
            (folder / output).write_bytes(b"")
        if run.labels is not None:
            (folder / "metrics.json").write_text('{"auroc": 0.75, "challenge_metric": 0.1, "f1": 0.5}\n')
    result = run_cli("fairseq-ecg-experiments", *args)
    output = result.stdout + result.stderr
    assert "DEBUG" not in output and "tensorboardX" not in output, output[:2000]
    assert "| w2v | 0.750 (n=1) |" in result.stdout and "± 0.000" not in result.stdout
    assert result.stdout.strip().splitlines()[-1] == (f"[experiments] report: {out / 'report.md'} "
                                                      f"(results: {out / 'results.csv'})")


def test_identification_is_reported_on_the_test_patients(tmp_path):
    """checkpoint_best is chosen on identify/valid_*; the reported figures come from other patients."""
    runs = plan_for(tmp_path, "--preset", "paper", "--variants", "w2v", "--leads", "12", "--seeds", "1",
                    "--tasks", "identification")
    evaluations = [r for r in runs if r.labels is not None]
    assert evaluations and all(r.labels["task"] == "identification" for r in evaluations)
    for run in evaluations:
        assert run.command[run.command.index("--valid-subset") + 1] == "test"


def test_an_identify_folder_prepared_before_the_test_split_is_refused_in_one_line(tmp_path):
    from fairseq_ecg.manifest import ManifestRow, write_manifest

    (tmp_path / "identify").mkdir()
    row = ManifestRow("waves/a.npy", 5000, "1" * 12, "p1", 500.0, "a")
    for name in ("train", "valid_gallery", "valid_probe"):  # what older preparations wrote
        write_manifest(tmp_path / "identify" / f"{name}.tsv", tmp_path, [row])
    with pytest.raises(SystemExit, match="test_gallery.tsv not found.*re-run the same fairseq-ecg-manifest command"):
        experiments.main(["--data", str(tmp_path), "--out", str(tmp_path / "out"), "--preset", "paper",
                          "--variants", "w2v", "--leads", "12", "--seeds", "1", "--dry-run"])
    for name in ("test_gallery", "test_probe"):
        write_manifest(tmp_path / "identify" / f"{name}.tsv", tmp_path, [row])
    assert experiments.main(["--data", str(tmp_path), "--out", str(tmp_path / "out"), "--preset", "paper",
                             "--variants", "w2v", "--leads", "12", "--seeds", "1", "--dry-run"]) == 0


def test_demo_plan_repeats_pretraining_tunes_thresholds_and_identifies(tmp_path):
    """The demo preset: two pretraining seeds per variant (the spread includes pretraining), classification
    fine-tuned on every lead set with thresholds tuned on valid, the linear probe and identification on 12
    and 1 leads (time); experiment 3 (with and without RLM) for W2V+CMSC, fine-tuned, shares experiment 1's
    runs rather than repeating them; ``--experiments 1`` leaves it out."""
    runs = plan_for(tmp_path, "--preset", "demo", "--experiments", "1")
    pretrain = sorted(r.name for r in runs if r.name.startswith("pretrain/"))
    assert pretrain == [f"pretrain/{v}_L12_s{s}" for v in ("w2v", "w2v_cmsc_rlm") for s in (0, 1)]
    names = {r.name: r for r in runs}
    assert names["classification/w2v_P12_F12_s1"].after == ["pretrain/w2v_L12_s1"]
    classify = [r for r in runs if r.name.startswith("classification") and r.labels is None]
    assert classify and all("task.tune_thresholds=true" in r.command for r in classify)
    cells = {(l["task"], l["variant"], l["finetune_leads"], l["seed"]) for r in runs if (l := r.labels)}
    rows = ("random_init", "w2v", "w2v_cmsc_rlm")
    assert cells == ({("classification", v, leads, s) for v in rows for leads in ("12", "6", "3", "2", "1")
                      for s in (0, 1)}
                     | {(task, v, leads, s) for task in ("classification_linear_probe", "identification")
                        for v in rows for leads in ("12", "1") for s in (0, 1)})
    assert all(not r.also for r in runs)

    runs = plan_for(tmp_path, "--preset", "demo")
    pretrain = sorted(r.name for r in runs if r.name.startswith("pretrain/"))
    assert pretrain == [f"pretrain/{v}_L12_s{s}" for v in ("w2v", "w2v_cmsc", "w2v_cmsc_rlm") for s in (0, 1)]
    exp3 = [l for r in runs if r.labels for l in [r.labels, *r.also] if l["experiment"] == 3]
    assert {(l["variant"], l["task"]) for l in exp3} == {
        (v, "classification") for v in ("random_init", "w2v_cmsc", "w2v_cmsc_rlm")}
    assert len(exp3) == 3 * 5 * 2
    shared = {r.name: r for r in runs}["classification/w2v_cmsc_rlm_P12_F1_s0/evaluate"]
    assert shared.labels["experiment"] == 1 and [l["experiment"] for l in shared.also] == [3]
    # an explicit --leads runs every mode on those lead sets
    runs = plan_for(tmp_path, "--preset", "demo", "--leads", "6")
    assert {l["task"] for r in runs if (l := r.labels)} == {"classification", "classification_linear_probe",
                                                             "identification"}


def test_shared_run_reports_under_each_experiment(tmp_path):
    run = experiments.Run("classification/x/evaluate", ["true"], labels=dict(
        experiment=1, variant="w2v_cmsc_rlm", pretrain_leads="12", finetune_leads="1", task="classification", seed=0))
    run.also.append({**run.labels, "experiment": 3})
    folder = run.folder(tmp_path)
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text('{"auroc": 0.7, "loss": 1.0}')
    rows = experiments.collect([run], tmp_path)
    assert [(r["experiment"], r["metric"], r["value"]) for r in rows] == [(1, "auroc", 0.7), (3, "auroc", 0.7)]


def test_report_shows_bootstrap_intervals_and_paired_differences(tmp_path):
    """From the evaluations' per-record results: each headline cell gets the interval of its seeds'
    mean over resampled test patients, and a variant its paired difference to random_init; a real
    gap is starred, a variant equal to the baseline is not (issue 19 item 2)."""
    from fairseq_ecg.metrics.record_results import ClassificationResults, write_classification_results

    rng = np.random.default_rng(0)
    records, classes = 240, 3
    targets = rng.random((records, classes)) < 0.3
    patients = [f"p{i // 2}" for i in range(records)]
    names = [f"r{i}" for i in range(records)]
    rows = []
    for seed in range(2):
        noise = rng.normal(size=(records, classes))
        for variant, scale in (("random_init", 1.6), ("w2v_cmsc_rlm", 0.6), ("same_as_random", 1.6)):
            folder = tmp_path / "runs" / f"{variant}_s{seed}" / "evaluate"
            folder.mkdir(parents=True)
            probs = 1 / (1 + np.exp(-(targets * 1.0 - 0.5 + scale * (noise if variant != "w2v_cmsc_rlm"
                                                                      else rng.normal(size=noise.shape)))))
            write_classification_results(folder / "test.results.csv", ClassificationResults(
                names, patients, [f"c{k}" for k in range(classes)], probs, targets, np.ones_like(targets)))
            rows.append(dict(experiment=1, variant=variant, pretrain_leads="12", finetune_leads="12",
                             task="classification", metric="auroc", value=0.7, seed=seed, results=str(folder)))
    report = write_report(rows, tmp_path).read_text()
    assert "## Test sampling: bootstrap intervals and paired differences" in report
    table = report[report.index("95% bootstrap interval"):]
    w2v = next(line for line in table.splitlines() if line.startswith("| w2v_cmsc_rlm |") and "(n=2)" in line)
    low, high = (float(x) for x in w2v.split("[")[1].split("]")[0].split(","))
    assert 0.5 < low < high < 1
    paired = table[table.index("Paired difference"):]
    assert next(l for l in paired.splitlines() if l.startswith("| w2v_cmsc_rlm |")).endswith("* |")
    same = next(l for l in paired.splitlines() if l.startswith("| same_as_random |"))
    assert "+0.000 [+0.000, +0.000]" in same and "*" not in same


def test_report_names_the_leads_the_test_records_really_have(tmp_path):
    """CPSC's 2-lead records were reported under "12 leads" without a word (issue 23 item 2)."""
    from fairseq_ecg.manifest import ManifestRow, write_manifest

    data = tmp_path / "data"
    (data / "finetune").mkdir(parents=True)
    rows = [ManifestRow(f"r{i}.npy", 10, mask, record=f"r{i}")
            for i, mask in enumerate(["110000000000"] * 3 + ["1" * 12])]
    write_manifest(data / "finetune" / "test.tsv", data / "finetune", rows)
    args = experiments.parse_args(["--data", str(data), "--out", str(tmp_path / "out"), "--tasks", "classification"])
    notes = experiments.test_leads_notes(experiments.settings_from_args(args))
    assert notes == ["The classification test records do not all have 12 leads: 3 have I,II; 1 have all 12 leads. "
                     "A column names the leads the model is fed; a lead a record lacks goes in as zeros."]
    assert notes[0] in write_report([], tmp_path, notes=notes).read_text()


def test_a_dry_run_checks_that_the_data_folder_exists(tmp_path):
    with pytest.raises(SystemExit, match=r"--data .*nowhere: no such folder; prepare the archive first"):
        experiments.main(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out"), "--dry-run"])
