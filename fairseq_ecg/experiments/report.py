"""The experiments' report: paper-style tables (rows: variants, columns: lead sets, cells: mean ±
standard deviation over seeds) in ``report.md``, PNG plots made with matplotlib, and for each
headline figure its 95% bootstrap interval over the test patients and the paired difference to the
random initialisation (fairseq_ecg.metrics.bootstrap), computed from the evaluations' per-record results.

The spread over seeds says how much training varies; the bootstrap interval says how much the test
sample does (the seeds' mean on the same resampled patients); a paired interval that excludes 0
says that a difference between two variants on the same test records is more than test sampling.
"""
from collections import defaultdict
from pathlib import Path
from statistics import mean, stdev
from typing import Optional

import numpy as np

from ..metrics.bootstrap import (DEFAULT_RESAMPLES, identification_resamples, interval, paired_difference, patient_counts,
                        row_nanmean, seed_mean, weighted_auroc)
from ..metrics.calibration import BINS, reliability_curve
from ..metrics.identification import identification_metrics
from ..leads import PRESETS
from ..metrics.record_results import read_classification_results, read_identification_results

LEAD_ORDER = list(PRESETS)  # 12, 6, 4, 3, 2, 1; explicit lists after them
HEADLINE = {"classification": "auroc", "classification_linear_probe": "auroc", "identification": "top1_accuracy"}
EXPERIMENT_TITLES = {
    1: "Experiment 1: pretrained on 12 leads, fine-tuned and tested on each lead set",
    2: "Experiment 2: pretrained and fine-tuned on the same lead set",
    3: "Experiment 3: with and without random lead masking (and the RLM probability sweep)",
}


def _lead_key(name: str):
    return (LEAD_ORDER.index(name), name) if name in LEAD_ORDER else (len(LEAD_ORDER), name)


def _lead_header(name: str) -> str:
    return name if not name.isdigit() else ("1 lead" if name == "1" else f"{name} leads")


def _variant_key(name: str):
    return (name != "random_init", name)


def summarise(rows: list[dict]) -> dict:
    """(experiment, task, metric) -> variant -> lead set -> list of values over seeds."""
    table = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for row in rows:
        table[(int(row["experiment"]), row["task"], row["metric"])][row["variant"]][row["finetune_leads"]].append(
            float(row["value"]))
    return table


def cell(values: list[float]) -> str:
    """``mean ± std (n=seeds)``; one seed has no spread to show, so it reads ``value (n=1)``."""
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f} (n=1)"
    return f"{mean(values):.3f} ± {stdev(values):.3f} (n={len(values)})"


def markdown_table(by_variant: dict) -> str:
    leads = sorted({lead for per_lead in by_variant.values() for lead in per_lead}, key=_lead_key)
    lines = ["| variant | " + " | ".join(_lead_header(lead) for lead in leads) + " |",
             "|---" * (len(leads) + 1) + "|"]
    for variant in sorted(by_variant, key=_variant_key):
        lines.append(f"| {variant} | " + " | ".join(cell(by_variant[variant].get(lead, [])) for lead in leads) + " |")
    return "\n".join(lines)


def plot(by_variant: dict, title: str, ylabel: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    for variant in sorted(by_variant, key=_variant_key):
        leads = sorted(by_variant[variant], key=_lead_key)
        means = [mean(by_variant[variant][lead]) for lead in leads]
        spreads = [stdev(v) if len(v) > 1 else 0.0 for v in (by_variant[variant][lead] for lead in leads)]
        axes.errorbar(range(len(leads)), means, yerr=spreads, marker="o", capsize=3, label=variant)
        axes.set_xticks(range(len(leads)), leads)
    axes.set_xlabel("leads")
    axes.set_ylabel(ylabel)
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_rlm_sweep(table: dict, out: Path) -> list[Path]:
    """Score against the RLM probability (experiment 3 variants named ``..._pP``), per lead set."""
    paths = []
    for (experiment, task, metric), by_variant in table.items():
        if experiment != 3 or metric != HEADLINE.get(task):
            continue
        sweep = {v: leads for v, leads in by_variant.items() if "_p" in v}
        if not sweep:
            continue
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(figsize=(6, 4))
        leads = sorted({lead for per in sweep.values() for lead in per}, key=_lead_key)
        probabilities = sorted(sweep, key=lambda v: float(v.rsplit("_p", 1)[1]))
        for lead in leads:
            xs = [float(v.rsplit("_p", 1)[1]) for v in probabilities if lead in sweep[v]]
            ys = [mean(sweep[v][lead]) for v in probabilities if lead in sweep[v]]
            axes.plot(xs, ys, marker="o", label=f"{lead} leads")
        axes.set_xlabel("RLM probability p")
        axes.set_ylabel(metric)
        axes.set_title(f"{task}: {metric} against the RLM probability", fontsize=10)
        axes.legend(fontsize=8)
        axes.grid(alpha=0.3)
        path = out / f"rlm_sweep_{task}.png"
        figure.tight_layout()
        figure.savefig(path, dpi=110)
        plt.close(figure)
        paths.append(path)
    return paths


BASELINE = "random_init"


def headline_resamples(folder: Path, task: str, resamples: int, seed: int) -> Optional[tuple[tuple, float, np.ndarray]]:
    """(the test records, the headline metric on them, the metric per resample of the test patients)
    of one evaluation folder, from its per-record results; None when it has none (an evaluation
    from before them)."""
    files = sorted(Path(folder).glob("*.results.csv"))
    if len(files) != 1:
        return None
    subset = files[0].name[:-len(".results.csv")]
    if task.startswith("identification"):
        saved = read_identification_results(folder, subset)
        patients = np.array(saved.patients)
        point = identification_metrics(saved.embeddings, saved.probe, patients)[0]
        values = identification_resamples(saved.embeddings, saved.probe, patients, resamples, seed)
        return tuple(saved.records), point, values["top1_accuracy"]
    saved = read_classification_results(files[0])
    counts = np.vstack([np.ones(len(saved.records)), patient_counts(saved.patients, resamples, seed)])
    macro = row_nanmean(weighted_auroc(saved.targets, saved.probs, counts, saved.known))
    return tuple(saved.records), float(macro[0]), macro[1:]


def bootstrap_tables(rows: list[dict], resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> list[str]:
    """Markdown: per experiment and task, the headline metric's 95% interval per cell (the mean over
    seeds on each resample) and its paired difference to ``random_init`` on the same resamples."""
    cells = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for row in rows:
        if row["metric"] == HEADLINE.get(row["task"]) and row.get("results"):
            cells[(int(row["experiment"]), row["task"])][row["variant"]][row["finetune_leads"]].append(row["results"])
    lines = []
    for (experiment, task), by_variant in sorted(cells.items()):
        values, missing = {}, 0
        for variant, per_lead in by_variant.items():
            for leads, folders in per_lead.items():
                found = [headline_resamples(Path(f), task, resamples, seed) for f in folders]
                missing += sum(f is None for f in found)
                found = [f for f in found if f is not None]
                if found and all(f[0] == found[0][0] for f in found):
                    values[(variant, leads)] = (found[0][0], float(np.mean([f[1] for f in found])),
                                                seed_mean([f[2] for f in found]), len(found))
        if not values:
            continue
        leads_order = sorted({leads for _, leads in values}, key=_lead_key)
        variants = sorted({variant for variant, _ in values}, key=_variant_key)
        metric = HEADLINE[task]
        header = "| variant | " + " | ".join(_lead_header(leads) for leads in leads_order) + " |"
        rule = "|---" * (len(leads_order) + 1) + "|"
        lines += [f"### Experiment {experiment}, {task}: {metric}, 95% bootstrap interval", "",
                  f"Test patients resampled {resamples} times (seed {seed}); each cell: the mean over seeds "
                  "on the test records [2.5th, 97.5th percentile of that mean over the resamples]." + (f" {missing} evaluations had no per-record results and are "
                                                   "left out." if missing else ""), "", header, rule]
        for variant in variants:
            row = []
            for leads in leads_order:
                if (variant, leads) not in values:
                    row.append("–")
                    continue
                _, point, per_resample, n = values[(variant, leads)]
                low, high = interval(per_resample)
                row.append(f"{point:.3f} [{low:.3f}, {high:.3f}] (n={n})")
            lines.append(f"| {variant} | " + " | ".join(row) + " |")
        lines.append("")
        if not any(variant == BASELINE for variant, _ in values) or len(variants) < 2:
            continue
        lines += [f"Paired difference to {BASELINE} on the same resampled test patients (difference of the seed means "
                  "[95% interval]; "
                  "* where the interval excludes 0):", "", header, rule]
        for variant in [v for v in variants if v != BASELINE]:
            row = []
            for leads in leads_order:
                ours, base = values.get((variant, leads)), values.get((BASELINE, leads))
                if ours is None or base is None or ours[0] != base[0]:
                    row.append("–" if ours is None or base is None else "other test records")
                    continue
                _, low, high = paired_difference(ours[2], base[2])
                real = " *" if low > 0 or high < 0 else ""
                row.append(f"{ours[1] - base[1]:+.3f} [{low:+.3f}, {high:+.3f}]{real}")
            lines.append(f"| {variant} | " + " | ".join(row) + " |")
        lines.append("")
    return lines


def plot_reliability(rows: list[dict], out: Path) -> list[Path]:
    """Reliability diagrams of experiment 1's fine-tuned classifiers on the test patients, one panel
    per lead set, one curve per variant: every (record, class) pair of every seed pooled, in the
    calibration's equal-width bins; dashed, the same records before calibration (where it applied)."""
    folders = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if (int(row["experiment"]) == 1 and row["task"] == "classification" and row.get("results")
                and row["metric"] == HEADLINE["classification"]):
            folders[row["finetune_leads"]][row["variant"]].append(Path(row["results"]))
    if not folders:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    leads = sorted(folders, key=_lead_key)
    figure, panels = plt.subplots(1, len(leads), figsize=(3.2 * len(leads), 3.4), squeeze=False)
    for axes, lead in zip(panels[0], leads):
        for number, variant in enumerate(sorted(folders[lead], key=_variant_key)):
            saved = [read_classification_results(f) for folder in folders[lead][variant]
                     for f in sorted(folder.glob("*.results.csv"))]
            if not saved:
                continue
            targets, known = (np.concatenate([getattr(s, name) for s in saved]) for name in ("targets", "known"))
            colour = f"C{number}"
            for probs, style in ((np.concatenate([s.probs for s in saved]), "-"),
                                 (None if any(s.uncalibrated is None for s in saved)
                                  else np.concatenate([s.uncalibrated for s in saved]), "--")):
                if probs is not None:
                    confidence, frequency, counts = reliability_curve(targets, probs, known)
                    filled = counts > 0  # the bins with pairs in them, joined
                    axes.plot(confidence[filled], frequency[filled], style, marker="o", markersize=3, color=colour,
                              label=variant if style == "-" else None)
        axes.plot([0, 1], [0, 1], ":", color="grey")
        axes.set_title(_lead_header(lead), fontsize=9)
        axes.set_xlabel("mean probability")
        axes.grid(alpha=0.3)
    panels[0][0].set_ylabel("positive frequency")
    panels[0][0].legend(fontsize=7)
    figure.suptitle(f"Experiment 1, classification on the test patients: reliability ({BINS} bins; dashed: "
                    "before calibration)", fontsize=9)
    figure.tight_layout()
    path = out / "exp1_classification_reliability.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return [path]


def missing_lines(missing: list[tuple[dict, str]]) -> list[str]:
    """The report's list of the cells without a figure (a seed short in a cell is one of them)."""
    if not missing:
        return []
    lines = ["## Missing cells", "", f"{len(missing)} planned evaluation{'s' if len(missing) != 1 else ''} gave "
             "no figure, so the tables below lack them (a cell with fewer seeds than planned, or none):", ""]
    for labels, reason in missing:
        lines.append(f"- experiment {labels['experiment']}, {labels['task']}, {labels['variant']}, "
                     f"pretrained on {_lead_header(labels['pretrain_leads'])}, {_lead_header(labels['finetune_leads'])}, "
                     f"seed {labels['seed']}: {reason}")
    return lines + [""]


def write_report(rows: list[dict], out: Path, missing: list[tuple[dict, str]] = (),
                 notes: list[str] = ()) -> Path:
    """Write ``report.md`` and the plots; returns the report's path. ``missing``: the planned
    cells (their labels) that have no figure, with why (experiments.missing_cells); ``notes``:
    paragraphs on the data said before the tables (experiments.test_leads_notes)."""
    table = summarise(rows)
    lines = ["# Results", "", f"{len(rows)} measurements from `results.csv`. Cells: mean ± standard deviation over seeds, n = the number of seeds "
             "(one seed: no spread).",
             "Every figure is on the test patients (`finetune/test.tsv`, `identify/test_gallery.tsv` + "
             "`test_probe.tsv`); `checkpoint_best.pt` was chosen on the valid patients, who are others.", "",
             *[line for note in notes for line in (note, "")], *missing_lines(list(missing))]
    for experiment in sorted({key[0] for key in table}):
        lines += [f"## {EXPERIMENT_TITLES.get(experiment, f'Experiment {experiment}')}", ""]
        for (exp, task, metric) in sorted(k for k in table if k[0] == experiment):
            lines += [f"### {task}: {metric}", "", markdown_table(table[(exp, task, metric)]), ""]
            if metric == HEADLINE.get(task):
                image = out / f"exp{experiment}_{task}_{metric}.png"
                plot(table[(exp, task, metric)], f"Experiment {experiment}, {task}: {metric}", metric, image)
                lines += [f"![{task} {metric}]({image.name})", ""]
    for path in plot_rlm_sweep(table, out):
        lines += [f"![RLM sweep]({path.name})", ""]
    for path in plot_reliability(rows, out):
        lines += ["## Calibration", "", "The `ece` and `brier` tables above are of the probabilities as scored (through "
                  "the calibration fitted on the valid patients), `ece_uncalibrated` and `brier_uncalibrated` of the "
                  f"same records before it; ECE: {BINS} equal-width bins per class, averaged over classes.", "",
                  f"![reliability]({path.name})", ""]
    intervals = bootstrap_tables(rows)
    if intervals:
        lines += ["## Test sampling: bootstrap intervals and paired differences", "", *intervals]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report
