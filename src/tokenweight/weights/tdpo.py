"""``tdpo``: Token-level Direct Preference Optimization — uniform token weights plus TDPO's sequential KL.

Paper: Zeng et al., "Token-level Direct Preference Optimization", ICML 2024, arXiv 2404.11999. Upstream code:
https://github.com/Vance0124/Token-level-Direct-Preference-Optimization (``tdpo_loss``). Spec:
specs/related.md §3. With u = Σ_t ρ^w_t − Σ_t ρ^l_t (ρ = log π_θ − log π_ref, every completion token weighing 1) and
D(y) = Σ_t KL(π_ref(·|s_t) ‖ π_θ(·|s_t)) over the full vocabulary (:mod:`tokenweight.weights.kl`, chunked):

- TDPO1 (``tdpo_variant 1``): L = −log σ(β (u − (D(y_l) − D(y_w)))), gradient through both KLs;
- TDPO2 (``tdpo_variant 2``, the default): L = −log σ(β (u − α (D(y_l) − sg[D(y_w)]))), α = ``tdpo_alpha`` (0.5).

The KL enters as :meth:`TDPOScheme.margin_offset`, subtracted from Δ by the objective; the reference model and both
models' final hidden states are needed every step (no precomputed reference log-probs). Only the sigmoid and hinge
pair losses take the offset (``loss_type ipo`` length-normalises Δ, while D is a sequence sum: refused).
Logs ``tdpo/kl_chosen``, ``tdpo/kl_rejected`` (mean D per response) and ``tdpo/kl_term`` (mean offset).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tokenweight.errors import UserError
from tokenweight.weights.base import (LossContext, SchemeContext, TokenWeights, WeightingInputs, WeightingScheme,
                                      register_scheme)
from tokenweight.weights.kl import sequence_kl, tdpo1_offset, tdpo2_offset

#: TDPO2's α when ``tdpo_alpha`` is unset (the paper's and upstream's default).
DEFAULT_ALPHA = 0.5


@dataclass
class TDPOSettings:
    """TDPO's flags."""

    tdpo_variant: int = field(default=2, metadata={
        "help": "1: TDPO1, margin minus (D(y_l) - D(y_w)); 2: TDPO2, margin minus alpha * (D(y_l) - sg D(y_w))."})
    tdpo_alpha: float | None = field(default=None, metadata={
        "help": f"TDPO2's KL weight alpha (default {DEFAULT_ALPHA}); TDPO1 has none."})

    def __post_init__(self):
        if self.tdpo_variant not in (1, 2):
            raise UserError(f"config key `tdpo_variant` must be 1 or 2, got {self.tdpo_variant}")
        if self.tdpo_alpha is not None:
            if self.tdpo_variant == 1:
                raise UserError(f"config key `tdpo_alpha` ({self.tdpo_alpha}) is TDPO2's KL weight; TDPO1 "
                                "(`tdpo_variant 1`) has none: unset it or use `tdpo_variant 2`")
            if self.tdpo_alpha < 0:
                raise UserError(f"config key `tdpo_alpha` must be >= 0, got {self.tdpo_alpha}")


@register_scheme
class TDPOScheme(WeightingScheme):
    name = "tdpo"
    settings_class = TDPOSettings

    def __init__(self, settings: TDPOSettings | None = None, context: SchemeContext | None = None):
        super().__init__(settings, context)
        if self.context.loss_type == "ipo":
            raise UserError("weighting=tdpo with loss_type=ipo: IPO divides the margin by the completion lengths, "
                            "while TDPO's KL offset is a sum over the sequence, defined inside the sigmoid loss; "
                            "use loss_type sigmoid")

    @property
    def alpha(self) -> float:
        """TDPO2's α (``tdpo_alpha``, else :data:`DEFAULT_ALPHA`)."""
        return DEFAULT_ALPHA if self.settings.tdpo_alpha is None else self.settings.tdpo_alpha

    @property
    def needs_hidden_for_loss(self) -> bool:
        """Always: the KL needs both models' final hidden states."""
        return True

    def compute(self, inputs: WeightingInputs) -> TokenWeights:
        """Uniform weights ``[2B, L-1]``: 1 on the completion tokens."""
        return TokenWeights(weights=inputs.loss_mask.float())

    def margin_offset(self, ctx: LossContext) -> tuple[torch.Tensor, dict[str, float]]:
        """``(offset [B], metrics)``: TDPO1's ``D(y_l) − D(y_w)`` or TDPO2's ``α (D(y_l) − sg D(y_w))``."""
        kl = sequence_kl(ctx, "weighting=tdpo")
        offset = tdpo1_offset(kl) if self.settings.tdpo_variant == 1 else tdpo2_offset(kl, self.alpha)
        kl_chosen, kl_rejected = kl.detach().chunk(2)
        return offset, {"tdpo/kl_chosen": kl_chosen.mean(), "tdpo/kl_rejected": kl_rejected.mean(),
                        "tdpo/kl_term": offset.detach().mean()}
