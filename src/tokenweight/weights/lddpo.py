"""``lddpo``: LD-DPO's length desensitization — weight 1 on the shared length of a pair, ``ld_alpha`` beyond it.

Paper: Liu et al. 2024, "Length Desensitization in Direct Preference Optimization", arXiv 2409.06411 (called LDDPO in
the OTPO paper). Upstream code followed: TRL's ``DPOTrainer`` with ``DPOConfig.ld_alpha`` (the paper publishes no
code of its own). Spec: ``specs/related.md`` §7.

With ``m = min(T_c, T_r)`` the completion lengths of a pair, completion token ``k`` (0-based, EOS included) of
either response weighs 1 if ``k < m`` and ``α`` otherwise, so only the longer response's tail is down-weighted
(pairs of equal length: plain DPO). TRL applies ``α`` to the summed log-probs of the policy *and* of the reference,
``(S_θ + α·T_θ) − (S_ref + α·T_ref)`` with ``S`` the shared part and ``T`` the tail; that is exactly this scheme's
weighted ratio ``Σ_k ω_k (ℓ_θ,k − ℓ_ref,k)`` (the sums are linear), so the loss equals TRL's
(``tests/test_lddpo.py``).

``ld_alpha``: TRL's name, in ``[0, 1]`` (1: plain DPO, 0: the tail is masked). TRL's default ``None`` switches the
weighting off; here the scheme is chosen explicitly, so ``ld_alpha`` defaults to 0.5, a library default: the paper
tunes α per model and no official value is encoded here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tokenweight.errors import UserError
from tokenweight.masks import position_ids_from_mask
from tokenweight.weights.base import TokenWeights, WeightingInputs, WeightingScheme, register_scheme


@dataclass
class LDDPOSettings:
    """LD-DPO's flag (TRL's name)."""

    ld_alpha: float = field(default=0.5, metadata={
        "help": "LD-DPO: weight of the completion tokens beyond the pair's shared length, in [0, 1] (1: plain DPO, "
                "0: the longer response's tail is masked). Library default 0.5 (the paper tunes it per model)."})

    def __post_init__(self):
        if not 0.0 <= self.ld_alpha <= 1.0:
            raise UserError(f"config key `ld_alpha` must be in [0, 1], got {self.ld_alpha}")


def shared_length_weights(loss_mask: torch.Tensor, alpha: float) -> torch.Tensor:
    """LD-DPO weights ``[2B, T]`` of a ``loss_mask`` ``[2B, T]`` (rows ``[0, B)`` chosen, ``[B, 2B)`` rejected):
    1 on each response's first ``min(T_c, T_r)`` completion tokens, ``alpha`` on the rest, 0 off the mask."""
    mask = loss_mask.bool()
    shared = torch.minimum(*mask.sum(dim=1).chunk(2)).repeat(2)
    position = position_ids_from_mask(mask)  # 0-based index within the completion on the mask
    weights = torch.where(position < shared[:, None], 1.0, alpha)
    return weights * mask


@register_scheme
class LDDPOScheme(WeightingScheme):
    name = "lddpo"
    settings_class = LDDPOSettings

    def compute(self, inputs: WeightingInputs) -> TokenWeights:
        """Weights ``[2B, L-1]``: :func:`shared_length_weights` of the batch's ``loss_mask``."""
        return TokenWeights(weights=shared_length_weights(inputs.loss_mask, self.settings.ld_alpha))
