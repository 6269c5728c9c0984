"""The KeyFact report: ``report.md`` and the KeyFact section of docs/BENCHMARKS.md (between its markers)."""

from __future__ import annotations

from pathlib import Path

from tokenweight.keyfact.bench.analysis import (DAMAGE_AXIS, DETECTABLE_METRICS, FAMILY_METRICS, KEY_AXIS, OUTCOME,
                                        WEIGHT_METRICS)
from tokenweight.keyfact.bench.rows import ORACLE_ROWS, baseline_label
from tokenweight.keyfact.bench.settings import VARIANTS

DOCS_BEGIN, DOCS_END = "<!-- keyfact:begin -->", "<!-- keyfact:end -->"
#: The markers of the generated paper-claims block of docs/KEYFACT.md.
CLAIMS_BEGIN, CLAIMS_END = "<!-- keyfact-claims:begin -->", "<!-- keyfact-claims:end -->"
#: Marks a difference whose interval excludes 0 but whose sign differs between base models (it does not hold).
SIGN_FLIP = "≠"
#: The main table's columns: both axes, then the combined outcome and the unweighted preference accuracy.
MAIN_COLUMNS = (*KEY_AXIS[::2], *DAMAGE_AXIS, "key_acc", "pref_acc")
BREAKDOWN_COLUMNS = (*OUTCOME, "format_fail", *WEIGHT_METRICS)


def _number(x: float, sign: str = "") -> str:
    """3 decimals, or 3 significant digits for a small non-zero value (KL and weight shares are small)."""
    text = f"{x:{sign}.3f}" if x == 0 or abs(x) >= 0.0995 else f"{x:{sign}.3g}"
    return text.replace("-", "−")


def _signed(x: float) -> str:
    return _number(x, "+")


def interval(d: dict) -> str:
    """``Δ [low, high]``, in bold when the difference holds (interval excludes 0, same sign on every base model),
    followed by :data:`SIGN_FLIP` when the interval excludes 0 but a base model disagrees."""
    text = f"{_signed(d['delta'])} [{_signed(d['low'])}, {_signed(d['high'])}]"
    return f"**{text}**" if d["holds"] else f"{text} {SIGN_FLIP}" if d["excludes_zero"] else text


def cell(entry: dict, metric: str) -> str:
    """``mean`` for the baseline; ``mean Δ [low, high]`` (Δ against the baseline, 95% interval, :func:`interval`)
    otherwise."""
    mean = _number(entry["means"][metric])
    if metric not in entry["deltas"]:
        return mean
    return f"{mean} {interval(entry['deltas'][metric])}"


def reference_means(results: dict) -> dict[str, float]:
    """The base models' own metrics, averaged over the base models."""
    references = list(results["reference"].values())
    return {m: sum(r[m] for r in references) / len(references) for m in references[0]}


def variant_table(results: dict, variant: str, columns: tuple[str, ...], tests: bool) -> str:
    """One variant's table: the reference (base model), then every row; ``tests`` adds the seed tests of
    ``key_acc`` (seeds up/down, sign-test p, Wilcoxon p)."""
    analysis = results["analysis"][variant]
    header = ["row", *columns] + (["Δ key_acc per base model", "key_acc runs ↑/↓, sign p, Wilcoxon p"]
                                  if tests else [])
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    reference = reference_means(results)
    lines.append("| reference | " + " | ".join(_number(reference[c]) if c in reference else "—" for c in columns)
                 + (" | — | — |" if tests else " |"))
    for label, entry in analysis["rows"].items():
        cells = [cell(entry, c) for c in columns]
        if tests:
            d = entry["deltas"].get("key_acc")
            cells += (["baseline", "baseline"] if d is None else
                      [" / ".join(_signed(x) for x in d["per_base"]),
                       f"{d['seeds_up']}/{d['seeds_down']}, {d['sign_p']:.3f}, {d['wilcoxon_p']:.3f}"])
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def family_table(results: dict, variant: str, metric: str) -> str:
    """``metric`` per family and row (mean over base models, seeds and the family's items); for ``forced_acc``
    with the ceiling (items no run learns) per family."""
    analysis = results["analysis"][variant]
    families = list(analysis["ceiling"]["families"])
    lines = ["| row | " + " | ".join(families) + " |", "|---|" + "---:|" * len(families)]
    for label, entry in analysis["rows"].items():
        lines.append(f"| {label} | " + " | ".join(_number(entry["family"][metric][f]) for f in families) + " |")
    if metric == "forced_acc":
        lines.append("| *unlearned by every run* | " + " | ".join(f"{analysis['ceiling']['families'][f]:.3f}"
                                                                  for f in families) + " |")
    return "\n".join(lines)


def _variant_line(variant: str) -> str:
    return ", ".join(f"{k.removeprefix('keyfact_')}={v}" for k, v in VARIANTS[variant].items())


def variant_section(results: dict, variant: str) -> str:
    """Tables, the smallest detectable differences, the ceiling and the oracle check of one variant."""
    analysis = results["analysis"][variant]
    oracle = next(iter(ORACLE_ROWS))
    check = ("" if "oracle_separates" not in analysis else
             f"\nOracle check: `{oracle}` beats `{baseline_label()}` on key_acc and answer_mass, holding (interval "
             f"excluding 0, every base model): **{'yes' if analysis['oracle_separates'] else 'no'}**.\n")
    family_sections = "\n".join(f"Per family: `{metric}`\n\n{family_table(results, variant, metric)}\n"
                                for metric in FAMILY_METRICS)
    return f"""### Variant `{variant}` ({_variant_line(variant)})

{variant_table(results, variant, MAIN_COLUMNS, tests=True)}

{detectable_line(results, variant)} Items no run learns (forced choice): {analysis['ceiling']['unlearned']:.3f}.
{check}
Greedy outcome breakdown and key weights:

{variant_table(results, variant, BREAKDOWN_COLUMNS, tests=False)}

{family_sections}"""


def markdown_table(results: dict) -> str:
    """The main table of every variant (what the command prints)."""
    return "\n\n".join(f"{variant}:\n\n{variant_table(results, variant, MAIN_COLUMNS, tests=True)}\n\n"
                       f"{detectable_line(results, variant)}" for variant in results["analysis"])


def detectable_line(results: dict, variant: str) -> str:
    """The smallest detectable difference of each of :data:`DETECTABLE_METRICS` on ``variant``."""
    detectable = results["analysis"][variant]["detectable"]
    return "Smallest detectable difference (α 0.05, power 0.8): " + ", ".join(
        f"{m} {detectable[m]:.3f}" for m in DETECTABLE_METRICS) + "."


def _base_models_line(results: dict) -> str:
    """One line per base model: seed, fingerprint, judge accuracy."""
    lines = []
    for base in results["base_models"]:
        judge = base["judge"]
        accuracy = judge.get("judge_verdict_accuracy_train")
        lines.append(f"- base seed {base['seed']}: `{base['fingerprint']}`; " + (
            "no judge stage (AttentionPO's judge is untrained)" if accuracy is None else
            f"judge verdict accuracy {accuracy:.3f} on {judge['pairs']} training pairs after "
            f"{len(judge['judge_round_accuracies_train'])} judge-stage round(s) (AttentionPO's premise: above 0.5)"))
    return "\n".join(lines)


def _timing_line(results: dict) -> str:
    timing, s = results["timing"], results["settings"]
    start, end = timing["machine_at_start"], timing["machine_at_end"]
    return (f"{len(results['runs'])} runs in {timing['wall_seconds'] / 60:.1f} min wall at {s['jobs']} worker(s) on "
            f"{start['cores']} cores ({start['cpu']}; load average {start['load'][0]:g} at the start, "
            f"{end['load'][0]:g} at the end); {timing['run_seconds'] / 60:.1f} min of run time summed over the runs, "
            f"{timing['run_cpu_seconds'] / 60:.1f} min of their CPU time")


def claims_table(results: dict) -> str:
    """The paper-claims rows: paper, claim, KeyFact's test, the measured effect with its interval, the verdict."""
    lines = ["| paper | claim | KeyFact's test | measured: Δ [95% CI] (per base model) | verdict |",
             "|---|---|---|---|---|"]
    for claim in results["claims"]:
        d = claim["difference"]
        if d is None:
            measured = "not run"
        else:
            measured = f"{interval(d)} ({' / '.join(_signed(x) for x in d['per_base'])})"
            if claim.get("means"):
                measured += f"; {claim['row']} {_number(claim['means'][0])} vs uniform {_number(claim['means'][1])}"
            if claim.get("levels"):
                measured += "; " + ", ".join(f"{v}: {_number(r)} vs {_number(u)}" for v, (r, u) in
                                             claim["levels"].items())
        shown = claim["verdict"] if d is None else f"**{claim['verdict']}**"
        lines.append(f"| {claim['paper']} | {claim['claim']} | {claim['test']} | {measured} | {shown} |")
    return "\n".join(lines)


def fact_sets_section(results: dict) -> str:
    """Each shared variant's rows on this facts file and another: Δ against uniform on both, robust or not, and the
    Spearman rank correlation of the rows' Δ."""
    parts = []
    for comparison in results.get("fact_sets") or []:
        here, there = (f"`{Path(f).name}`" if f else "the built-in facts" for f in comparison["facts"])
        metrics = list(next(iter(comparison["rows"].values())).keys()) if comparison["rows"] else []
        header = ["row", *[f"Δ {m}: {name}" for m in metrics for name in (here, there)], *[f"{m} robust"
                                                                                         for m in metrics]]
        lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
        for label, entry in comparison["rows"].items():
            lines.append(f"| {label} | " + " | ".join(interval(entry[m][side]) for m in metrics
                                                     for side in ("here", "there"))
                         + " | " + " | ".join("yes" if entry[m]["robust"] else "no" for m in metrics) + " |")
        rho = ", ".join(f"{m} {comparison['spearman'][m]:+.2f}" if m in comparison["spearman"] else
                        f"{m} undefined" for m in metrics)
        parts.append(f"""### `{comparison['variant']}` on two facts files: {here} and {there}

Other run: `{comparison['command']}`. A row is robust where its difference holds on both facts files with the same
sign. Spearman rank correlation of the rows' Δ between the two (undefined below 3 shared rows or when one side's Δ are all
equal): {rho or 'no shared rows'}.

{chr(10).join(lines)}
""")
    return "\n".join(parts)


def markdown_report(results: dict) -> str:
    """The KeyFact section: the command, the base models, the budget, each variant's tables, the paper claims and
    the comparison across facts files."""
    s = results["settings"]
    row_seconds = {}
    for run in results["runs"]:
        row_seconds.setdefault(run["label"], []).append(run["seconds"])
    per_row = ", ".join(f"{label} {sum(times) / len(times):.0f}" for label, times in row_seconds.items())
    trainers = sorted({r["label"] for r in results["runs"] if r["trained_models"]})
    trained_only = (f"; the rows that train models first ({', '.join(trainers)}) train them at "
                    f"{s['trained_models_lr_factor']:g} × the learning rate" if trainers else "")
    ran_on = {}
    for run in results["runs"]:
        ran_on.setdefault(run["label"], set()).add(run["variant"])
    partial = "; ".join(f"`{label}` on {', '.join(f'`{v}`' for v in s['variants'] if v in variants)}"
                        for label, variants in ran_on.items() if len(variants) < len(s["variants"]))
    tuning = ("" if not results["tuning"] else "Learning rate per row (`--tune`, best greedy key_acc on the "
              "validation set, first base model): " + ", ".join(f"{label} {t['learning_rate']:g}" for label, t in
                                                                results["tuning"].items()) + ".\n")
    beta = "each scheme's default β" if s["beta"] is None else f"β = {s['beta']:g}"
    prompts = len(set(results["eval_items"]["prompt"]))
    sections = "\n".join(variant_section(results, variant) for variant in results["analysis"])
    fact_sets = fact_sets_section(results)
    commands = (f"Command: `{results['command']}`" if "merged_from" not in results else
                "Commands (one benchmark in several invocations, merged with `--report_from`; minutes of wall time "
                "and the load average at the start of each):\n\n```text\n" + "\n".join(
                    f"{m['command']}    # {m['timing']['wall_seconds'] / 60:.1f} min, load "
                    f"{m['timing']['machine_at_start']['load'][0]:g}" for m in results["merged_from"]) + "\n```")
    return f"""## KeyFact

{commands}

{_timing_line(results)}; seconds per run, mean over the row's runs (including the models a row trains first):
{per_row}.

Base models (size `{s['model_size']}`, facts `{s['facts'] or 'built-in'}`; each is also its runs' frozen reference;
every row runs on each):

{_base_models_line(results)}

Budget, identical for every run (`tokenweight train`'s KeyFact defaults): {s['train_size']} training pairs,
{s['epochs']:g} epoch(s), batch {s['batch_size']}, learning rate {s['learning_rate']:g} (constant), {beta}, max_length
{s['max_length']}. One fixed evaluation set of {s['eval_size']} held-out pairs on {prompts} distinct prompts (eval seed
{s['eval_seed']}, the same for every run; greedy generation of at most {s['max_new_tokens']} tokens). Seeds
{s['seeds']} (training data and order) on each of {len(s['base_seeds'])} base model(s). Rows that did not run on every
variant: {partial or 'none'}{trained_only}.{_missing_variants(s)}
{tuning}
Cells: mean over base models, seeds and items; for every row but `{baseline_label()}`, the paired difference against it
(same base model, seed and item) with its 95% hierarchical bootstrap interval over base models, then seeds, then
distinct prompts (a prompt's pairs are resampled together). **Bold**: the difference holds (the interval excludes 0
and the difference has the same sign on every base model); {SIGN_FLIP}: the interval excludes 0 but a base model
disagrees. Learning the key: `forced_acc` (teacher-forced on the clean answer template, the key outscores every
distractor), `lure_margin` (log p(key) − log p(lure), the distractor the base model's SFT answered half of the time).
Collateral damage: `answer_mass` (probability of the key and its distractors at the key slot), `format_fail` (greedy
answers that leave the template before the key), `gen_len` (greedy tokens; compare with the reference), `kl_nonkey`
(mean per-token KL(π‖π_ref) on the chosen answer's tokens other than the key). Combined: greedy `key_acc`, missed as
the lure, another answer word, a word outside the answer set, or a format failure. `pref_acc`: unweighted
implicit-reward accuracy. `key_share`: the key's share of the chosen weight from the key onward (the tokens before it
cancel); `key_weight_rel`: the key's weight over the mean weight; `key_rank`: the key's rank by weight among the
chosen tokens (1 = the heaviest, ties share their mean rank; uniform: (n + 1)/2), for `tisdpo` the rank of its
contrastive models' token reward on held-out pairs. Run tests: per-run (base model × seed) mean differences, exact
sign test and Wilcoxon signed-rank (two-sided). Plots in the report folder: `forest.png`, `curves_<variant>.png`,
`heatmaps/`.

### Paper claims

{claims_verdicts_text()}

{claims_table(results)}

{fact_sets}
{sections}"""


def _missing_variants(settings: dict) -> str:
    missing = [v for v in VARIANTS if v not in settings["variants"]]
    return "" if not missing else (f" Not in this report: the variants {', '.join(f'`{v}`' for v in missing)} "
                                   "(`--variants` chose a subset).")


def claims_verdicts_text() -> str:
    return ("Each seed paper's claim as KeyFact tests it. Verdict: **holds** (the difference is in the claimed "
            "direction and holds: interval excludes 0, same sign on every base model); **does not hold** (the "
            "opposite holds, or the interval rules out any effect in the claimed direction as large as the claim's "
            "effect of interest, given with its test); otherwise **cannot say at this scale**. A noise claim compares "
            "least-squares slopes of key accuracy over the label-noise levels the row ran on (per unit of noise; "
            "the levels' means follow, row vs uniform).")


def update_docs(results: dict, docs_path: str | Path) -> Path:
    """Replace (or append) the KeyFact section of ``docs_path`` between its markers; other sections stay."""
    return replace_block(docs_path, markdown_report(results), DOCS_BEGIN, DOCS_END, "# Benchmarks\n")


def update_claims_docs(results: dict, docs_path: str | Path) -> Path:
    """Replace (or append) the generated paper-claims block of ``docs_path`` (docs/KEYFACT.md)."""
    block = ("Generated from the results of the KeyFact benchmark in docs/BENCHMARKS.md (its commands, base models and "
             f"budget are there; `--report_from` regenerates both).\n\n{claims_verdicts_text()}\n\n"
             f"{claims_table(results)}\n")
    return replace_block(docs_path, block, CLAIMS_BEGIN, CLAIMS_END, "# KeyFact\n")


def replace_block(docs_path: str | Path, body: str, begin: str, end: str, new_file: str) -> Path:
    """Write ``body`` between the markers ``begin`` … ``end`` of ``docs_path`` (appended with them when absent)."""
    path = Path(docs_path)
    text = path.read_text(encoding="utf-8") if path.exists() else new_file
    section = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text:
        if text.count(begin) != 1 or text.count(end) != 1 or text.index(end) < text.index(begin):
            raise ValueError(f"{path}: expected exactly one {begin} … {end} block")
        head, rest = text.split(begin)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
