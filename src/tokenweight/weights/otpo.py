"""``otpo``: optimal-transport token weights from the policy's final hidden states (Li et al. 2025).

Pair ``b`` is batch rows ``b`` (chosen) and ``B + b`` (rejected). Each row's completion positions (``loss_mask``,
shifted alignment, so each token is represented by the state that predicts it) are packed to the left, the pairs
are weighted together by :func:`tokenweight.otpo.otpo_weights_with_stats`, and the weights are scattered back.
Config keys: ``otpo_reg`` (ε1, default 1.0) and ``otpo_reg_m`` (ε2, default 0.2, or a ``[chosen, rejected]`` pair).
"""

from __future__ import annotations

import torch

from tokenweight.otpo import otpo_weights_with_stats
from tokenweight.weights.base import TokenWeights, WeightingInputs, WeightingScheme, register_scheme


@register_scheme
class OTPOScheme(WeightingScheme):
    name = "otpo"
    needs_hidden_states = True

    def compute(self, inputs: WeightingInputs) -> TokenWeights:
        if inputs.hidden is None:
            raise ValueError("weighting='otpo' needs the policy's final hidden states (WeightingInputs.hidden)")
        reg = 1.0 if self.args is None else self.args.otpo_reg
        reg_m = 0.2 if self.args is None else self.args.otpo_reg_m
        loss_mask = inputs.loss_mask.bool()
        pairs = loss_mask.shape[0] // 2
        chosen_hidden, chosen_mask, chosen_order = pack_left(inputs.hidden[:pairs], loss_mask[:pairs])
        rejected_hidden, rejected_mask, rejected_order = pack_left(inputs.hidden[pairs:], loss_mask[pairs:])
        chosen_weights, rejected_weights, stats = otpo_weights_with_stats(
            chosen_hidden, rejected_hidden, chosen_mask, rejected_mask, reg=reg, reg_m=reg_m)
        weights = torch.zeros(loss_mask.shape, dtype=chosen_weights.dtype, device=loss_mask.device)
        weights[:pairs].scatter_(1, chosen_order, chosen_weights)
        weights[pairs:].scatter_(1, rejected_order, rejected_weights)
        mass_scale, iterations, unconverged = torch.stack([
            stats.mass_scale.double().mean(), stats.iterations.double().mean(), (~stats.converged).sum().double(),
        ]).tolist()
        metrics = {"otpo/mass_scale": mass_scale, "otpo/iterations": iterations, "otpo/unconverged_pairs": unconverged}
        return TokenWeights(weights=weights, metrics=metrics)


def pack_left(hidden: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gather each row's masked positions to the left, in order.

    Args:
        hidden: ``[R, T, d]`` states; mask: ``[R, T]`` bool.

    Returns:
        ``(packed [R, N, d], packed_mask [R, N], order [R, N])`` with ``N`` the largest row count;
        ``order[r, k]`` is the position in ``[0, T)`` of packed entry ``k`` (distinct within a row, so weights
        can be scattered back with ``scatter_(1, order, packed_weights)`` when they are 0 off ``packed_mask``).
    """
    counts = mask.sum(dim=1)
    width = max(int(counts.max()), 1)
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :width]
    packed = hidden[torch.arange(hidden.shape[0], device=hidden.device)[:, None], order]
    packed_mask = torch.arange(width, device=mask.device)[None, :] < counts[:, None]
    return packed, packed_mask, order
