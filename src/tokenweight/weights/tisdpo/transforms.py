"""TIS-DPO's token scores and the transforms that turn them into token weights (specs/related.md §4).

Paper: Liu et al., "TIS-DPO: Token-level Importance Sampling for Direct Preference Optimization With Estimated
Weights", ICLR 2025, arXiv 2410.04350; upstream code https://github.com/exlaw/TIS-DPO.

**Score.** The estimated token reward of completion token t is r̂_t = log π₊(y_t|s_t) − log π₋(y_t|s_t), π₊ the
positive (DPO-trained) and π₋ the negative (reverse-DPO-trained, i.e. DPO on swapped pairs) contrastive model. The
spec's upstream convention is raw_t = log π₋ − log π₊ (= −r̂_t), negated for chosen; so the score transformed is

    score_t = r̂_t   on the chosen response,     score_t = −r̂_t   on the rejected response,

and a token weighs more the more it separates the two models in the direction of its response (a chosen token the
positive model prefers, a rejected token the negative model prefers): the paper's w = k·exp(μ r̂), μ > 0 for chosen,
μ < 0 for rejected, made monotone-linear and bounded.

**Transforms** of one response's scores ``[T]`` to weights ``[T]``; the spec gives only the first one's bounds, the
exact formulas of all three are this library's reading (not checked against the upstream code):

- ``threshold_and_scale``: clip to [s_min, s_max], map linearly onto [w_min, w_max]:
  ``w = w_min + (clip(s) − s_min)/(s_max − s_min) · (w_max − w_min)``; preset ``default`` [−1.5, 1.5] → [0.7, 1.3]
  and ``aggressive`` [−2, 2] → [0.5, 1.5] (the spec's values);
- ``binary``: ``w_max`` where score > threshold (default 0), else ``w_min`` (spec silent: the same weight range as
  the preset, the threshold a flag);
- ``rank_based``: the response's tokens ranked by score (ascending, ties share their mean rank), the rank r in
  [0, T−1] mapped linearly onto [w_min, w_max]; a one-token response gets the midpoint (spec silent).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

TRANSFORMS = ("threshold_and_scale", "binary", "rank_based")
#: ``preset -> (s_min, s_max, w_min, w_max)`` of ``threshold_and_scale`` (and the weight range of the others).
PRESETS = {"default": (-1.5, 1.5, 0.7, 1.3), "aggressive": (-2.0, 2.0, 0.5, 1.5)}


@dataclass(frozen=True)
class Transform:
    """A resolved transform: its name, the score range ``[score_min, score_max]`` (``threshold_and_scale``), the
    weight range ``[weight_min, weight_max]`` and ``binary``'s threshold."""

    name: str = "threshold_and_scale"
    score_min: float = PRESETS["default"][0]
    score_max: float = PRESETS["default"][1]
    weight_min: float = PRESETS["default"][2]
    weight_max: float = PRESETS["default"][3]
    threshold: float = 0.0

    def describe(self) -> str:
        if self.name == "threshold_and_scale":
            return (f"threshold_and_scale [{self.score_min:g}, {self.score_max:g}] -> "
                    f"[{self.weight_min:g}, {self.weight_max:g}]")
        if self.name == "binary":
            return f"binary (score > {self.threshold:g}: {self.weight_max:g}, else {self.weight_min:g})"
        return f"rank_based [{self.weight_min:g}, {self.weight_max:g}]"

    def __call__(self, scores: torch.Tensor) -> torch.Tensor:
        """Weights ``[T]`` (fp32) of one response's scores ``[T]``."""
        scores = scores.float()
        span = self.weight_max - self.weight_min
        if self.name == "threshold_and_scale":
            clipped = scores.clamp(self.score_min, self.score_max)
            return self.weight_min + (clipped - self.score_min) / (self.score_max - self.score_min) * span
        if self.name == "binary":
            return torch.where(scores > self.threshold, self.weight_max, self.weight_min).float()
        if self.name == "rank_based":
            if scores.numel() == 1:
                return torch.full_like(scores, self.weight_min + span / 2)
            return self.weight_min + mean_ranks(scores) * span / (scores.numel() - 1)
        raise ValueError(f"unknown TIS-DPO transform {self.name!r}; known: {list(TRANSFORMS)}")


def mean_ranks(scores: torch.Tensor) -> torch.Tensor:
    """``[T]`` 0-based ascending ranks of ``scores`` ``[T]``, tied values sharing the mean of their ranks."""
    order = torch.argsort(scores, stable=True)
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(scores.numel(), dtype=scores.dtype)
    values, groups = torch.unique(scores, return_inverse=True)
    mean_of_group = torch.zeros_like(values).index_add(0, groups, ranks) / torch.bincount(groups).to(scores.dtype)
    return mean_of_group[groups]


def response_weights(rewards: list[float], chosen: bool, transform: Transform) -> list[float]:
    """The weights of one response from its token rewards r̂ (one per completion token): the transform of ``r̂``
    (chosen) or ``−r̂`` (rejected)."""
    rewards_tensor = torch.tensor(rewards, dtype=torch.float32)
    return transform(rewards_tensor if chosen else -rewards_tensor).tolist()
