"""From the runs' per-item metrics to the table's numbers: means, paired differences against the baseline, the
ceiling of items no run learns, per-family accuracy, the smallest detectable difference, the oracle sanity check."""

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


def item_matrix(runs: list[dict], variant: str, label: str, metric: str, seeds: list[int]) -> np.ndarray:
    """``[S, N]``: ``metric`` per seed (in ``seeds`` order) and evaluation item of row ``label`` on ``variant``."""
    by_seed = {r["seed"]: r["items"][metric] for r in runs if r["variant"] == variant and r["label"] == label}
    missing = [s for s in seeds if s not in by_seed]
    if missing:
        raise ValueError(f"KeyFact bench: no run of {label!r} on {variant!r} for seeds {missing}")
    return np.array([by_seed[s] for s in seeds], dtype=np.float64)


def _families(settings: BenchSettings) -> list[str]:
    from tokenweight.keyfact.bench.runs import evaluation_rows
    return list(evaluation_rows(settings, "eval", settings.eval_size)["family"])


def analyse_variant(runs: list[dict], variant: str, settings: BenchSettings, families: list[str]) -> dict:
    """The numbers of one variant's table (see the module docstring)."""
    labels = [label for label in settings.rows if any(r["variant"] == variant and r["label"] == label for r in runs)]
    baseline = baseline_label()
    rows = {}
    for label in labels:
        matrices = {m: item_matrix(runs, variant, label, m, settings.seeds) for m in COMPARED}
        entry = {"means": {m: float(x.mean()) for m, x in matrices.items()}, "deltas": {}}
        if label != baseline:
            entry["deltas"] = {m: paired_difference(x, item_matrix(runs, variant, baseline, m, settings.seeds),
                                                    settings.bootstrap).as_dict() for m, x in matrices.items()}
        forced = matrices["forced_acc"].mean(axis=0)
        entry["family_forced_acc"] = {f: float(forced[[k for k, g in enumerate(families) if g == f]].mean())
                                      for f in sorted(set(families))}
        rows[label] = entry
    learned = np.stack([item_matrix(runs, variant, label, "forced_acc", settings.seeds) for label in labels])
    never = learned.max(axis=(0, 1)) == 0  # [N]: no row, no seed gets the item right
    result = {"rows": rows,
              "ceiling": {"unlearned": float(never.mean()),
                          "families": {f: float(never[[k for k, g in enumerate(families) if g == f]].mean())
                                       for f in sorted(set(families))}},
              "detectable": {m: detectable_difference([rows[label]["deltas"][m]["se"] for label in labels
                                                       if label != baseline]) for m in DETECTABLE_METRICS}}
    oracle = next(iter(ORACLE_ROWS))
    if oracle in rows:
        deltas = rows[oracle]["deltas"]
        result["oracle_separates"] = all(deltas[m]["low"] > 0 for m in SANITY_METRICS)
    return result


def analyse(runs: list[dict], settings: BenchSettings) -> dict:
    """``{variant: analyse_variant(...)}`` for every variant that has runs."""
    families = _families(settings)
    return {variant: analyse_variant(runs, variant, settings, families) for variant in settings.variants}
