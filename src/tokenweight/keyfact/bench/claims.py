"""The seed papers' claims, each tested on KeyFact, and the comparison of one benchmark across facts files.

A claim is a row's paired difference against plain DPO (``uniform``) on one metric and variant, in a claimed
direction, or the difference of label-noise slopes (TI-DPO's Table B8: key accuracy from noise 0 to 0.4). Its verdict
(:func:`verdict`): **holds** (the difference is in the claimed direction and holds: interval excludes 0, same sign on
every base model), **does not hold** (the opposite holds, or the interval rules out any effect in the claimed direction
as large as the claim's smallest effect of interest, :data:`MEANINGFUL`), else **cannot say at this scale**.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from tokenweight.keyfact.bench.analysis import item_matrix
from tokenweight.keyfact.bench.rows import baseline_label
from tokenweight.keyfact.bench.settings import VARIANTS, BenchSettings, saved_settings
from tokenweight.keyfact.bench.stats import difference_summary

#: The label-noise variants of the noise claim, by noise level (the base variant is noise 0).
NOISE_LEVELS = {"base": 0.0, **{v: VARIANTS[v]["keyfact_label_noise"] for v in VARIANTS if v.startswith("noise")}}


#: The smallest effect of interest per metric (in the claimed direction): an interval whose claimed-side bound stays
#: below it rules the claim out. ``gen_len`` in tokens, ``key_weight_rel`` in multiples of the mean weight, the rest
#: in fractions of items; a noise slope's is per unit of label noise (0.05: 0.02 of key accuracy at noise 0.4).
MEANINGFUL = {"gen_len": 1.0, "format_fail": 0.02, "key_weight_rel": 0.1, "key_share": 0.01, "key_acc": 0.02}
NOISE_SLOPE_MEANINGFUL = 0.05


@dataclass(frozen=True)
class Claim:
    """``paper``'s ``claim``, tested as ``row`` − uniform on ``metric`` (``variant``; ``noise``: the slope over the
    label-noise variants), expected ``direction`` (+1: row above uniform)."""

    paper: str
    claim: str
    row: str
    metric: str
    direction: int
    variant: str = "base"
    noise: bool = False

    @property
    def meaningful(self) -> float:
        return NOISE_SLOPE_MEANINGFUL if self.noise else MEANINGFUL[self.metric]

    def test(self) -> str:
        what = (f"slope of `{self.metric}` over label noise (`base` = 0, `noise*`), `{self.row}` − `uniform`"
                if self.noise else f"Δ `{self.metric}` `{self.row}` − `uniform` on `{self.variant}`")
        return f"{what}, expected {'> 0' if self.direction > 0 else '< 0'} (effect of interest {self.meaningful:g})"


def declared_claims() -> list[Claim]:
    """Every claim the registered schemes declare (``SchemeTooling.claims``), in registry order."""
    from tokenweight.weights import SCHEMES

    return [Claim(c.paper, c.claim, f"{name}:{c.ablation}" if c.ablation else name, c.metric, c.direction, c.variant,
                  c.noise) for name, scheme in SCHEMES.items() for c in scheme.tooling.claims]


def verdict(d: dict, direction: int, meaningful: float) -> str:
    """``holds`` / ``does not hold`` / ``cannot say at this scale`` for the difference ``d``
    (:meth:`~tokenweight.keyfact.bench.stats.PairedDifference.as_dict`), the claimed ``direction`` and the smallest effect
    of interest ``meaningful`` (module docstring)."""
    if d["holds"]:
        return "holds" if np.sign(d["delta"]) == direction else "does not hold"
    claimed_bound = d["high"] if direction > 0 else -d["low"]  # the largest claimed effect the interval allows
    if claimed_bound < meaningful:
        return "does not hold"
    return "cannot say at this scale"


def noise_slope(runs: list[dict], settings: BenchSettings, label: str, metric: str,
                prompts: list[int]) -> tuple[dict, dict] | None:
    """The least-squares slope of ``metric`` over the label-noise levels ``label`` ran on, as a difference against
    uniform's (a linear combination of the per-variant paired differences, bootstrapped as one ``[B, S, N]`` array),
    and the per-level means ``{variant: (row, uniform)}``; ``None`` below two levels."""
    variants = [v for v in NOISE_LEVELS if v in settings.variants
                and any(r["variant"] == v and r["label"] == label for r in runs)]
    if len(variants) < 2:
        return None
    x = np.array([NOISE_LEVELS[v] for v in variants])
    weights = (x - x.mean()) / ((x - x.mean()) ** 2).sum()
    baseline = baseline_label()
    combined, levels = 0.0, {}
    for weight, variant in zip(weights, variants):
        row, base = (item_matrix(runs, variant, name, metric, settings) for name in (label, baseline))
        combined = combined + weight * (row - base)
        levels[variant] = (float(row.mean()), float(base.mean()))
    return difference_summary(combined, prompts, settings.bootstrap).as_dict(), levels


def paper_claims(results: dict, runs: list[dict]) -> list[dict]:
    """Every claim of :func:`declared_claims` whose row ran: the test, the measured difference (``delta``, ``low``,
    ``high``, per base model …), the verdict and, for a noise claim, the per-level means."""
    settings = saved_settings(results)
    out = []
    for claim in declared_claims():
        entry = {"paper": claim.paper, "claim": claim.claim, "test": claim.test(), "row": claim.row,
                 "metric": claim.metric, "variant": "noise" if claim.noise else claim.variant}
        if claim.noise:
            measured = noise_slope(runs, settings, claim.row, claim.metric, results["eval_items"]["prompt"])
            difference, entry["levels"] = measured if measured else (None, None)
        else:
            rows = results["analysis"].get(claim.variant, {}).get("rows", {})
            difference = rows[claim.row]["deltas"][claim.metric] if claim.row in rows else None
            if difference is not None:
                entry["means"] = (rows[claim.row]["means"][claim.metric], rows[baseline_label()]["means"][claim.metric])
        entry["difference"] = difference
        entry["verdict"] = "not run" if difference is None else verdict(difference, claim.direction, claim.meaningful)
        out.append(entry)
    return out


def compare_fact_sets(results: dict, others: list[dict], metrics=("key_acc", "answer_mass")) -> list[dict]:
    """Per other run folder's results (another facts file) and shared variant: each shared row's difference
    against uniform here and there, whether it is **robust** (holds on both, same sign), and the Spearman rank
    correlation of the rows' Δ over the shared rows, per metric (absent below 3 rows or when one side's Δ are all
    equal)."""
    comparisons = []
    for other in others:
        for variant in [v for v in results["analysis"] if v in other["analysis"]]:
            here, there = results["analysis"][variant]["rows"], other["analysis"][variant]["rows"]
            labels = [label for label in here if label in there and here[label]["deltas"]]
            entry = {"facts": [results["settings"]["facts"], other["settings"]["facts"]], "variant": variant,
                     "command": other["command"], "rows": {}, "spearman": {}}
            for label in labels:
                entry["rows"][label] = {m: {"here": here[label]["deltas"][m], "there": there[label]["deltas"][m],
                                            "robust": _robust(here[label]["deltas"][m], there[label]["deltas"][m])}
                                        for m in metrics}
            for m in metrics:
                first, second = ([side[x]["deltas"][m]["delta"] for x in labels] for side in (here, there))
                if len(labels) >= 3 and len(set(first)) > 1 and len(set(second)) > 1:  # else ρ is undefined
                    entry["spearman"][m] = float(stats.spearmanr(first, second).statistic)
            comparisons.append(entry)
    return comparisons


def _robust(here: dict, there: dict) -> bool:
    return bool(here["holds"] and there["holds"] and np.sign(here["delta"]) == np.sign(there["delta"]))
