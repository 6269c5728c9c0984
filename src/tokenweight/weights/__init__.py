"""Weighting schemes: the interface, the registry and one module per scheme (importing registers it)."""

from tokenweight.weights.base import (SCHEMES, LossContext, TokenWeights, WeightingInputs, WeightingScheme,
                                      build_scheme, check_weights, register_scheme)
from tokenweight.weights import attention, column, otpo, tidpo, uniform  # noqa: F401  (registration)

__all__ = ["SCHEMES", "LossContext", "TokenWeights", "WeightingInputs", "WeightingScheme", "build_scheme",
           "check_weights", "register_scheme"]
