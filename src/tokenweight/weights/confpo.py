"""``confpo``: ConfPO, SimPO's reference-free loss on the tokens the current policy is least confident about.

Paper: Yoon et al., "ConfPO: Exploiting Policy Model Confidence for Critical Token Selection in Preference
Optimization" (ICML 2025, arXiv 2506.08712). Upstream code followed: https://github.com/hee-suk-yoon/ConfPO (its
fork of TRL's CPO trainer, ``cpo_loss_confpo``, run by ``trl-main/commands/run_confpo.sh``). Spec:
``shared/specs/related.md`` §6.

Token t of a response is selected iff p_t < (1/T) Σ_u p_u, with p_t = π_θ(y_t | x, y_<t) of the current policy in
the step's own forward (``needs_policy_logps``: the arithmetic mean of probabilities, over the completion tokens;
the selection is detached). The loss is SimPO's on the selected sets S (no reference, ``uses_reference = False``):

    L = −log σ( β · mean_{t∈S_w} log π_θ(y_w,t) − β · mean_{t∈S_l} log π_θ(y_l,t) − γ )

so the weights are 1/|S| on S and 0 elsewhere, and γ enters as the pair-loss offset γ/β. ``confpo_gamma`` is γ
itself, as upstream passes it (``--simpo_gamma``, TRL CPO's name). Defaults: the released Mistral-Base script's β 1.5
and γ 1.6 (``recipes/confpo_mistral_7b_base_ultrafeedback.yaml``).

A response whose S is empty (every token has the same probability: a one-token response, say) zeroes its pair's
loss, as upstream (``cpo_loss_confpo``: ``losses * ~loss_mask_for_zero_sample``): the scheme's pair weight
(``TokenWeights.pair_weights``) is 0 for that pair, which stays in the batch mean; the empty response weighs 0
everywhere (upstream's mean over an empty S is 0/1). The responses are counted in ``confpo/all_equal_rows``, the pairs
in ``confpo/zeroed_pairs``. (This library kept such a response whole, SimPO's weights, before following the upstream
code.) Where upstream compares ``log p_t < log mean_u p_u``, ties are decided here on the probabilities themselves: a
flat response selects nothing however its mean rounds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tokenweight.errors import UserError
from tokenweight.metrics import Count
from tokenweight.weights.base import LossContext, TokenWeights, WeightingInputs, WeightingScheme, register_scheme
from tokenweight.weights.simpo import margin_offsets, selected_token_weights

#: β of a ConfPO run that sets no ``beta`` (the released Mistral-Base script).
CONFPO_BETA = 1.5


@dataclass
class ConfPOSettings:
    """ConfPO's flags."""

    confpo_gamma: float = field(default=1.6, metadata={
        "help": "Target reward margin γ (upstream's --simpo_gamma; not divided by β). Default 1.6 with default β "
                "1.5 (the released Mistral-Base script)."})

    def __post_init__(self):
        if self.confpo_gamma < 0:
            raise UserError(f"config key `confpo_gamma` must be >= 0, got {self.confpo_gamma}")


def low_confidence_tokens(token_logps: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """ConfPO's selection ``[2B, T]`` bool from per-token log-probs ``[2B, T]`` and ``loss_mask`` ``[2B, T]`` (bool):
    the completion tokens whose probability is below their response's mean probability (none on a flat response)."""
    mask = loss_mask.bool()
    probs = token_logps.detach().float().exp() * mask
    mean = probs.sum(dim=1, keepdim=True) / mask.sum(dim=1, keepdim=True).clamp(min=1)
    # below the maximum too: a flat response selects nothing whichever way its mean rounds (others are unchanged)
    return (probs < mean) & (probs < probs.amax(dim=1, keepdim=True)) & mask


@register_scheme
class ConfPOScheme(WeightingScheme):
    name = "confpo"
    settings_class = ConfPOSettings
    needs_policy_logps = True
    uses_reference = False
    loss_types = ("sigmoid",)

    @classmethod
    def default_beta(cls, settings=None) -> float:
        return CONFPO_BETA

    def compute(self, inputs: WeightingInputs) -> TokenWeights:
        """``[2B, L-1]`` weights 1/|S| on each response's low-confidence tokens S (from ``inputs.policy_logps``);
        ``[B]`` pair weights 0 where a response's S is empty, else 1."""
        selected = low_confidence_tokens(inputs.policy_logps, inputs.loss_mask)
        weights = selected_token_weights(selected, inputs.loss_mask, "confpo")
        all_equal = inputs.loss_mask.bool().any(dim=1) & ~selected.any(dim=1)
        weights.metrics["confpo/all_equal_rows"] = Count(all_equal.sum())
        return weights

    def margin_offset(self, ctx: LossContext) -> tuple[torch.Tensor, dict[str, float]]:
        """γ/β = ``confpo_gamma / beta`` for every pair."""
        return margin_offsets(ctx, self.settings.confpo_gamma / self.context.beta), {}
