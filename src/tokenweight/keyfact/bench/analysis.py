"""From the runs' per-item metrics to the table's numbers: means, paired differences against the baseline (over base
models, seeds and distinct prompts), the ceiling of items no run learns, per-family accuracy and weights, the
smallest detectable difference, the oracle sanity check."""

from __future__ import annotations

import numpy as np

from tokenweight.keyfact.bench.rows import ORACLE_ROWS, baseline_label
from tokenweight.keyfact.bench.settings import BenchSettings
from tokenweight.keyfact.bench.stats import detectable_difference, paired_difference

#: Learning the key: teacher-forced on the clean answer template.
KEY_AXIS = ("forced_acc", "key_margin", "lure_margin")
#: Collateral damage: what else training moved.
DAMAGE_AXIS = ("answer_mass", "format_fail", "gen_len", "kl_nonkey")
#: The combined outcome, greedy: correct key, or which way it was missed (``format_fail`` is the fourth way).
OUTCOME = ("key_acc", "greedy_lure", "greedy_other", "greedy_outside")
#: Where the scheme's weights put the key (chosen completions).
WEIGHT_METRICS = ("key_share", "key_weight_rel", "key_rank")
COMPARED = (*KEY_AXIS, *DAMAGE_AXIS, *OUTCOME, "pref_acc", *WEIGHT_METRICS)
#: The oracle must beat the baseline on both with an interval excluding 0: greedy accuracy and answer-set mass
#: (a metric of collateral damage; higher is less damage).
SANITY_METRICS = ("key_acc", "answer_mass")
#: Metrics whose smallest detectable difference is printed under the table.
DETECTABLE_METRICS = ("forced_acc", "key_acc", "answer_mass", "gen_len")
#: Metrics reported per family and row (so that weights that find the key on one family and not another show).
FAMILY_METRICS = ("forced_acc", "key_acc", "key_weight_rel", "key_share")


def item_matrix(runs: list[dict], variant: str, label: str, metric: str, settings: BenchSettings) -> np.ndarray:
    """``[B, S, N]``: ``metric`` of row ``label`` on ``variant`` per base model (``settings.base_seeds`` order),
    seed (``settings.seeds`` order) and evaluation item."""
    by_run = {(r["base_seed"], r["seed"]): r["items"][metric] for r in runs
              if r["variant"] == variant and r["label"] == label}
    missing = [(b, s) for b in settings.base_seeds for s in settings.seeds if (b, s) not in by_run]
    if missing:
        raise ValueError(f"KeyFact bench: no run of {label!r} on {variant!r} for (base seed, seed) {missing}")
    return np.array([[by_run[b, s] for s in settings.seeds] for b in settings.base_seeds], dtype=np.float64)


def _by_family(values: np.ndarray, families: list[str]) -> dict[str, float]:
    """Mean of ``values`` ``[N]`` per family."""
    return {f: float(values[[k for k, g in enumerate(families) if g == f]].mean()) for f in sorted(set(families))}


def analyse_variant(runs: list[dict], variant: str, settings: BenchSettings, eval_items: dict[str, list]) -> dict:
    """The numbers of one variant's table (see the module docstring); ``eval_items``: every evaluation item's
    ``family`` and ``prompt`` id."""
    families, prompts = eval_items["family"], eval_items["prompt"]
    labels = [label for label in settings.rows if any(r["variant"] == variant and r["label"] == label for r in runs)]
    baseline = baseline_label()
    rows = {}
    for label in labels:
        matrices = {m: item_matrix(runs, variant, label, m, settings) for m in COMPARED}
        entry = {"means": {m: float(x.mean()) for m, x in matrices.items()}, "deltas": {},
                 "base_means": {m: [float(v) for v in x.mean(axis=(1, 2))] for m, x in matrices.items()}}
        if label != baseline:
            entry["deltas"] = {m: paired_difference(x, item_matrix(runs, variant, baseline, m, settings), prompts,
                                                    settings.bootstrap).as_dict() for m, x in matrices.items()}
        entry["family"] = {m: _by_family(matrices[m].mean(axis=(0, 1)), families) for m in FAMILY_METRICS}
        rows[label] = entry
    learned = np.stack([item_matrix(runs, variant, label, "forced_acc", settings) for label in labels])
    never = learned.max(axis=(0, 1, 2)) == 0  # [N]: no row, no base model, no seed gets the item right
    result = {"rows": rows,
              "ceiling": {"unlearned": float(never.mean()),
                          "families": {f: float(never[[k for k, g in enumerate(families) if g == f]].mean())
                                       for f in sorted(set(families))}},
              "detectable": {m: detectable_difference([rows[label]["deltas"][m]["se"] for label in labels
                                                       if label != baseline]) for m in DETECTABLE_METRICS}}
    oracle = next(iter(ORACLE_ROWS))
    if oracle in rows:
        deltas = rows[oracle]["deltas"]
        result["oracle_separates"] = all(deltas[m]["holds"] and deltas[m]["delta"] > 0 for m in SANITY_METRICS)
    return result


def analyse(runs: list[dict], settings: BenchSettings, eval_items: dict[str, list]) -> dict:
    """``{variant: analyse_variant(...)}`` for every variant that has runs."""
    return {variant: analyse_variant(runs, variant, settings, eval_items) for variant in settings.variants}
