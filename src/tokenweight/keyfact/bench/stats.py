"""Paired statistics of the KeyFact benchmark: a row against the baseline on the same seeds and the same items.

Every metric is measured per evaluation item (the fixed evaluation set is shared by every run), so a comparison is
the matrix of paired differences ``d[s, i] = row[s, i] − baseline[s, i]`` (``S`` seeds × ``N`` items):

- the estimate is ``mean(d)``;
- its 95% interval is the percentile interval of a hierarchical bootstrap: draw ``S`` seeds with replacement, then,
  within each drawn seed, ``N`` items with replacement, and take the mean (seeds and items are both sources of
  variation: a new benchmark run draws new training seeds, a new task would draw new items);
- the tests across seeds use the per-seed means ``mean_i d[s, i]``: an exact two-sided sign test and the exact
  Wilcoxon signed-rank test (with 5 seeds the smallest attainable two-sided p-value of either is 2/32 = 0.0625);
- the smallest detectable difference (two-sided α 0.05, power 0.8) is ``(z_0.975 + z_0.8) · SE`` with ``SE`` the
  bootstrap standard deviation of the estimate.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

#: (z_{0.975} + z_{0.80}): a true difference of this many standard errors is detected with probability 0.8.
DETECTABLE_Z = 1.959963984540054 + 0.8416212335729143


@dataclass(frozen=True)
class PairedDifference:
    """One row against the baseline on one metric (see the module docstring)."""

    delta: float
    low: float
    high: float
    se: float
    sign_p: float
    wilcoxon_p: float
    seeds_up: int
    seeds_down: int

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def hierarchical_bootstrap(differences: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """``[resamples]`` means of ``differences`` ``[S, N]`` resampled seeds first, then items within each seed."""
    seeds, items = differences.shape
    seed_draws = rng.integers(0, seeds, size=(resamples, seeds))
    item_draws = rng.integers(0, items, size=(resamples, seeds, items))
    return differences[seed_draws[:, :, None], item_draws].mean(axis=(1, 2))


def sign_test(values: np.ndarray) -> float:
    """Exact two-sided sign test of ``values`` ``[S]`` against 0 (zeros dropped); 1.0 when all are zero."""
    up, down = int((values > 0).sum()), int((values < 0).sum())
    if up + down == 0:
        return 1.0
    return float(stats.binomtest(up, up + down, 0.5).pvalue)


def wilcoxon_test(values: np.ndarray) -> float:
    """Exact two-sided Wilcoxon signed-rank test of ``values`` ``[S]`` against 0 (zeros dropped); 1.0 when all are
    zero."""
    values = values[values != 0]
    if len(values) == 0:
        return 1.0
    return float(stats.wilcoxon(values, method="exact").pvalue)


def paired_difference(row: np.ndarray, baseline: np.ndarray, resamples: int = 2000,
                      seed: int = 0) -> PairedDifference:
    """The comparison of ``row`` against ``baseline``, both ``[S, N]`` (seed ``s``, item ``i`` paired)."""
    if row.shape != baseline.shape or row.ndim != 2:
        raise ValueError(f"paired_difference needs two [seeds, items] arrays of one shape, got {row.shape} and "
                         f"{baseline.shape}")
    differences = np.asarray(row, dtype=np.float64) - np.asarray(baseline, dtype=np.float64)
    means = hierarchical_bootstrap(differences, resamples, np.random.default_rng(seed))
    per_seed = differences.mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    return PairedDifference(delta=float(differences.mean()), low=float(low), high=float(high),
                            se=float(means.std(ddof=1)), sign_p=sign_test(per_seed), wilcoxon_p=wilcoxon_test(per_seed),
                            seeds_up=int((per_seed > 0).sum()), seeds_down=int((per_seed < 0).sum()))


def detectable_difference(standard_errors: list[float]) -> float:
    """The smallest difference a comparison of this run detects (median standard error × :data:`DETECTABLE_Z`)."""
    if not standard_errors:
        return math.nan
    return float(np.median(standard_errors)) * DETECTABLE_Z
