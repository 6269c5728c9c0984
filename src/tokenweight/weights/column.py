"""``column``: per-token weights supplied by the dataset (TIS-DPO style, or any external estimate).

The rows carry ``chosen_weights`` / ``rejected_weights``: one float per completion token, EOS included
(validated in :func:`tokenweight.data.tokenize_preference_dataset`). The collator lays them out as
``token_weights`` ``[2B, L-1]``, already in the log-prob (shifted) alignment.
"""

from __future__ import annotations

from tokenweight.weights.base import TokenWeights, WeightingInputs, WeightingScheme, register_scheme
from tokenweight.weights.tooling import SchemeTooling


@register_scheme
class ColumnScheme(WeightingScheme):
    name = "column"
    tooling = SchemeTooling(needs_weight_columns=True)

    def compute(self, inputs: WeightingInputs) -> TokenWeights:
        if "token_weights" not in inputs.batch:
            raise ValueError(f"weighting={self.name!r} needs the dataset columns 'chosen_weights' and "
                             "'rejected_weights' (one float per completion token)")
        token_weights = inputs.batch["token_weights"].to(inputs.loss_mask.device).float()
        return TokenWeights(weights=token_weights * inputs.loss_mask)
