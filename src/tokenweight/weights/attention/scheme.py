"""``attention``: AttentionPO / TwDPO weights, computed once by the frozen judge and cached (specs/attentionpo.md).

The weights reach the batch exactly like dataset-supplied ones:
:func:`tokenweight.weights.attention.ensure_attention_cache` returns per-row ``chosen_weights`` /
``rejected_weights`` (one float per completion token), the collator lays them out as ``token_weights`` ``[2B, L-1]``
(shifted), and this scheme masks them like ``column`` does. Its flags are :class:`AttentionSettings`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tokenweight.errors import UserError
from tokenweight.weights.base import register_scheme
from tokenweight.weights.column import ColumnScheme


@dataclass
class AttentionSettings:
    """AttentionPO's flags: where the judge's weights are cached and how the judge runs."""

    attention_weights: str | None = field(default=None, metadata={
        "help": "Folder of precomputed attention weights (computed there first when missing)."})
    attention_layers: list[int] | None = field(default=None, metadata={
        "help": "Judge layers whose attention rows are averaged (default: the last)."})
    attention_template: str | None = field(default=None, metadata={"help": "Judge template file."})
    attention_eos_weight: float = field(default=0.0, metadata={
        "help": "Weight of trailing end-of-turn/EOS completion tokens."})
    attention_max_length: int | None = field(default=None, metadata={
        "help": "Judge input cap in tokens (default: the model's context)."})
    attention_batch_size: int = field(default=4, metadata={"help": "Judge passes per batch."})

    def __post_init__(self):
        if self.attention_eos_weight < 0:
            raise UserError(f"config key `attention_eos_weight` must be >= 0, got {self.attention_eos_weight}")
        for key in ("attention_max_length", "attention_batch_size"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise UserError(f"config key `{key}` must be at least 1, got {value}")


@register_scheme
class AttentionScheme(ColumnScheme):
    name = "attention"
    needs_hidden_states = False
    settings_class = AttentionSettings
