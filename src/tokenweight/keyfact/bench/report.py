"""The KeyFact report: ``report.md`` and the KeyFact section of docs/BENCHMARKS.md (between its markers)."""

from __future__ import annotations

from pathlib import Path

from tokenweight.keyfact.bench.analysis import DAMAGE_AXIS, DETECTABLE_METRICS, KEY_AXIS, OUTCOME, WEIGHT_METRICS
from tokenweight.keyfact.bench.rows import ORACLE_ROWS, baseline_label
from tokenweight.keyfact.bench.settings import VARIANTS

DOCS_BEGIN, DOCS_END = "<!-- keyfact:begin -->", "<!-- keyfact:end -->"
#: The main table's columns: both axes, then the combined outcome and the unweighted preference accuracy.
MAIN_COLUMNS = (*KEY_AXIS[::2], *DAMAGE_AXIS, "key_acc", "pref_acc")
BREAKDOWN_COLUMNS = (*OUTCOME, "format_fail", *WEIGHT_METRICS)


def _number(x: float, sign: str = "") -> str:
    """3 decimals, or 3 significant digits for a small non-zero value (KL and weight shares are small)."""
    text = f"{x:{sign}.3f}" if x == 0 or abs(x) >= 0.0995 else f"{x:{sign}.3g}"
    return text.replace("-", "−")


def _signed(x: float) -> str:
    return _number(x, "+")


def cell(entry: dict, metric: str) -> str:
    """``mean`` for the baseline; ``mean Δ[low, high]`` (Δ against the baseline, 95% interval) otherwise, the
    interval in bold when it excludes 0."""
    mean = _number(entry["means"][metric])
    if metric not in entry["deltas"]:
        return mean
    d = entry["deltas"][metric]
    interval = f"{_signed(d['delta'])} [{_signed(d['low'])}, {_signed(d['high'])}]"
    return f"{mean} {'**' + interval + '**' if d['low'] > 0 or d['high'] < 0 else interval}"


def variant_table(results: dict, variant: str, columns: tuple[str, ...], tests: bool) -> str:
    """One variant's table: the reference (base model), then every row; ``tests`` adds the seed tests of
    ``key_acc`` (seeds up/down, sign-test p, Wilcoxon p)."""
    analysis = results["analysis"][variant]
    header = ["row", *columns] + (["key_acc seeds ↑/↓, sign p, Wilcoxon p"] if tests else [])
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    reference = results["reference"]
    lines.append("| reference | " + " | ".join(_number(reference[c]) if c in reference else "—" for c in columns)
                 + (" | — |" if tests else " |"))
    for label, entry in analysis["rows"].items():
        cells = [cell(entry, c) for c in columns]
        if tests:
            d = entry["deltas"].get("key_acc")
            cells.append("baseline" if d is None else
                         f"{d['seeds_up']}/{d['seeds_down']}, {d['sign_p']:.3f}, {d['wilcoxon_p']:.3f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def family_table(results: dict, variant: str) -> str:
    """Forced-choice key accuracy per family and row, with the ceiling (items no run learns) per family."""
    analysis = results["analysis"][variant]
    families = list(analysis["ceiling"]["families"])
    lines = ["| row | " + " | ".join(families) + " |", "|---|" + "---:|" * len(families)]
    for label, entry in analysis["rows"].items():
        lines.append(f"| {label} | " + " | ".join(f"{entry['family_forced_acc'][f]:.3f}" for f in families) + " |")
    lines.append("| *unlearned by every run* | " + " | ".join(f"{analysis['ceiling']['families'][f]:.3f}"
                                                              for f in families) + " |")
    return "\n".join(lines)


def _variant_line(variant: str) -> str:
    return ", ".join(f"{k.removeprefix('keyfact_')}={v}" for k, v in VARIANTS[variant].items())


def variant_section(results: dict, variant: str) -> str:
    """Tables, the smallest detectable differences, the ceiling and the oracle check of one variant."""
    analysis = results["analysis"][variant]
    detectable = ", ".join(f"{m} {analysis['detectable'][m]:.3f}" for m in DETECTABLE_METRICS)
    oracle = next(iter(ORACLE_ROWS))
    check = ("" if "oracle_separates" not in analysis else
             f"\nOracle check: `{oracle}` beats `{baseline_label()}` on key_acc and answer_mass with intervals "
             f"excluding 0: **{'yes' if analysis['oracle_separates'] else 'no'}**.\n")
    return f"""### Variant `{variant}` ({_variant_line(variant)})

{variant_table(results, variant, MAIN_COLUMNS, tests=True)}

Smallest detectable difference (α 0.05, power 0.8): {detectable}. Items no run learns (forced choice):
{analysis['ceiling']['unlearned']:.3f}.
{check}
Greedy outcome breakdown and key weights:

{variant_table(results, variant, BREAKDOWN_COLUMNS, tests=False)}

Forced-choice key accuracy per family:

{family_table(results, variant)}
"""


def markdown_table(results: dict) -> str:
    """The main table of every variant (what the command prints)."""
    return "\n\n".join(f"{variant}:\n\n{variant_table(results, variant, MAIN_COLUMNS, tests=True)}"
                       for variant in results["analysis"])


def markdown_report(results: dict) -> str:
    """The KeyFact section: the command, the budget, each variant's tables and what the metrics mean."""
    s = results["settings"]
    seconds = sum(r["seconds"] for r in results["runs"])
    row_seconds = {}
    for run in results["runs"]:
        row_seconds.setdefault(run["label"], []).append(run["seconds"])
    per_row = ", ".join(f"{label} {sum(times) / len(times):.0f}" for label, times in row_seconds.items())
    trainers = sorted({r["label"] for r in results["runs"] if r["trained_models"]})
    trained_only = ("" if s["trained_models_all_variants"] or not trainers else
                    f", and so do the rows that train models first ({', '.join(trainers)})")
    if trainers:  # results written before the factor existed trained those models at the full rate
        trained_only += (f"; the models they train first use {s.get('trained_models_lr_factor', 1.0):g} × the "
                         "learning rate")
    tuning = ("" if not results["tuning"] else "Learning rate per row (`--tune`, best greedy key_acc on the "
              "validation set): " + ", ".join(f"{label} {t['learning_rate']:g}" for label, t in
                                              results["tuning"].items()) + ".\n")
    beta = "each scheme's default β" if s["beta"] is None else f"β = {s['beta']:g}"
    own_beta = [f"β {VARIANTS[v]['beta']:g} on `{v}`" for v in s["variants"] if "beta" in VARIANTS[v]]
    if own_beta:
        beta += f" ({', '.join(own_beta)})"
    judge = results.get("base_model_judge", {})
    accuracy = judge.get("judge_verdict_accuracy_train")
    judge_line = ("It has no judge stage (AttentionPO's judge is untrained)." if accuracy is None else
                  f"Its judge's verdict accuracy (AttentionPO's premise: above 0.5) is {accuracy:.3f} on "
                  f"{judge['pairs']} training pairs after {len(judge['judge_round_accuracies_train'])} "
                  "judge-stage round(s).")
    sections = "\n".join(variant_section(results, variant) for variant in results["analysis"])
    return f"""## KeyFact

Command: `{results['command']}`

Base model `{Path(results['base_model']).name}` (size `{s['model_size']}`, base seed {s['base_seed']}, also the
frozen reference). {judge_line}

Budget, identical for every run (`tokenweight train`'s KeyFact defaults): {s['train_size']} training pairs,
{s['epochs']:g} epoch(s), batch {s['batch_size']}, learning rate {s['learning_rate']:g} (constant), {beta}, max_length
{s['max_length']}. One fixed evaluation set of {s['eval_size']} held-out pairs (eval seed {s['eval_seed']}, the same for
every run; greedy generation of at most {s['max_new_tokens']} tokens). Seeds {s['seeds']} (training data and order).
Ablation rows (`scheme:ablation`) run on `{s['variants'][0]}` only{trained_only}. {len(results['runs'])} runs,
{seconds / 60:.1f} min of training and evaluation in total (summed over {s['jobs']} worker(s)); seconds per run, mean
over the row's runs (including the models a row trains first): {per_row}.
{tuning}
Cells: mean over seeds and items; for every row but `{baseline_label()}`, the paired difference against it (same seed,
same item) with its 95% hierarchical bootstrap interval over seeds then items (bold: excludes 0). Learning the key:
`forced_acc` (teacher-forced on the clean answer template, the key outscores every distractor), `lure_margin`
(log p(key) − log p(lure), the distractor the base model's SFT answered half of the time). Collateral damage:
`answer_mass` (probability of the key and its distractors at the key slot), `format_fail` (greedy answers that leave
the template before the key), `gen_len` (greedy tokens; compare with the reference), `kl_nonkey` (mean per-token
KL(π‖π_ref) on the chosen answer's tokens other than the key). Combined: greedy `key_acc`, missed as the lure,
another answer word, a word outside the answer set, or a format failure. `pref_acc`: unweighted implicit-reward
accuracy. `key_share`: the key's share of the chosen weight from the key onward (the tokens before it cancel);
`key_weight_rel`: the key's weight over the mean weight; `key_rank`: the key's rank by weight among the chosen
tokens (1 = the heaviest, ties share their mean rank; uniform: (n + 1)/2), for `tisdpo` the rank of its contrastive
models' token reward on held-out pairs. Seed tests: per-seed mean differences, exact sign test and
Wilcoxon signed-rank (two-sided). Plots in the report folder: `forest.png` (Δ with intervals, one row per scheme ×
variant), `curves_<variant>.png`, `heatmaps/`.

{sections}"""


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
