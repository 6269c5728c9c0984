"""``run_benchmark``: the reference once, the optional learning-rate selection, every run, then the report folder.

Runs: every row × variant × seed, except the ablation rows (``scheme:ablation``), which run on the first variant
only, and so do the rows whose scheme trains models first (``trained_models``: three trainings per run) unless
``BenchSettings.trained_models_all_variants``. With ``tune`` each row first trains on the first variant and seed at
every learning rate of :data:`~tokenweight.keyfact.bench.settings.TUNE_FACTORS` × the budget's, measured on a validation set
KeyFact's ``validation`` split (disjoint from the evaluation set), and keeps the one with the best greedy ``key_acc`` for all
its runs.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from tokenweight.keyfact.bench.analysis import analyse
from tokenweight.keyfact.bench.plots import plot_curves, plot_forest, plot_heatmaps
from tokenweight.keyfact.bench.report import markdown_report
from tokenweight.keyfact.bench.rows import baseline_label, bench_row
from tokenweight.keyfact.bench.runs import execute, reference_items
from tokenweight.keyfact.bench.settings import TUNE_FACTORS, BenchSettings, run_config
from tokenweight.keyfact.bench.trained_models import trained_model_rows
from tokenweight.errors import UserError


def _task(settings, base_path, label, variant, seed, output_dir, learning_rate, heatmap_pairs=0, validation=False):
    return {"settings": settings, "base_path": base_path, "label": label, "variant": variant, "seed": seed,
            "output_dir": str(output_dir / ("tune" if validation else "runs") / variant / f"{label}-seed{seed}"
                              f"{f'-lr{learning_rate:g}' if validation else ''}"),
            "learning_rate": learning_rate, "heatmap_pairs": heatmap_pairs,
            "eval_split": "validation" if validation else "eval",
            "eval_size": settings.validation_size if validation else settings.eval_size}


def tune_learning_rates(settings: BenchSettings, base_path: str, output_dir: Path) -> dict[str, dict]:
    """Per row, ``{"learning_rate": chosen, "validation_key_acc": {lr: key_acc}}`` (see the module docstring)."""
    grid = [settings.learning_rate * factor for factor in TUNE_FACTORS]
    tasks = [_task(settings, base_path, label, settings.variants[0], settings.seeds[0], output_dir, lr,
                   validation=True) for label in settings.rows for lr in grid]
    runs = execute(tasks, settings.jobs, "tuning learning rates (validation set)")
    tuning = {}
    for label in settings.rows:
        scores = {str(r["learning_rate"]): r["metrics"]["key_acc"] for r in runs if r["label"] == label}
        best = max(scores, key=lambda lr: scores[lr])
        tuning[label] = {"learning_rate": float(best), "validation_key_acc": scores}
    return tuning


def runs_on_variant(settings: BenchSettings, label: str, variant: str) -> bool:
    """Whether row ``label`` runs on ``variant`` (see the module docstring)."""
    if variant == settings.ablation_variant:
        return True
    if ":" in label:
        return False
    return settings.trained_models_all_variants or not trained_model_rows(bench_row(label))


def benchmark_tasks(settings: BenchSettings, base_path: str, output_dir: Path, rates: dict[str, float]) -> list[dict]:
    """Every run of the benchmark (:func:`runs_on_variant`); the first seed of the first variant keeps its heatmap
    pairs."""
    return [_task(settings, base_path, label, variant, seed, output_dir, rates[label],
                  settings.heatmap_pairs if (variant, seed) == (settings.variants[0], settings.seeds[0]) else 0)
            for variant in settings.variants for label in settings.rows
            if runs_on_variant(settings, label, variant)
            for seed in settings.seeds]


def run_benchmark(settings: BenchSettings, output_dir: str | Path, command: str) -> dict:
    """Run everything, write ``results.json``, ``items.npz`` (every per-item metric, keyed
    ``variant|row|seed|metric`` and ``reference|metric``), ``report.md`` and the plots; return the results."""
    from tokenweight.keyfact import keyfact_base_model
    from tokenweight.keyfact.base_model import SETTINGS_FILE
    from tokenweight.keyfact.build import JUDGE_CHECK_PAIRS

    if baseline_label() not in settings.rows:
        raise UserError(f"--schemes must include {baseline_label()!r}: every row is reported against it")
    for label in settings.rows:  # an unknown row or a setting this config lacks fails before any training
        for variant in settings.variants:
            for row in (bench_row(label), *trained_model_rows(bench_row(label)).values()):
                run_config(settings, row, variant, 0, Path("unused"), settings.learning_rate)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    base_path = str(keyfact_base_model(seed=settings.base_seed, size=settings.model_size, facts_path=settings.facts))
    reference = reference_items(settings, base_path)
    tuning = tune_learning_rates(settings, base_path, output_dir) if settings.tune else {}
    rates = {label: tuning[label]["learning_rate"] if tuning else settings.learning_rate for label in settings.rows}
    runs = execute(benchmark_tasks(settings, base_path, output_dir, rates), settings.jobs, "KeyFact runs")
    np.savez_compressed(output_dir / "items.npz", **{f"reference|{name}": np.array(values)
                                                     for name, values in reference.items()},
                        **{f"{r['variant']}|{r['label']}|{r['seed']}|{name}": np.array(values)
                           for r in runs for name, values in r["items"].items()})
    build = json.loads((Path(base_path) / SETTINGS_FILE).read_text())
    results = {"command": command, "settings": asdict(settings), "base_model": base_path,
               "base_model_judge": {"pairs": JUDGE_CHECK_PAIRS, **{key: build.get(key) for key in (
                   "judge_verdict_accuracy_train", "judge_round_accuracies_train")}},
               "tuning": tuning,
               "reference": {name: float(np.mean(values)) for name, values in reference.items()},
               "runs": [{k: v for k, v in run.items() if k not in ("pairs", "items")} for run in runs],
               "analysis": analyse(runs, settings)}
    (output_dir / "results.json").write_text(json.dumps(results, indent=2))
    (output_dir / "report.md").write_text(markdown_report(results))
    plot_curves(results, output_dir)
    plot_forest(results, output_dir / "forest.png")
    plot_heatmaps(runs, base_path, output_dir / "heatmaps")
    return results

