"""TIS-DPO's token scores and the transforms that turn them into token weights (specs/related.md §4, §11 decision 5).

Paper: Liu et al., "TIS-DPO: Token-level Importance Sampling for Direct Preference Optimization With Estimated
Weights", ICLR 2025, arXiv 2410.04350. Upstream code followed: https://github.com/exlaw/TIS-DPO —
``token_weight_estimation.py::calculate_probability_differences`` (the scores) and ``preference_datasets.py`` (the
transforms, ``get_dataset`` and ``tokenize_batch_element``: the sign, the EOS weight).

**Score.** The estimated token reward of completion token t is r̂_t = log π₊(y_t|s_t) − log π₋(y_t|s_t), π₊ the
positive (DPO-trained) and π₋ the negative (DPO on swapped pairs) contrastive model. Upstream stores
raw_t = round(log π₋ − log π₊, 2) (two decimals) and negates it for the chosen response, so the score transformed is

    score_t = round(r̂_t, 2)   on the chosen response,     score_t = round(−r̂_t, 2)   on the rejected response:

a token weighs more the more it separates the two models in the direction of its response.

**EOS** weighs 0: upstream transforms the response's own tokens and appends EOS with weight 0. Here every completion
token that is the tokenizer's EOS is left out of the transform and weighs 0 (a plain-text completion ends with it;
a chat template's other end-of-turn tokens are weighed like any token).

**Transforms** of one response's scores ``[T]`` (EOS left out) to weights ``[T]``, as upstream defines them:

- ``rank_based`` (the default: upstream's README trains TIS-DPO with ``transform.method=rank_based``): tokens sorted
  by score, ascending and *stable* (tied scores keep their order in the response), the i-th weighs
  ``w_min + i/(T−1) · (w_max − w_min)``; a one-token response weighs 1.0;
- ``threshold_and_scale``: clip to [s_min, s_max], map linearly onto [w_min, w_max];
- ``binary``: the top ``top_percent``% of the response's tokens by score weigh 1, the others 0: with
  ``k = int(T · top_percent / 100)``, a token weighs 1 iff at most ``k`` tokens score ≥ its score (upstream's
  ``num_to_value`` dict gives tied scores the value of their last place in the descending order).

Presets (upstream's ``config/transform/*.yaml``): ``default`` [−1.5, 1.5] → [0.7, 1.3], top_percent 100;
``aggressive`` [−2, 2] → [0.5, 1.5], top_percent 50. Upstream's own config default (``transform: default``, method
``binary``, top_percent 100) weighs every non-EOS token 1, i.e. plain DPO without EOS; its README's TIS-DPO command
picks ``rank_based``, which is this library's default. Upstream's ``origin``, ``threshold`` and ``random`` transforms
(negative or random weights) are not offered.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

TRANSFORMS = ("rank_based", "threshold_and_scale", "binary")
#: ``preset -> (s_min, s_max, w_min, w_max, top_percent)``: the score and weight ranges (``threshold_and_scale``;
#: ``rank_based`` uses the weight range) and ``binary``'s share.
PRESETS = {"default": (-1.5, 1.5, 0.7, 1.3, 100.0), "aggressive": (-2.0, 2.0, 0.5, 1.5, 50.0)}
#: Decimals upstream rounds each token score to (``token_weight_estimation.py``: ``round(float(weight), 2)``).
SCORE_DECIMALS = 2


@dataclass(frozen=True)
class Transform:
    """A resolved transform: its name, the score range ``[score_min, score_max]`` (``threshold_and_scale``), the
    weight range ``[weight_min, weight_max]`` (``threshold_and_scale``, ``rank_based``) and ``binary``'s
    ``top_percent``."""

    name: str = "rank_based"
    score_min: float = PRESETS["default"][0]
    score_max: float = PRESETS["default"][1]
    weight_min: float = PRESETS["default"][2]
    weight_max: float = PRESETS["default"][3]
    top_percent: float = PRESETS["default"][4]

    def describe(self) -> str:
        if self.name == "threshold_and_scale":
            return (f"threshold_and_scale [{self.score_min:g}, {self.score_max:g}] -> "
                    f"[{self.weight_min:g}, {self.weight_max:g}], EOS 0")
        if self.name == "binary":
            return f"binary (top {self.top_percent:g}% of a response's tokens: 1, the rest 0), EOS 0"
        return f"rank_based [{self.weight_min:g}, {self.weight_max:g}] (stable ranks), EOS 0"

    def __call__(self, scores: torch.Tensor) -> torch.Tensor:
        """Weights ``[T]`` (fp32) of one response's scores ``[T]`` (its EOS left out)."""
        scores = scores.double()
        span = self.weight_max - self.weight_min
        if self.name == "threshold_and_scale":
            clipped = scores.clamp(self.score_min, self.score_max)
            return (self.weight_min + (clipped - self.score_min) * span / (self.score_max - self.score_min)).float()
        if self.name == "binary":
            kept = int(scores.numel() * self.top_percent / 100)
            return (scores_at_least(scores) <= kept).float()
        if self.name == "rank_based":
            if scores.numel() == 1:
                return torch.ones(1)
            return (self.weight_min + stable_ranks(scores) / (scores.numel() - 1) * span).float()
        raise ValueError(f"unknown TIS-DPO transform {self.name!r}; known: {list(TRANSFORMS)}")


def stable_ranks(scores: torch.Tensor) -> torch.Tensor:
    """``[T]`` 0-based ascending ranks of ``scores`` ``[T]``, tied scores ranked in their order in the response."""
    ranks = torch.empty_like(scores)
    ranks[torch.argsort(scores, stable=True)] = torch.arange(scores.numel(), dtype=scores.dtype)
    return ranks


def scores_at_least(scores: torch.Tensor) -> torch.Tensor:
    """``[T]``: for each token, how many tokens of ``scores`` ``[T]`` score at least as much (itself included)."""
    ascending = torch.sort(scores).values
    return scores.numel() - torch.searchsorted(ascending, scores, right=False)


def response_weights(rewards: list[float], chosen: bool, transform: Transform,
                     is_eos: list[bool] | None = None) -> list[float]:
    """The weights of one response from its token rewards r̂ (one per completion token): the transform of the
    rounded ``r̂`` (chosen) or ``−r̂`` (rejected) over the tokens that are not EOS (``is_eos``, one flag per token;
    ``None``: none is), 0 on EOS."""
    is_eos = is_eos or [False] * len(rewards)
    scores = [round(r if chosen else -r, SCORE_DECIMALS) for r, eos in zip(rewards, is_eos) if not eos]
    weights = iter(transform(torch.tensor(scores, dtype=torch.float64)).tolist() if scores else [])
    return [0.0 if eos else next(weights) for eos in is_eos]
