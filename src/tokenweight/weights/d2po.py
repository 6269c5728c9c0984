"""``d2po``: D²PO's temporal decay — completion token ``t`` weighs ``γ^t``, so earlier tokens weigh more.

Paper: "Earlier Tokens Contribute More: Learning Direct Preference Optimization From Temporal Decay Perspective",
arXiv 2502.14340; followed from its summary (https://www.sciencestack.ai/paper/2502.14340; ``specs/related.md`` §8):
``L = −log σ(β [Σ_t γ^t ρ^w_t − Σ_t γ^t ρ^l_t])`` with ``ρ_t`` the per-token log-ratio and ``γ ∈ (0, 1)``. The
upstream code was not available to this implementation.

Convention: ``t`` is the 0-based index of the token within its completion (the first completion token weighs
``γ^0 = 1``; EOS included); the summary writes ``γ^t`` without fixing the origin, and a 1-based origin would only
scale every weight by ``γ``, i.e. rescale β. ``d2po_gamma`` defaults to 0.98, a library default (no official value is
encoded here).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tokenweight.errors import UserError
from tokenweight.masks import position_ids_from_mask
from tokenweight.weights.base import TokenWeights, WeightingInputs, WeightingScheme, register_scheme


@dataclass
class D2POSettings:
    """D²PO's flag."""

    d2po_gamma: float = field(default=0.98, metadata={
        "help": "D²PO: decay γ in (0, 1]; completion token t (0-based) weighs γ^t. Library default 0.98."})

    def __post_init__(self):
        if not 0.0 < self.d2po_gamma <= 1.0:
            raise UserError(f"config key `d2po_gamma` must be in (0, 1], got {self.d2po_gamma}")


def temporal_decay_weights(loss_mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """``γ^t`` on each completion token of ``loss_mask`` ``[R, T]`` (``t``: 0-based index within the row's
    completion), 0 off the mask → ``[R, T]`` fp32."""
    mask = loss_mask.bool()
    position = position_ids_from_mask(mask).float()
    return torch.pow(torch.tensor(gamma, dtype=torch.float32, device=mask.device), position) * mask


@register_scheme
class D2POScheme(WeightingScheme):
    name = "d2po"
    settings_class = D2POSettings

    def compute(self, inputs: WeightingInputs) -> TokenWeights:
        """Weights ``[2B, L-1]``: :func:`temporal_decay_weights` of the batch's ``loss_mask``."""
        return TokenWeights(weights=temporal_decay_weights(inputs.loss_mask, self.settings.d2po_gamma))
