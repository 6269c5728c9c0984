"""``otpo``: optimal-transport token weights (Li et al. 2025), everything in one folder.

``cost.py`` (distances between chosen and rejected final hidden states), ``sinkhorn.py`` (batched unbalanced
Sinkhorn, POT's stabilized solver), ``plan.py`` (:func:`otpo_weights`: weights, and with ``log=True`` the plan and
statistics), ``scheme.py`` (the registered ``otpo`` :class:`~tokenweight.weights.base.WeightingScheme` and its
settings, :class:`OTPOSettings`).
"""

from tokenweight.weights.otpo.cost import otpo_cost
from tokenweight.weights.otpo.plan import otpo_weights
from tokenweight.weights.otpo.scheme import OTPOScheme, OTPOSettings
from tokenweight.weights.otpo.sinkhorn import SinkhornResult, unbalanced_sinkhorn

__all__ = ["OTPOScheme", "OTPOSettings", "SinkhornResult", "otpo_cost", "otpo_weights", "unbalanced_sinkhorn"]
