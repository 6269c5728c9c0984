"""Paired statistics of the KeyFact benchmark: a row against the baseline on the same base models, seeds and items.

Every metric is measured per evaluation item (the fixed evaluation set is shared by every run), so a comparison is
the array of paired differences ``d[b, s, i] = row[b, s, i] − baseline[b, s, i]`` (``B`` base models × ``S`` seeds ×
``N`` items; seed ``s`` of base model ``b`` is its own run):

- the estimate is ``mean(d)``;
- its 95% interval is the percentile interval of a hierarchical bootstrap over the units that are independent: draw
  ``B`` base models with replacement, within each drawn base model ``S`` seeds, within each drawn seed ``P``
  *distinct prompts* (a cluster bootstrap: a drawn prompt brings all its items, and the mean is over the drawn
  items). Items of one prompt are not independent (forced choice, answer mass and greedy accuracy depend on the
  prompt only), so resampling them one by one would give intervals too narrow;
- a difference **holds** when its interval excludes 0 *and* its mean has that sign on every base model;
- the tests across runs use the per-run means ``mean_i d[b, s, i]``: an exact two-sided sign test and the exact
  Wilcoxon signed-rank test (with 5 runs the smallest attainable two-sided p-value of either is 2/32 = 0.0625);
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
    """One row against the baseline on one metric (see the module docstring); ``per_base``: the mean difference on
    each base model."""

    delta: float
    low: float
    high: float
    se: float
    per_base: list[float]
    sign_p: float
    wilcoxon_p: float
    seeds_up: int
    seeds_down: int

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    @property
    def holds(self) -> bool:
        """The interval excludes 0 and every base model's mean difference has the sign of the estimate."""
        return self.excludes_zero and all(np.sign(d) == np.sign(self.delta) for d in self.per_base)

    def as_dict(self) -> dict:
        return {**asdict(self), "excludes_zero": self.excludes_zero, "holds": self.holds}


def prompt_clusters(prompts) -> tuple[np.ndarray, np.ndarray]:
    """``(cluster [N], counts [P])``: each item's distinct-prompt index (0..P−1, in order of first appearance) and
    the number of items of each prompt."""
    _, first, cluster, counts = np.unique(np.asarray(prompts), return_index=True, return_inverse=True,
                                          return_counts=True)
    order = np.argsort(first)  # relabel in order of first appearance
    relabel = np.empty_like(order)
    relabel[order] = np.arange(len(order))
    return relabel[cluster.reshape(-1)], counts[order]


def hierarchical_bootstrap(differences: np.ndarray, prompts, resamples: int,
                           rng: np.random.Generator) -> np.ndarray:
    """``[resamples]`` means of ``differences`` ``[B, S, N]`` resampled base models, then seeds within each, then
    distinct prompts (``prompts`` ``[N]``: each item's prompt id) within each seed, all with replacement."""
    bases, seeds, items = differences.shape
    cluster, counts = prompt_clusters(prompts)
    if len(cluster) != items:
        raise ValueError(f"hierarchical_bootstrap: {len(cluster)} prompt ids for {items} items")
    sums = np.zeros((bases, seeds, len(counts)))  # [B, S, P]: each prompt's summed difference
    np.add.at(sums, (slice(None), slice(None), cluster), differences)
    base_draws = rng.integers(0, bases, size=(resamples, bases))
    seed_draws = rng.integers(0, seeds, size=(resamples, bases, seeds))
    prompt_draws = rng.integers(0, len(counts), size=(resamples, bases, seeds, len(counts)))
    drawn = sums[base_draws[:, :, None, None], seed_draws[:, :, :, None], prompt_draws]
    return drawn.sum(axis=(1, 2, 3)) / counts[prompt_draws].sum(axis=(1, 2, 3))


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


def difference_summary(differences: np.ndarray, prompts, resamples: int = 2000, seed: int = 0) -> PairedDifference:
    """:class:`PairedDifference` of an array of differences ``[B, S, N]`` (a row minus the baseline, or any linear
    combination of such, e.g. a slope across variants) with items' ``prompts`` ``[N]``."""
    differences = np.asarray(differences, dtype=np.float64)
    if differences.ndim != 3:
        raise ValueError(f"difference_summary needs a [base models, seeds, items] array, got {differences.shape}")
    means = hierarchical_bootstrap(differences, prompts, resamples, np.random.default_rng(seed))
    per_run = differences.mean(axis=2).reshape(-1)
    low, high = np.quantile(means, [0.025, 0.975])
    return PairedDifference(delta=float(differences.mean()), low=float(low), high=float(high),
                            se=float(means.std(ddof=1)), per_base=[float(x) for x in differences.mean(axis=(1, 2))],
                            sign_p=sign_test(per_run), wilcoxon_p=wilcoxon_test(per_run),
                            seeds_up=int((per_run > 0).sum()), seeds_down=int((per_run < 0).sum()))


def paired_difference(row: np.ndarray, baseline: np.ndarray, prompts, resamples: int = 2000,
                      seed: int = 0) -> PairedDifference:
    """The comparison of ``row`` against ``baseline``, both ``[B, S, N]`` (base model ``b``, seed ``s``, item ``i``
    paired), the items' ``prompts`` ``[N]``."""
    if row.shape != baseline.shape or row.ndim != 3:
        raise ValueError(f"paired_difference needs two [base models, seeds, items] arrays of one shape, got "
                         f"{row.shape} and {baseline.shape}")
    return difference_summary(np.asarray(row, dtype=np.float64) - np.asarray(baseline, dtype=np.float64), prompts,
                              resamples, seed)


def detectable_difference(standard_errors: list[float]) -> float:
    """The smallest difference a comparison of this run detects (median standard error × :data:`DETECTABLE_Z`)."""
    if not standard_errors:
        return math.nan
    return float(np.median(standard_errors)) * DETECTABLE_Z
