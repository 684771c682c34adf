"""The experiments' report: paper-style tables (rows: variants, columns: lead sets, cells: mean ±
standard deviation over seeds) in ``report.md``, and PNG plots made with matplotlib."""
from collections import defaultdict
from pathlib import Path
from statistics import mean, stdev

from .leads import PRESETS

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


def write_report(rows: list[dict], out: Path) -> Path:
    """Write ``report.md`` and the plots; returns the report's path."""
    table = summarise(rows)
    lines = ["# Results", "", f"{len(rows)} measurements from `results.csv`. Cells: mean ± standard deviation over seeds, n = the number of seeds "
             "(one seed: no spread).",
             "Every figure is on the test patients (`finetune/test.tsv`, `identify/test_gallery.tsv` + "
             "`test_probe.tsv`); `checkpoint_best.pt` was chosen on the valid patients, who are others.", ""]
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
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report
