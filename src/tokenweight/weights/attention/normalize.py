"""From judge attention rows to per-token training weights (spec §3 eqs. 7–9 and 3, §8.3, §8.5, §8.6).

For each response with ``n`` judged answer tokens:

    ŵ^o = ā^o[span] / Σ ā^o[span]              per order o ∈ {cr, rc}           (7)
    w̄   = (ŵ^cr + ŵ^rc) / 2                                                    (8)
    w̃_0 = 1/n,  w̃_t = w̄_t (1 − 1/n) / Σ_{u≥1} w̄_u     when n ≥ 5 (sink fix)   (9)
    w   = n · w̃                                        mean 1                   (3)

The completion's weight list is then ``w`` + 1.0 for every answer token beyond the judge cap + ``eos_weight`` for
each trailing end-of-turn/EOS token, one float per completion token.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from tokenweight.weights.attention.judge import JudgePair

SINK_FIX_MIN_TOKENS = 5


@dataclass
class WeightStats:
    """Counts to log after a judge run (nothing here is silently fixed).

    Attributes:
        pairs: pairs weighted.
        zero_attention_sums: normalisations (one per order and response, plus sink fixes) whose attention mass was
            0, replaced by a uniform distribution.
        truncated_pairs: pairs whose judge input was cut to the judge length cap.
        unjudged_tokens: answer tokens beyond the cap, given weight 1.
    """

    pairs: int = 0
    zero_attention_sums: int = 0
    truncated_pairs: int = 0
    unjudged_tokens: int = 0

    def add(self, other: "WeightStats") -> None:
        for key, value in asdict(other).items():
            setattr(self, key, getattr(self, key) + value)

    def summary(self) -> str:
        return (f"attention weights: {self.pairs} pairs, {self.truncated_pairs} cut to the judge length cap "
                f"({self.unjudged_tokens} unjudged answer tokens weighted 1), {self.zero_attention_sums} zero "
                "attention sums replaced by uniform")


def _unit_sum(values: torch.Tensor, stats: WeightStats) -> torch.Tensor:
    """``values / values.sum()``; a zero sum gives the uniform vector and is counted."""
    total = values.sum()
    if not total > 0:
        stats.zero_attention_sums += 1
        return torch.full_like(values, 1.0 / values.numel())
    return values / total


def sink_fix(weights: torch.Tensor, stats: WeightStats) -> torch.Tensor:
    """Eq. (9) on a sum-1 vector ``[n]``: first token 1/n, the rest rescaled to 1 − 1/n (identity for n < 5)."""
    n = weights.numel()
    if n < SINK_FIX_MIN_TOKENS:
        return weights
    rest = _unit_sum(weights[1:], stats) * (1.0 - 1.0 / n)
    return torch.cat([weights.new_full((1,), 1.0 / n), rest])


def response_weights(order_attention: tuple[torch.Tensor, torch.Tensor], answer_length: int, trailing: int,
                     eos_weight: float, stats: WeightStats) -> list[float]:
    """One completion's weights from its judged-span attention in both orders.

    Args:
        order_attention: ``([n], [n])`` attention of the last judge token to the ``n`` judged answer tokens, in
            order cr and order rc.
        answer_length: answer tokens (``≥ n``; the ``answer_length − n`` beyond the cap get 1.0).
        trailing: trailing end-of-turn/EOS tokens, each weighted ``eos_weight``.
    Returns:
        ``answer_length + trailing`` floats; the judged ones have mean 1.
    """
    first, second = (a.double() for a in order_attention)
    if first.shape != second.shape:
        raise ValueError(f"judged spans differ between orders: {first.numel()} vs {second.numel()} tokens")
    averaged = 0.5 * (_unit_sum(first, stats) + _unit_sum(second, stats))
    judged = sink_fix(averaged, stats) * first.numel()
    unjudged = answer_length - first.numel()
    stats.unjudged_tokens += unjudged
    return judged.tolist() + [1.0] * unjudged + [float(eos_weight)] * trailing


def pair_weights(pair: JudgePair, rows: tuple[torch.Tensor, torch.Tensor], eos_weight: float,
                 stats: WeightStats) -> tuple[list[float], list[float]]:
    """``(chosen_weights, rejected_weights)`` of one pair from its judge rows ``([T_cr], [T_rc])``."""
    stats.pairs += 1
    stats.truncated_pairs += pair.judged_lengths != pair.answer_lengths
    result = []
    for k in (0, 1):  # chosen, rejected
        order_attention = tuple(rows[o][slice(*pair.spans[o][k])] for o in (0, 1))
        result.append(response_weights(order_attention, pair.answer_lengths[k], pair.trailing[k], eos_weight,
                                       stats))
    return result[0], result[1]
