"""``d2po``: D²PO's temporal decay — completion token ``t`` (counted from 1) weighs ``γ^t``, earlier tokens more.

Paper: "Earlier Tokens Contribute More: Learning Direct Preference Optimization From Temporal Decay Perspective",
arXiv 2502.14340 (``specs/related.md`` §8): ``L = −log σ(β [Σ_t γ^t ρ^w_t − Σ_t γ^t ρ^l_t])`` with ``ρ_t`` the
per-token log-ratio and ``γ ∈ (0, 1)``.

Upstream code followed (``specs/related.md`` §11, decision 5): github.com/LotuSrc/D2PO,
``src/llamafactory/train/trainer_utils.py::get_batch_logps``, which multiplies each per-token log-prob by
``gamma ** cumsum(loss_mask)`` on the policy and on the reference alike: the first completion token weighs ``γ^1``,
the t-th ``γ^t`` (EOS included, it is a completion token there as here). The defaults are upstream's
(``hparams/finetuning_args.py``): ``gamma`` 0.98, ``pref_beta`` 0.1. (A 0-based origin would scale every weight by
1/γ, i.e. rescale β; this library used it before following the upstream code.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tokenweight.errors import UserError
from tokenweight.weights.base import TokenWeights, WeightingInputs, WeightingScheme, register_scheme


@dataclass
class D2POSettings:
    """D²PO's flag."""

    d2po_gamma: float = field(default=0.98, metadata={
        "help": "D²PO: decay γ in (0, 1]; completion token t (counted from 1) weighs γ^t, as the authors' code. "
                "Default 0.98 (upstream's)."})

    def __post_init__(self):
        if not 0.0 < self.d2po_gamma <= 1.0:
            raise UserError(f"config key `d2po_gamma` must be in (0, 1], got {self.d2po_gamma}")


def temporal_decay_weights(loss_mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """``γ^t`` on each completion token of ``loss_mask`` ``[R, T]`` (``t``: the number of completion tokens up to and
    including it, so the first weighs ``γ``), 0 off the mask → ``[R, T]`` fp32."""
    mask = loss_mask.bool()
    count = mask.long().cumsum(dim=1).float()
    return torch.pow(torch.tensor(gamma, dtype=torch.float32, device=mask.device), count) * mask


@register_scheme
class D2POScheme(WeightingScheme):
    name = "d2po"
    settings_class = D2POSettings

    def compute(self, inputs: WeightingInputs) -> TokenWeights:
        """Weights ``[2B, L-1]``: :func:`temporal_decay_weights` of the batch's ``loss_mask``."""
        return TokenWeights(weights=temporal_decay_weights(inputs.loss_mask, self.settings.d2po_gamma))
