"""The report's figures: learning curves per variant, the forest plot of paired differences, weight heatmaps."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tokenweight.keyfact.bench.runs import CURVE_METRICS

#: The forest plot's panels: the combined outcome, learning the key, and one collateral-damage metric.
FOREST_METRICS = ("key_acc", "forced_acc", "answer_mass")


def plot_curves(results: dict, output_dir: Path) -> list[Path]:
    """``curves_<variant>.png``: :data:`CURVE_METRICS` (on the first held-out items) against the training step,
    mean over seeds (band: ± std), one line per row."""
    from tokenweight.viz import pyplot

    plt = pyplot()
    paths = []
    for variant in results["analysis"]:
        fig, axes = plt.subplots(1, len(CURVE_METRICS), figsize=(4 * len(CURVE_METRICS), 3.6), dpi=100)
        for label in results["analysis"][variant]["rows"]:
            curves = [r["curve"] for r in results["runs"] if r["variant"] == variant and r["label"] == label]
            steps = [point["step"] for point in curves[0]]
            for ax, metric in zip(axes, CURVE_METRICS):
                values = np.array([[point[metric] for point in c] for c in curves])
                mean, std = values.mean(axis=0), values.std(axis=0, ddof=1) if len(curves) > 1 else 0 * values[0]
                ax.plot(steps, mean, marker="o", label=label)
                ax.fill_between(steps, mean - std, mean + std, alpha=0.12)
                ax.set_xlabel("training step")
                ax.set_ylabel(metric)
        axes[0].legend(fontsize=7)
        fig.suptitle(f"KeyFact learning curves — variant {variant} (first held-out items)")
        fig.tight_layout()
        path = output_dir / f"curves_{variant}.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


def plot_forest(results: dict, path: Path) -> Path:
    """Δ against the baseline with its 95% interval for :data:`FOREST_METRICS`, one line per row × variant."""
    from tokenweight.viz import pyplot

    plt = pyplot()
    lines = [(variant, label, entry["deltas"]) for variant, analysis in results["analysis"].items()
             for label, entry in analysis["rows"].items() if entry["deltas"]]
    fig, axes = plt.subplots(1, len(FOREST_METRICS), figsize=(4 * len(FOREST_METRICS), 1.2 + 0.28 * len(lines)),
                             dpi=100, sharey=True, squeeze=False)
    for ax, metric in zip(axes[0], FOREST_METRICS):
        for y, (_, _, deltas) in enumerate(lines):
            d = deltas[metric]
            colour = "tab:red" if d["low"] > 0 or d["high"] < 0 else "tab:gray"
            ax.errorbar(d["delta"], y, xerr=[[d["delta"] - d["low"]], [d["high"] - d["delta"]]], fmt="o",
                        color=colour, capsize=3)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_xlabel(f"Δ {metric} vs baseline (95% CI)")
    axes[0][0].set_yticks(range(len(lines)), [f"{variant} · {label}" for variant, label, _ in lines], fontsize=8)
    axes[0][0].invert_yaxis()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_heatmaps(runs: list[dict], base_path: str, folder: Path) -> list[Path]:
    """``<row>_pair<k>.png``: each row's weights on the first held-out pairs of the runs that kept them (the first
    variant and seed), one colour scale across chosen and rejected, the key token outlined."""
    from tokenweight.models import load_tokenizer
    from tokenweight.viz import PairView, pair_heatmap_png, token_texts

    tokenizer = load_tokenizer(base_path)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for run in runs:
        for k, pair in enumerate(run["pairs"]):
            view = PairView(index=k, prompt=tokenizer.decode(pair["prompt_ids"], skip_special_tokens=True),
                            chosen_tokens=token_texts(tokenizer, pair["chosen_ids"]),
                            chosen_weights=pair["chosen_weights"],
                            rejected_tokens=token_texts(tokenizer, pair["rejected_ids"]),
                            rejected_weights=pair["rejected_weights"],
                            chosen_key=pair["chosen_key"], rejected_key=pair["rejected_key"])
            path = folder / f"{run['label'].replace(':', '-')}_pair{k}.png"
            pair_heatmap_png(view, path, title=f"{run['label']}: {view.prompt}")
            paths.append(path)
    return paths
