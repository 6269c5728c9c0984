"""``attention``: AttentionPO / TwDPO weights, computed once by the frozen judge and cached (specs/attentionpo.md).

The weights reach the batch exactly like dataset-supplied ones:
:func:`tokenweight.weights.attention.ensure_attention_cache` returns per-row ``chosen_weights`` /
``rejected_weights`` (one float per completion token), the collator lays them out as ``token_weights`` ``[2B, L-1]``
(shifted), and this scheme masks them like ``column`` does.
"""

from __future__ import annotations

from tokenweight.weights.base import register_scheme
from tokenweight.weights.column import ColumnScheme


@register_scheme
class AttentionScheme(ColumnScheme):
    name = "attention"
    needs_hidden_states = False
