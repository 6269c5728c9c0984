"""The paper claims' verdicts and the label-noise slope against hand-computed cases, and the comparison of one
benchmark across two facts files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tokenweight.keyfact.bench import BenchSettings
from tokenweight.keyfact.bench.analysis import COMPARED, analyse
from tokenweight.keyfact.bench.claims import compare_fact_sets, noise_slope, paper_claims, verdict

PROMPTS = [0, 0, 1, 2, 2, 2, 3, 4]  # 8 evaluation items on 5 distinct prompts


def _difference(delta, low, high, se, per_base):
    excludes = low > 0 or high < 0
    holds = excludes and all(np.sign(d) == np.sign(delta) for d in per_base)
    return {"delta": delta, "low": low, "high": high, "se": se, "per_base": per_base, "excludes_zero": excludes,
            "holds": holds}


def test_verdicts_by_hand():
    assert verdict(_difference(-2.0, -3.0, -1.0, 0.5, [-1.5, -2.5]), -1, 1.0) == "holds"
    assert verdict(_difference(2.0, 1.0, 3.0, 0.5, [1.5, 2.5]), -1, 1.0) == "does not hold"  # the opposite holds
    # the interval includes 0 and rules out a claimed effect as large as the effect of interest (0.2)
    assert verdict(_difference(0.0, -0.1, 0.1, 0.05, [0.01, -0.01]), +1, 0.2) == "does not hold"
    # the same interval with an effect of interest it does not rule out (0.05)
    assert verdict(_difference(0.0, -0.1, 0.1, 0.05, [0.01, -0.01]), +1, 0.05) == "cannot say at this scale"
    # excludes 0 in the claimed direction, but one base model goes the other way
    assert verdict(_difference(0.3, 0.1, 0.5, 0.1, [0.7, -0.1]), +1, 0.05) == "cannot say at this scale"


def _runs(effects: dict[tuple[str, str], float], base_seeds=(0, 1), seeds=(0, 1)) -> list[dict]:
    """Runs whose every metric is 0.5 on every item, plus ``effects[(variant, label)]`` on ``key_acc``."""
    runs = []
    for (variant, label), effect in effects.items():
        for base in base_seeds:
            for seed in seeds:
                items = {m: [0.5] * len(PROMPTS) for m in COMPARED}
                items["key_acc"] = [0.5 + effect] * len(PROMPTS)
                runs.append({"variant": variant, "label": label, "base_seed": base, "seed": seed, "items": items})
    return runs


def test_noise_slope_is_the_least_squares_slope_of_the_differences():
    # key_acc of tidpo minus uniform: 0 at noise 0, +0.1 at 0.2, +0.2 at 0.4 → slope 0.5 per unit of noise
    effects = {("base", "uniform"): 0.0, ("noise0.2", "uniform"): -0.2, ("noise0.4", "uniform"): -0.4,
               ("base", "tidpo"): 0.0, ("noise0.2", "tidpo"): -0.1, ("noise0.4", "tidpo"): -0.2}
    settings = BenchSettings(rows=["uniform", "tidpo"], seeds=[0, 1], base_seeds=[0, 1],
                             variants=["base", "noise0.2", "noise0.4"], bootstrap=200)
    difference, levels = noise_slope(_runs(effects), settings, "tidpo", "key_acc", PROMPTS)
    assert difference["delta"] == pytest.approx(0.5) and difference["per_base"] == pytest.approx([0.5, 0.5])
    assert levels == {"base": (pytest.approx(0.5), pytest.approx(0.5)),
                      "noise0.2": (pytest.approx(0.4), pytest.approx(0.3)),
                      "noise0.4": (pytest.approx(0.3), pytest.approx(0.1))}
    assert noise_slope(_runs(effects), settings, "otpo", "key_acc", PROMPTS) is None  # never ran


def test_paper_claims_read_the_analysis_and_say_which_did_not_run():
    effects = {("base", "uniform"): 0.0, ("base", "attention"): 0.1, ("noise0.4", "uniform"): -0.3,
               ("noise0.4", "attention"): -0.2}
    settings = BenchSettings(rows=["uniform", "attention"], seeds=[0, 1], base_seeds=[0, 1],
                             variants=["base", "noise0.4"], bootstrap=200)
    runs = _runs(effects)
    eval_items = {"family": ["a"] * 4 + ["b"] * 4, "prompt": PROMPTS}
    results = {"settings": vars(settings), "eval_items": eval_items, "analysis": analyse(runs, settings, eval_items)}
    claims = {(c["row"], c["metric"]): c for c in paper_claims(results, runs)}
    gain = claims["attention", "key_acc"]
    assert gain["difference"]["delta"] == pytest.approx(0.1) and gain["verdict"] == "holds"
    assert gain["means"] == (pytest.approx(0.6), pytest.approx(0.5))
    assert claims["attention", "key_weight_rel"]["verdict"] == "does not hold"  # Δ 0 exactly, interval [0, 0]
    assert claims["otpo", "gen_len"]["verdict"] == "not run" and claims["otpo", "gen_len"]["difference"] is None
    assert claims["tidpo", "key_acc"]["verdict"] == "not run"


def test_compare_fact_sets_ranks_rows_and_marks_the_robust_ones():
    settings = BenchSettings(rows=["uniform", "a", "b", "c"], seeds=[0, 1], base_seeds=[0, 1], variants=["base"],
                             bootstrap=200)
    eval_items = {"family": ["f"] * 8, "prompt": PROMPTS}

    def results(effects, facts):
        runs = _runs({("base", label): effect for label, effect in effects.items()})
        return {"settings": {**vars(settings), "facts": facts}, "command": f"bench on {facts}",
                "analysis": analyse(runs, settings, eval_items)}

    here = results({"uniform": 0.0, "a": 0.2, "b": 0.1, "c": -0.1}, None)
    there = results({"uniform": 0.0, "a": -0.1, "b": 0.3, "c": -0.2}, "everyday.json")
    [comparison] = compare_fact_sets(here, [there])
    assert comparison["facts"] == [None, "everyday.json"] and comparison["variant"] == "base"
    robust = {label: entry["key_acc"]["robust"] for label, entry in comparison["rows"].items()}
    assert robust == {"a": False, "b": True, "c": True}  # a changes sign between the facts files
    assert json.loads(json.dumps(comparison)) == comparison  # written to results.json as it is
    # ranks of Δ key_acc: here a > b > c, there b > a > c → Spearman 1 − 6·(1 + 1 + 0)/(3·8) = 0.5
    assert comparison["spearman"]["key_acc"] == pytest.approx(0.5)
