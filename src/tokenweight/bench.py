"""The KeyFact benchmark: every scheme × seeds × data variants, trained in-process with the same budget.

One run = one :class:`~tokenweight.config.TokenweightConfig` (the ``tokenweight train`` KeyFact defaults, the same
hyperparameters for every scheme) trained from the cached KeyFact base model, which is also the frozen reference.
The seed drives the KeyFact data draw (``keyfact_seed``) and the training order (``seed``); the base model is the
same for every run (``base_seed``). After training, on the held-out split:

- ``pref_acc`` (unweighted implicit reward; a reference-free scheme, which gets no reference model: its own reward
  β·Σ ω log π_θ, :func:`tokenweight.evaluate.held_out_preference`), ``key_acc``, ``key_margin``, ``gen_len``
  (:func:`tokenweight.keyfact.evaluate_keyfact`);
- ``key_weight_share``: the mean over held-out pairs of the share of the chosen completion's total weight that the
  scheme puts on the key token, with the weights the scheme computes for the **trained policy** (OTPO, TI-DPO); for
  AttentionPO the frozen reference is the judge, as in training; for uniform it is ``1 / len``.

Learning curves (``pref_acc`` and ``key_acc`` on the first ``curve_eval_size`` held-out pairs) are measured at
``curve_points`` evenly spaced steps by a :class:`~transformers.TrainerCallback`. The report folder holds
``results.json`` (settings, every run, the summary), ``report.md`` (mean ± sample std over seeds), one
``curves_<variant>.png`` per variant and ``heatmaps/<scheme>_pair<k>.png`` (first variant, first seed).
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import TrainerCallback

VARIANTS: dict[str, dict[str, float]] = {
    "base": {"keyfact_chosen_longer": 0.5, "keyfact_label_noise": 0.0},
    "verbosity": {"keyfact_chosen_longer": 0.8, "keyfact_label_noise": 0.0},
    "noise0.1": {"keyfact_chosen_longer": 0.5, "keyfact_label_noise": 0.1},
    "noise0.2": {"keyfact_chosen_longer": 0.5, "keyfact_label_noise": 0.2},
    "noise0.4": {"keyfact_chosen_longer": 0.5, "keyfact_label_noise": 0.4},
}
METRICS = ("key_acc", "key_margin", "pref_acc", "gen_len", "key_weight_share")
DOCS_BEGIN, DOCS_END = "<!-- keyfact:begin -->", "<!-- keyfact:end -->"


@dataclass
class BenchSettings:
    """What one ``tokenweight bench keyfact`` call runs (every run shares all of it except scheme/variant/seed)."""

    schemes: list[str]
    seeds: list[int]
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    model_size: str = "default"
    base_seed: int = 0
    facts: str | None = None
    train_size: int = 512
    eval_size: int = 128
    epochs: float = 2.0
    batch_size: int = 16
    learning_rate: float = 5e-4
    beta: float = 0.1
    max_length: int = 128
    max_new_tokens: int = 48
    curve_points: int = 4
    curve_eval_size: int = 64
    heatmap_pairs: int = 3

    def __post_init__(self):
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown:
            raise ValueError(f"unknown KeyFact variant(s) {unknown}; known: {list(VARIANTS)}")
        if not self.schemes or not self.seeds or not self.variants:
            raise ValueError("the benchmark needs at least one scheme, one seed and one variant")


def quick_settings(settings: BenchSettings) -> BenchSettings:
    """The ``--quick`` budget: the small base model, tiny data, one epoch, the base variant, two seeds."""
    return replace(settings, model_size="small", train_size=32, eval_size=16, epochs=1.0, batch_size=8,
                   max_new_tokens=24, curve_points=2, curve_eval_size=8, heatmap_pairs=1, seeds=settings.seeds[:2],
                   variants=["base"])


def default_schemes() -> list[str]:
    """Every registered scheme that can run on KeyFact (all but those needing dataset-supplied weight columns)."""
    from tokenweight.weights import SCHEMES
    return [name for name, scheme in SCHEMES.items() if not scheme.needs_weight_columns]


# ----------------------------------------------------------------------------------------------- one run


def run_config(settings: BenchSettings, scheme: str, variant: str, seed: int, output_dir: Path):
    """The :class:`TokenweightConfig` of one run."""
    from tokenweight.config import TokenweightConfig
    from tokenweight.run import KEYFACT_DEFAULTS

    return TokenweightConfig(**{
        **KEYFACT_DEFAULTS, "output_dir": str(output_dir), "weighting": scheme, "seed": seed, "keyfact_seed": seed,
        "keyfact_facts": settings.facts, "keyfact_train_size": settings.train_size,
        "keyfact_eval_size": settings.eval_size, "num_train_epochs": settings.epochs,
        "per_device_train_batch_size": settings.batch_size, "per_device_eval_batch_size": settings.batch_size,
        "learning_rate": settings.learning_rate, "beta": settings.beta, "max_length": settings.max_length,
        "logging_strategy": "no", "save_strategy": "no", "report_to": "none", "disable_tqdm": True,
        **VARIANTS[variant]})


def held_out(model, ref_model, tokenizer, pairs, rows, settings: BenchSettings, scheme=None) -> dict[str, float]:
    """``pref_acc`` and :func:`~tokenweight.keyfact.evaluate_keyfact`'s metrics on tokenized ``pairs`` / raw
    ``rows`` (the same pairs); ``ref_model=None`` scores ``model`` as its own reference (``pref_acc`` 0.5), unless
    ``scheme`` is reference-free (then ``pref_acc`` ranks by the scheme's own reward)."""
    from tokenweight.evaluate import held_out_preference
    from tokenweight.keyfact import evaluate_keyfact

    preference = held_out_preference(model, ref_model, scheme, pairs, tokenizer.pad_token_id, settings.beta,
                                     batch_size=settings.batch_size, progress=False)
    metrics = {"pref_acc": preference["pref_acc"]}
    metrics.update(evaluate_keyfact(model, tokenizer, list(rows), facts=settings.facts,
                                    max_new_tokens=settings.max_new_tokens, batch_size=64))
    return metrics


class CurveCallback(TrainerCallback):
    """Evaluates ``evaluate(model)`` at step 0 and at ``points`` evenly spaced steps up to the last one."""

    def __init__(self, evaluate, points: int):
        self.evaluate, self.points, self.steps, self.curve = evaluate, points, set(), []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.steps = {round(state.max_steps * (k + 1) / self.points) for k in range(self.points)}
        self.curve.append({"step": 0, **self.evaluate(model)})

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step in self.steps:
            self.curve.append({"step": state.global_step, **self.evaluate(model)})


def key_weight_shares(scheme, model, tokenizer, pairs, rows, settings: BenchSettings) -> tuple[list[float], list]:
    """Per held-out pair, the share of the chosen completion's weight on its key token; and the per-pair
    ``(chosen, rejected)`` weights (for the heatmaps)."""
    from tokenweight.evaluate import pair_token_weights
    from tokenweight.keyfact import key_position, key_weight_share

    weights = pair_token_weights(scheme, model, pairs, tokenizer.pad_token_id, settings.batch_size, progress=False)
    positions = []
    for pair in pairs:
        row = rows[pair["row_index"]]
        position = key_position(tokenizer, row, settings.facts)
        key = row["wrong_key"] if row["noisy"] else row["key"]
        if tokenizer.decode([pair["chosen_ids"][position]]).strip() != key:
            raise ValueError(f"held-out row {pair['row_index']}: key slot {position} of the tokenized chosen "
                             f"completion is not {key!r}")
        positions.append(position)
    width = max(len(chosen) for chosen, _ in weights)
    chosen = torch.tensor([c + [0.0] * (width - len(c)) for c, _ in weights])
    return key_weight_share(chosen, positions).tolist(), weights


def run_one(settings: BenchSettings, base_path: str, scheme: str, variant: str, seed: int,
            output_dir: Path) -> dict:
    """Train one scheme on one variant and seed; returns its metrics, learning curve and the pair weights."""
    from tokenweight.models import load_causal_lm, load_tokenizer
    from tokenweight.run import load_run_splits, prepare_split
    from tokenweight.trainer import TokenweightTrainer
    from tokenweight.weights import build_scheme

    start = time.perf_counter()
    config = run_config(settings, scheme, variant, seed, output_dir)
    tokenizer = load_tokenizer(base_path)
    splits = load_run_splits(config)
    train_rows, eval_rows = splits.train, splits.eval
    # every split through the scheme's data preparation, as `tokenweight train` does (AttentionPO: the judge's cache)
    train = prepare_split(config, base_path, tokenizer, train_rows, "train")
    evaluation = prepare_split(config, base_path, tokenizer, eval_rows, "eval")
    weighing = build_scheme(scheme, config)  # the held-out reward of a reference-free scheme
    policy = load_causal_lm(base_path)
    reference = load_causal_lm(base_path) if weighing.uses_reference else None
    curve_pairs = evaluation.select(range(min(settings.curve_eval_size, len(evaluation))))
    curve_rows = eval_rows.select(curve_pairs["row_index"])
    curve = CurveCallback(lambda model: held_out(model, reference, tokenizer, curve_pairs, curve_rows, settings,
                                                 weighing), settings.curve_points)
    trainer = TokenweightTrainer(model=policy, ref_model=reference, args=config, train_dataset=train,
                                 processing_class=tokenizer, callbacks=[curve])
    trainer.train()
    metrics = held_out(trainer.model, trainer.ref_model, tokenizer, evaluation, eval_rows, settings, weighing)
    shares, weights = key_weight_shares(trainer.scheme, trainer.model, tokenizer, evaluation, eval_rows, settings)
    metrics["key_weight_share"] = sum(shares) / len(shares)
    heatmap_pairs = [{"prompt_ids": p["prompt_ids"], "chosen_ids": p["chosen_ids"], "rejected_ids": p["rejected_ids"],
                      "chosen_weights": w[0], "rejected_weights": w[1]}
                     for p, w in zip(evaluation.select(range(settings.heatmap_pairs)), weights)]
    return {"scheme": scheme, "variant": variant, "seed": seed, "metrics": metrics, "curve": curve.curve,
            "steps": trainer.state.global_step, "seconds": time.perf_counter() - start, "pairs": heatmap_pairs}


def reference_metrics(settings: BenchSettings, base_path: str, seed: int, output_dir: Path) -> dict[str, float]:
    """The base model's held-out metrics on seed ``seed``'s eval split (the same for every variant)."""
    from tokenweight.models import load_causal_lm, load_tokenizer
    from tokenweight.run import load_run_splits, tokenize_split

    config = run_config(settings, "uniform", settings.variants[0], seed, output_dir)
    tokenizer = load_tokenizer(base_path)
    eval_rows = load_run_splits(config).eval
    evaluation = tokenize_split(config, tokenizer, eval_rows, "eval")
    model = load_causal_lm(base_path)
    return held_out(model, None, tokenizer, evaluation, eval_rows, settings)


# ----------------------------------------------------------------------------------------------- the benchmark


def summarize(runs: list[dict]) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """``summary[variant][scheme][metric] = {"mean", "std", "n"}`` over seeds (sample std; 0 for one seed)."""
    summary: dict = {}
    for run in runs:
        summary.setdefault(run["variant"], {}).setdefault(run["scheme"], {})
    for variant, schemes in summary.items():
        for scheme in schemes:
            values = [r["metrics"] for r in runs if r["variant"] == variant and r["scheme"] == scheme]
            schemes[scheme] = {m: _stats([v[m] for v in values]) for m in METRICS}
    return summary


def _stats(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def run_benchmark(settings: BenchSettings, output_dir: str | Path, command: str) -> dict:
    """Run every (variant, scheme, seed), write the report folder, return the ``results.json`` content."""
    from tokenweight.keyfact import keyfact_base_model

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    base_path = str(keyfact_base_model(seed=settings.base_seed, size=settings.model_size, facts_path=settings.facts))
    reference = {seed: reference_metrics(settings, base_path, seed, output_dir / "runs")
                 for seed in tqdm(settings.seeds, desc="reference metrics")}
    jobs = [(v, s, seed) for v in settings.variants for s in settings.schemes for seed in settings.seeds]
    runs = []
    bar = tqdm(jobs, desc="KeyFact runs")
    for variant, scheme, seed in bar:
        bar.set_postfix_str(f"{variant} {scheme} seed {seed}")
        runs.append(run_one(settings, base_path, scheme, variant, seed,
                            output_dir / "runs" / variant / f"{scheme}-seed{seed}"))
    results = {"command": command, "settings": asdict(settings), "base_model": base_path,
               "reference": {str(seed): metrics for seed, metrics in reference.items()},
               "reference_summary": {m: _stats([r[m] for r in reference.values()]) for m in METRICS
                                     if m != "key_weight_share"},
               "runs": [{k: v for k, v in run.items() if k != "pairs"} for run in runs],
               "summary": summarize(runs)}
    (output_dir / "results.json").write_text(json.dumps(results, indent=2))
    (output_dir / "report.md").write_text(markdown_report(results))
    plot_curves(results, output_dir)
    plot_heatmaps(runs, base_path, settings, output_dir / "heatmaps")
    return results


# ----------------------------------------------------------------------------------------------- reports


def _cell(stats: dict[str, float]) -> str:
    return f"{stats['mean']:.3f} ± {stats['std']:.3f}"


def markdown_table(results: dict) -> str:
    """The mean ± std table: one row per (variant, scheme), plus the reference (the base model before training)."""
    lines = ["| variant | scheme | " + " | ".join(METRICS) + " |", "|---|---|" + "---:|" * len(METRICS)]
    ref = results["reference_summary"]
    lines.append("| (all) | reference | " + " | ".join(_cell(ref[m]) if m in ref else "—" for m in METRICS) + " |")
    for variant, schemes in results["summary"].items():
        for scheme, stats in schemes.items():
            lines.append(f"| {variant} | {scheme} | " + " | ".join(_cell(stats[m]) for m in METRICS) + " |")
    return "\n".join(lines)


def markdown_report(results: dict) -> str:
    """The KeyFact section: the command, the budget, the table and what the metrics mean."""
    s = results["settings"]
    seconds = sum(r["seconds"] for r in results["runs"])
    variants = ", ".join(f"`{v}` ({', '.join(f'{k[8:]}={x}' for k, x in VARIANTS[v].items())})" for v in s["variants"])
    return f"""## KeyFact

Command: `{results['command']}`

Budget, identical for every run: KeyFact base model `{s['model_size']}` (base seed {s['base_seed']}, also the frozen
reference), {s['train_size']} training pairs, {s['epochs']:g} epoch(s), batch {s['batch_size']}, learning rate
{s['learning_rate']:g} (constant), β = {s['beta']:g}, max_length {s['max_length']}; evaluated on {s['eval_size']}
held-out pairs (held-out paraphrases and filler, greedy generation of at most {s['max_new_tokens']} tokens).
Seeds {s['seeds']} (data draw and training order). Variants: {variants}.
{len(results['runs'])} runs, {seconds / 60:.1f} min of training and evaluation in total.

{markdown_table(results)}

Mean ± sample standard deviation over seeds. `pref_acc`: held-out accuracy of the unweighted implicit reward
(0.5 for the reference by construction; reference-free schemes such as SimPO and ConfPO load no reference, so theirs
ranks by their own reward β·Σ ω log π_θ); `key_acc`: greedy answers with the correct key; `key_margin`: log-prob
of the correct key minus the best distractor at the key slot; `gen_len`: generated tokens (verbosity drift against
the reference row); `key_weight_share`: share of the chosen completion's total weight on the key token, with the
weights the scheme computes for the trained policy (OTPO, TI-DPO), the frozen reference judge (AttentionPO), or
1/len (uniform). Learning curves and weight heatmaps: the report folder (`curves_<variant>.png`,
`heatmaps/`).
"""


def update_docs(results: dict, docs_path: str | Path) -> Path:
    """Replace (or append) the KeyFact section of ``docs_path`` between its markers; other sections stay."""
    path = Path(docs_path)
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    section = f"{DOCS_BEGIN}\n{markdown_report(results).rstrip()}\n{DOCS_END}"
    if DOCS_BEGIN in text:
        if text.count(DOCS_BEGIN) != 1 or text.count(DOCS_END) != 1 or text.index(DOCS_END) < text.index(DOCS_BEGIN):
            raise ValueError(f"{path}: expected exactly one {DOCS_BEGIN} … {DOCS_END} block")
        head, rest = text.split(DOCS_BEGIN)
        text = head + section + rest.split(DOCS_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def plot_curves(results: dict, output_dir: Path) -> list[Path]:
    """``curves_<variant>.png``: ``key_acc`` and ``pref_acc`` against the training step, mean over seeds (band:
    ± std), one line per scheme."""
    from tokenweight.viz import pyplot

    plt = pyplot()
    paths = []
    for variant in results["summary"]:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), dpi=100)
        for scheme in results["summary"][variant]:
            curves = [r["curve"] for r in results["runs"] if r["variant"] == variant and r["scheme"] == scheme]
            steps = [point["step"] for point in curves[0]]
            for ax, metric in zip(axes, ("key_acc", "pref_acc")):
                values = torch.tensor([[point[metric] for point in c] for c in curves])
                mean = values.mean(dim=0)
                std = values.std(dim=0) if len(curves) > 1 else torch.zeros_like(mean)
                ax.plot(steps, mean, marker="o", label=scheme)
                ax.fill_between(steps, mean - std, mean + std, alpha=0.15)
                ax.set_xlabel("training step")
                ax.set_ylabel(metric)
        axes[0].legend()
        fig.suptitle(f"KeyFact learning curves — variant {variant} (held-out subset)")
        fig.tight_layout()
        path = output_dir / f"curves_{variant}.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


def plot_heatmaps(runs: list[dict], base_path: str, settings: BenchSettings, folder: Path) -> list[Path]:
    """``<scheme>_pair<k>.png``: each scheme's weights on the first held-out pairs (first variant, first seed)."""
    from tokenweight.models import load_tokenizer
    from tokenweight.viz import PairView, pair_heatmap_png, token_texts

    tokenizer = load_tokenizer(base_path)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for run in runs:
        if run["variant"] != settings.variants[0] or run["seed"] != settings.seeds[0]:
            continue
        for k, pair in enumerate(run["pairs"]):
            view = PairView(index=k, prompt=tokenizer.decode(pair["prompt_ids"], skip_special_tokens=True),
                            chosen_tokens=token_texts(tokenizer, pair["chosen_ids"]),
                            chosen_weights=pair["chosen_weights"],
                            rejected_tokens=token_texts(tokenizer, pair["rejected_ids"]),
                            rejected_weights=pair["rejected_weights"])
            path = folder / f"{run['scheme']}_pair{k}.png"
            pair_heatmap_png(view, path, title=f"{run['scheme']}: {view.prompt}")
            paths.append(path)
    return paths
