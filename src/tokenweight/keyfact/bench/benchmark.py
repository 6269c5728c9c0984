"""``run_benchmark``: the reference once, the optional learning-rate selection, every run, then the report folder.

Runs: every row × variant × seed, except the ablation rows (``scheme:ablation``), which run on the first variant
only, and so do the rows whose scheme trains models first (``trained_models``: three trainings per run) unless
``BenchSettings.trained_models_all_variants``. With ``tune`` each row first trains on the first variant and seed at
every learning rate of :data:`~tokenweight.keyfact.bench.settings.TUNE_FACTORS` × the budget's, measured on a validation set
KeyFact's ``validation`` split (disjoint from the evaluation set), and keeps the one with the best greedy ``key_acc`` for all
its runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path

from tokenweight.keyfact.bench.folders import save_folder, write_report
from tokenweight.keyfact.bench.plots import plot_heatmaps
from tokenweight.keyfact.bench.rows import baseline_label, bench_row
from tokenweight.keyfact.bench.runs import execute, reference_items
from tokenweight.keyfact.bench.settings import TUNE_FACTORS, BenchSettings, run_config
from tokenweight.keyfact.bench.trained_models import trained_model_rows
from tokenweight.errors import UserError


def _task(settings, base, label, variant, seed, output_dir, learning_rate, heatmap_pairs=0, validation=False):
    folder = f"{label}-base{base['seed']}-seed{seed}{f'-lr{learning_rate:g}' if validation else ''}"
    return {"settings": settings, "base_path": base["path"], "base_seed": base["seed"],
            "base_model": base["fingerprint"], "label": label, "variant": variant, "seed": seed,
            "output_dir": str(output_dir / ("tune" if validation else "runs") / variant / folder),
            "learning_rate": learning_rate, "heatmap_pairs": heatmap_pairs,
            "eval_split": "validation" if validation else "eval",
            "eval_size": settings.validation_size if validation else settings.eval_size}


def tune_learning_rates(settings: BenchSettings, base: dict, output_dir: Path) -> dict[str, dict]:
    """Per row, ``{"learning_rate": chosen, "validation_key_acc": {lr: key_acc}}`` (see the module docstring), on
    the first base model."""
    grid = [settings.learning_rate * factor for factor in TUNE_FACTORS]
    tasks = [_task(settings, base, label, settings.variants[0], settings.seeds[0], output_dir, lr,
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
        return settings.runs_ablations(variant)
    return settings.trained_models_all_variants or not trained_model_rows(bench_row(label))


def benchmark_tasks(settings: BenchSettings, bases: list[dict], output_dir: Path,
                    rates: dict[str, float]) -> list[dict]:
    """Every run of the benchmark: each row on each variant it runs on (:func:`runs_on_variant`), each base model,
    each seed; the first base model's first seed on the first variant keeps its heatmap pairs."""
    first = (settings.variants[0], bases[0]["seed"], settings.seeds[0])
    return [_task(settings, base, label, variant, seed, output_dir, rates[label],
                  settings.heatmap_pairs if (variant, base["seed"], seed) == first else 0)
            for variant in settings.variants for label in settings.rows
            if runs_on_variant(settings, label, variant)
            for base in bases for seed in settings.seeds]


def expected_runs(settings: BenchSettings) -> int:
    """How many runs :func:`run_benchmark` makes (without ``--tune``'s): rows × the variants each runs on ×
    base models × seeds."""
    cells = sum(runs_on_variant(settings, label, variant) for variant in settings.variants for label in settings.rows)
    return cells * len(settings.base_seeds) * len(settings.seeds)


def base_model_record(seed: int, path: Path) -> dict:
    """One base model: its base seed, folder, build name, ``fingerprint`` (the build name and the first 12 hex
    digits of the SHA-256 of its weights: two builds of one name on two CPUs differ here) and judge record."""
    from tokenweight.keyfact.base_model import SETTINGS_FILE
    from tokenweight.keyfact.build import JUDGE_CHECK_PAIRS

    digest = hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()[:12]
    build = json.loads((path / SETTINGS_FILE).read_text())
    return {"seed": seed, "path": str(path), "name": path.name, "fingerprint": f"{path.name}@{digest}",
            "judge": {"pairs": JUDGE_CHECK_PAIRS, **{key: build.get(key) for key in (
                "judge_verdict_accuracy_train", "judge_round_accuracies_train")}}}


def evaluation_items(settings: BenchSettings) -> dict[str, list]:
    """Per evaluation item: its ``family`` and ``prompt`` (the index of its distinct prompt, in order of first
    appearance; items of one prompt are not independent: the bootstrap resamples prompts)."""
    from tokenweight.keyfact.bench.runs import evaluation_rows

    rows = evaluation_rows(settings, "eval", settings.eval_size)
    index: dict[str, int] = {}
    prompts = [index.setdefault(json.dumps(prompt, sort_keys=True), len(index)) for prompt in rows["prompt"]]
    return {"family": list(rows["family"]), "prompt": prompts}


def machine() -> dict:
    """The CPU model, the core count and the load averages (1, 5, 15 min) now."""
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() \
        else platform.processor()
    return {"cpu": model, "cores": os.cpu_count(), "load": [round(x, 2) for x in os.getloadavg()]}


def run_benchmark(settings: BenchSettings, output_dir: str | Path, command: str) -> dict:
    """Run everything and write the report folder: ``items.npz`` (every per-item metric, keyed
    ``variant|row|base seed|seed|metric`` and ``reference|base seed|metric``) and ``results.json`` (settings, base
    models, every run's means and curve) first, the heatmaps, then the analysis (:func:`write_report`, which
    ``--report_from`` repeats on a finished folder); return the results."""
    from tokenweight.keyfact import keyfact_base_model

    if baseline_label() not in settings.rows:
        raise UserError(f"--schemes must include {baseline_label()!r}: every row is reported against it")
    for label in settings.rows:  # an unknown row or a setting this config lacks fails before any training
        for variant in settings.variants:
            for row in (bench_row(label), *trained_model_rows(bench_row(label)).values()):
                run_config(settings, row, variant, 0, Path("unused"), settings.learning_rate)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    start, started = time.perf_counter(), machine()
    bases = [base_model_record(seed, keyfact_base_model(seed=seed, size=settings.model_size,
                                                        facts_path=settings.facts))
             for seed in settings.base_seeds]
    references = {base["seed"]: reference_items(settings, base["path"]) for base in bases}
    tuning = tune_learning_rates(settings, bases[0], output_dir) if settings.tune else {}
    rates = {label: tuning[label]["learning_rate"] if tuning else settings.learning_rate for label in settings.rows}
    runs = execute(benchmark_tasks(settings, bases, output_dir, rates), settings.jobs, "KeyFact runs")
    results = {"command": command, "settings": asdict(settings), "base_models": bases,
               "eval_items": evaluation_items(settings), "tuning": tuning,
               "timing": {"wall_seconds": time.perf_counter() - start, "run_seconds": sum(r["seconds"] for r in runs),
                          "run_cpu_seconds": sum(r["cpu_seconds"] for r in runs), "jobs": settings.jobs,
                          "machine_at_start": started, "machine_at_end": machine()},
               "runs": runs}
    save_folder(output_dir, results, references)
    plot_heatmaps(runs, bases[0]["path"], output_dir / "heatmaps")
    return write_report(output_dir)
