"""The benchmark's statistics against hand-computed cases and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tokenweight.keyfact.bench.stats import (DETECTABLE_Z, detectable_difference, hierarchical_bootstrap, paired_difference,
                                     sign_test, wilcoxon_test)


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
    d = np.repeat(a[:, None], 7, axis=1)
    means = hierarchical_bootstrap(d, 40000, np.random.default_rng(1))
    assert means.mean() == pytest.approx(a.mean(), abs=0.05)
    assert means.std() == pytest.approx(math.sqrt(a.var() / len(a)), rel=0.03)


def test_bootstrap_of_item_effects_matches_the_closed_form():
    # one seed, items only: Var = var_pop(items) / N
    rng = np.random.default_rng(0)
    items = rng.normal(size=(1, 50))
    means = hierarchical_bootstrap(items, 40000, np.random.default_rng(2))
    assert means.std() == pytest.approx(math.sqrt(items.var() / 50), rel=0.03)


def test_paired_difference_pairs_seed_and_item():
    rng = np.random.default_rng(0)
    baseline = rng.normal(size=(5, 40)) * 10  # large shared noise, removed by pairing
    row = baseline + 0.5
    d = paired_difference(row, baseline, resamples=500)
    assert d.delta == pytest.approx(0.5)
    assert d.low == pytest.approx(0.5) and d.high == pytest.approx(0.5)
    assert (d.seeds_up, d.seeds_down) == (5, 0) and d.sign_p == pytest.approx(2 / 32)
    assert d.wilcoxon_p == pytest.approx(2 / 32) and d.excludes_zero
    noisy = paired_difference(baseline + rng.normal(size=(5, 40)), baseline, resamples=2000)
    assert noisy.low < noisy.delta < noisy.high
    assert noisy.high - noisy.low == pytest.approx(2 * 1.96 * noisy.se, rel=0.15)
    with pytest.raises(ValueError, match="seeds, items"):
        paired_difference(row[:4], baseline)


def test_detectable_difference_is_z_times_the_median_standard_error():
    assert DETECTABLE_Z == pytest.approx(2.8016, abs=1e-4)
    assert detectable_difference([0.01, 0.03, 0.02]) == pytest.approx(0.02 * DETECTABLE_Z)
    assert math.isnan(detectable_difference([]))
