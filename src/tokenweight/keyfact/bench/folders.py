"""A benchmark's report folder: written once its runs are done, read back to rebuild the report (``--report_from``),
and several folders of one facts file merged into one (benchmarks split into smaller invocations, e.g. one variant
each).

A folder holds ``results.json`` (settings, base models, evaluation items, timing, every run without its per-item
metrics; after :func:`write_report` also the analysis, the claims and the comparison across facts files) and
``items.npz`` (every per-item metric: ``variant|row|base seed|seed|metric``, and the base models' own
``reference|base seed|metric``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tokenweight.keyfact.bench.analysis import analyse
from tokenweight.keyfact.bench.claims import compare_fact_sets, paper_claims
from tokenweight.keyfact.bench.plots import plot_curves, plot_forest
from tokenweight.keyfact.bench.report import markdown_report
from tokenweight.keyfact.bench.settings import VARIANTS, saved_settings
from tokenweight.errors import UserError

#: Settings that must be equal for folders to be merged: they decide the base models, the evaluation set and the
#: budget every run shares.
SHARED_SETTINGS = ("model_size", "base_seeds", "seeds", "facts", "train_size", "eval_size", "eval_seed",
                   "learning_rate", "epochs", "batch_size", "max_length", "beta", "max_new_tokens", "tune",
                   "trained_models_lr_factor")


def save_folder(output_dir: Path, results: dict, references: dict) -> None:
    """Write ``items.npz`` (the runs' per-item metrics and the base models' ``references`` ``{base seed: items}``)
    and ``results.json`` (``results`` with the runs' metric means but without their items and heatmap pairs, and
    the references' means)."""
    runs = results["runs"]
    np.savez_compressed(output_dir / "items.npz",
                        **{f"reference|{base}|{name}": np.array(values)
                           for base, reference in references.items() for name, values in reference.items()},
                        **{f"{r['variant']}|{r['label']}|{r['base_seed']}|{r['seed']}|{name}": np.array(values)
                           for r in runs for name, values in r["items"].items()})
    results = {**results, "reference": {str(base): {name: float(np.mean(values)) for name, values in items.items()}
                                        for base, items in references.items()},
               "runs": [{k: v for k, v in run.items() if k not in ("pairs", "items")} for run in runs]}
    (output_dir / "results.json").write_text(json.dumps(results, indent=2))


def load_runs(output_dir: Path) -> tuple[dict, list[dict], dict]:
    """``results.json`` of a finished run folder, its runs with their per-item metrics from ``items.npz``, and the
    base models' reference items ``{base seed: items}``."""
    results_path, items_path = output_dir / "results.json", output_dir / "items.npz"
    for path in (results_path, items_path):
        if not path.is_file():
            raise UserError(f"--report_from: {path} does not exist (not a finished `tokenweight bench keyfact` "
                            "folder)")
    results = json.loads(results_path.read_text())
    if "base_models" not in results:
        raise UserError(f"--report_from: {results_path} predates base-model replicas (no 'base_models'); rerun it")
    items = np.load(items_path)
    grouped: dict[str, dict] = {}
    for key in items.files:
        head, _, metric = key.rpartition("|")
        grouped.setdefault(head, {})[metric] = items[key]
    runs = [{**run, "items": grouped[f"{run['variant']}|{run['label']}|{run['base_seed']}|{run['seed']}"]}
            for run in results["runs"]]
    references = {int(head.split("|")[1]): values for head, values in grouped.items() if head.startswith("reference|")}
    return results, runs, references


def merge_folders(folders: list[Path], output_dir: Path) -> None:
    """Write one folder to ``output_dir`` holding every run of ``folders`` (the same base models, seeds, facts,
    evaluation set and budget; no (variant, row) in two of them): the union of their variants and rows, their
    commands and timings under ``merged_from``."""
    loaded = [load_runs(folder) for folder in folders]
    first = loaded[0][0]
    for folder, (results, _, _) in zip(folders[1:], loaded[1:]):
        for key in SHARED_SETTINGS:
            if results["settings"][key] != first["settings"][key]:
                raise UserError(f"--report_from: {folder} has {key} = {results['settings'][key]!r}, "
                                f"{folders[0]} {first['settings'][key]!r}: only runs of one benchmark merge")
        if [b["fingerprint"] for b in results["base_models"]] != [b["fingerprint"] for b in first["base_models"]]:
            raise UserError(f"--report_from: {folder} ran on other base models than {folders[0]}")
        if results["eval_items"] != first["eval_items"]:
            raise UserError(f"--report_from: {folder} has another evaluation set than {folders[0]}")
    runs, seen = [], {}
    for k, (_, folder_runs, _) in enumerate(loaded):
        for run in folder_runs:
            cell = (run["variant"], run["label"])
            if seen.setdefault(cell, k) != k:
                raise UserError(f"--report_from: row {cell[1]!r} on {cell[0]!r} is in both {folders[seen[cell]]} "
                                f"and {folders[k]}")
            runs.append(run)
    variants = [v for v in VARIANTS if any(v in r["settings"]["variants"] for r, _, _ in loaded)]
    rows = list(dict.fromkeys(label for r, _, _ in loaded for label in r["settings"]["rows"]))
    timings = [r["timing"] for r, _, _ in loaded]
    merged = {**first, "settings": {**first["settings"], "variants": variants, "rows": rows},
              "command": " ; ".join(r["command"] for r, _, _ in loaded),
              "merged_from": [{"folder": str(folder), "command": r["command"], "timing": r["timing"]}
                              for folder, (r, _, _) in zip(folders, loaded)],
              "timing": {"wall_seconds": sum(t["wall_seconds"] for t in timings),
                         "run_seconds": sum(t["run_seconds"] for t in timings),
                         "run_cpu_seconds": sum(t["run_cpu_seconds"] for t in timings), "jobs": timings[0]["jobs"],
                         "machine_at_start": timings[0]["machine_at_start"],
                         "machine_at_end": timings[-1]["machine_at_end"]},
              "tuning": {}, "runs": runs}
    output_dir.mkdir(parents=True, exist_ok=True)
    save_folder(output_dir, merged, loaded[0][2])


def analysed(output_dir: Path) -> dict:
    """The results of a finished run folder with its analysis computed afresh (from ``items.npz``)."""
    results, runs, _ = load_runs(output_dir)
    results["analysis"] = analyse(runs, saved_settings(results), results["eval_items"])
    return results


def write_report(output_dir: str | Path, compare_dirs: tuple = ()) -> dict:
    """(Re)build the analysis of a finished run folder from its ``results.json`` and ``items.npz``: the analysis
    and paper claims into ``results.json``, ``report.md``, the curves and the forest plot; ``compare_dirs``: run
    folders of other facts files (each analysed already), compared row by row in the report. Returns the
    results."""
    output_dir = Path(output_dir)
    results, runs, _ = load_runs(output_dir)
    results["analysis"] = analyse(runs, saved_settings(results), results["eval_items"])
    results["claims"] = paper_claims(results, runs)
    results["fact_sets"] = compare_fact_sets(results, [analysed(Path(d)) for d in compare_dirs]) \
        if compare_dirs else None
    (output_dir / "results.json").write_text(json.dumps(results, indent=2))
    (output_dir / "report.md").write_text(markdown_report(results))
    plot_curves(results, output_dir)
    plot_forest(results, output_dir / "forest.png")
    return results
