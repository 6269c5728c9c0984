"""``uniform``: every completion token weighs 1 — plain DPO."""

from __future__ import annotations

from tokenweight.weights.base import TokenWeights, WeightingInputs, WeightingScheme, register_scheme


@register_scheme
class UniformScheme(WeightingScheme):
    name = "uniform"

    def compute(self, inputs: WeightingInputs) -> TokenWeights:
        return TokenWeights(weights=inputs.loss_mask.float())
