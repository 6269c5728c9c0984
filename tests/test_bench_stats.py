"""The benchmark's statistics against hand-computed cases and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tokenweight.keyfact.bench.stats import (DETECTABLE_Z, detectable_difference, hierarchical_bootstrap, paired_difference,
                                     prompt_clusters, sign_test, wilcoxon_test)


def test_sign_test_by_hand():
    # 5 of 5 seeds up: 2 · (1/2)^5; 4 of 5: 2 · (C(5,4) + C(5,5)) / 32; a zero is dropped (4 of 4: 2/16)
    assert sign_test(np.array([1.0, 2, 3, 4, 5])) == pytest.approx(2 / 32)
    assert sign_test(np.array([1.0, 2, 3, 4, -5])) == pytest.approx(2 * 6 / 32)
    assert sign_test(np.array([1.0, 2, 3, 4, 0])) == pytest.approx(2 / 16)
    assert sign_test(np.zeros(5)) == 1.0


def test_wilcoxon_by_hand():
    # ranks 1..5, the negative one is rank 5: W- = 5; subsets of {1..5} with rank sum <= 5 are {}, 5 singletons,
    # {1,2} {1,3} {1,4} {2,3}: 10 of 32, so p = 2 · 10/32
    assert wilcoxon_test(np.array([0.1, 0.2, 0.3, 0.4, -0.5])) == pytest.approx(20 / 32)
    assert wilcoxon_test(np.array([0.1, 0.2, 0.3, 0.4, 0.5])) == pytest.approx(2 / 32)
    # W- = 1 (rank 1 negative): subsets with sum <= 1 are {} and {1}: p = 2 · 2/32
    assert wilcoxon_test(np.array([-0.1, 0.2, 0.3, 0.4, 0.5])) == pytest.approx(4 / 32)


def test_bootstrap_of_seed_effects_matches_the_closed_form():
    # d[s, i] = a_s: resampling items changes nothing, resampling seeds gives Var = var_pop(a) / S
    a = np.array([0.0, 1.0, 2.0, 3.0, 10.0])
    d = np.repeat(a[:, None], 7, axis=1)[None]  # one base model
    means = hierarchical_bootstrap(d, np.arange(7), 40000, np.random.default_rng(1))
    assert means.mean() == pytest.approx(a.mean(), abs=0.05)
    assert means.std() == pytest.approx(math.sqrt(a.var() / len(a)), rel=0.03)


def test_bootstrap_of_item_effects_matches_the_closed_form():
    # one seed, items only: Var = var_pop(items) / N
    rng = np.random.default_rng(0)
    items = rng.normal(size=(1, 1, 50))
    means = hierarchical_bootstrap(items, np.arange(50), 40000, np.random.default_rng(2))
    assert means.std() == pytest.approx(math.sqrt(items.var() / 50), rel=0.03)


def test_paired_difference_pairs_seed_and_item():
    rng = np.random.default_rng(0)
    baseline = rng.normal(size=(1, 5, 40)) * 10  # large shared noise, removed by pairing
    row = baseline + 0.5
    d = paired_difference(row, baseline, np.arange(40), resamples=500)
    assert d.delta == pytest.approx(0.5)
    assert d.low == pytest.approx(0.5) and d.high == pytest.approx(0.5)
    assert (d.seeds_up, d.seeds_down) == (5, 0) and d.sign_p == pytest.approx(2 / 32)
    assert d.wilcoxon_p == pytest.approx(2 / 32) and d.excludes_zero
    assert d.holds and d.per_base == [pytest.approx(0.5)]
    noisy = paired_difference(baseline + rng.normal(size=(1, 5, 40)), baseline, np.arange(40), resamples=2000)
    assert noisy.low < noisy.delta < noisy.high
    assert noisy.high - noisy.low == pytest.approx(2 * 1.96 * noisy.se, rel=0.15)
    with pytest.raises(ValueError, match="seeds, items"):
        paired_difference(row[:, :4], baseline, np.arange(40))


def test_bootstrap_of_base_model_effects_matches_the_closed_form():
    # d[b, s, i] = c_b: only resampling base models moves the mean, Var = var_pop(c) / B
    c = np.array([-1.0, 0.5, 4.0])
    d = np.broadcast_to(c[:, None, None], (3, 4, 6)).copy()
    means = hierarchical_bootstrap(d, np.arange(6), 40000, np.random.default_rng(3))
    assert means.std() == pytest.approx(math.sqrt(c.var() / 3), rel=0.03)


def test_repeated_pairs_of_one_prompt_are_resampled_together():
    # 30 distinct prompts, each repeated 1 to 6 times (the evaluation set's pairs share prompts); the metric depends
    # on the prompt only. The oracle: a bootstrap written here over the distinct prompts, each drawn prompt counted
    # with its number of pairs (the mean over the drawn pairs), on one base model and one seed.
    rng = np.random.default_rng(4)
    per_prompt = rng.normal(size=30)
    repeats = rng.integers(1, 7, size=30)
    prompts = np.repeat(np.arange(30), repeats)
    order = rng.permutation(len(prompts))  # pairs of one prompt are not adjacent in the evaluation set
    prompts = prompts[order]
    d = per_prompt[prompts][None, None, :]
    means = hierarchical_bootstrap(d, prompts, 40000, np.random.default_rng(5))
    drawn = np.random.default_rng(6).integers(0, 30, size=(40000, 30))  # [resamples, prompts drawn]
    oracle = (per_prompt[drawn] * repeats[drawn]).sum(axis=1) / repeats[drawn].sum(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    oracle_low, oracle_high = np.quantile(oracle, [0.025, 0.975])
    assert means.mean() == pytest.approx(np.mean(oracle), abs=0.01)
    assert (low, high) == (pytest.approx(oracle_low, abs=0.02), pytest.approx(oracle_high, abs=0.02))
    # resampling the pairs one by one, as if independent, gives a narrower interval: sqrt(mean repeats) narrower
    pairs = [d[0, 0, np.random.default_rng(k).integers(0, d.shape[2], size=d.shape[2])].mean() for k in range(4000)]
    assert np.std(pairs) < 0.8 * means.std()


def test_prompt_clusters_number_prompts_in_order_of_first_appearance():
    cluster, counts = prompt_clusters([7, 3, 7, 9, 3, 7])
    assert cluster.tolist() == [0, 1, 0, 2, 1, 0] and counts.tolist() == [3, 2, 1]


def test_a_difference_holds_only_with_the_same_sign_on_every_base_model():
    baseline = np.zeros((2, 3, 20))
    agree = paired_difference(baseline + np.array([0.4, 0.6])[:, None, None], baseline, np.arange(20), 500)
    assert agree.excludes_zero and agree.holds and agree.per_base == [pytest.approx(0.4), pytest.approx(0.6)]
    flip = np.concatenate([np.full((1, 3, 20), 2.0), np.full((1, 3, 20), -0.1)])  # base model 2 goes the other way
    d = paired_difference(flip, baseline, np.arange(20), 500)
    assert d.delta == pytest.approx(0.95) and d.per_base == [pytest.approx(2.0), pytest.approx(-0.1)]
    assert not d.holds and d.as_dict()["holds"] is False


def test_detectable_difference_is_z_times_the_median_standard_error():
    assert DETECTABLE_Z == pytest.approx(2.8016, abs=1e-4)
    assert detectable_difference([0.01, 0.03, 0.02]) == pytest.approx(0.02 * DETECTABLE_Z)
    assert math.isnan(detectable_difference([]))
