"""Weighting schemes: the interface, the registry and one module or folder per scheme (importing registers it)."""

from tokenweight.weights.base import (SCHEMES, LossContext, SchemeContext, TokenWeights, WeightingInputs,
                                      WeightingScheme, build_scheme, check_weights, register_scheme, scheme_settings)
from tokenweight.weights import attention, column, otpo, tidpo, uniform  # noqa: F401  (registration)

__all__ = ["SCHEMES", "LossContext", "SchemeContext", "TokenWeights", "WeightingInputs", "WeightingScheme",
           "build_scheme", "check_weights", "register_scheme", "scheme_settings"]
