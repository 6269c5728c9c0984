"""Weighting schemes: the interface, the registry and one module or folder per scheme (importing registers it)."""

from tokenweight.weights.base import (SCHEMES, LossContext, PrepareContext, SchemeContext, TokenWeights,
                                      WeightingInputs, WeightingScheme, batch_inputs, build_scheme, check_weights,
                                      register_scheme, scheme_settings, weigh_batch)
from tokenweight.weights import attention, column, confpo, otpo, simpo, tidpo, uniform  # noqa: F401  (registration)

__all__ = ["SCHEMES", "LossContext", "PrepareContext", "SchemeContext", "TokenWeights", "WeightingInputs",
           "WeightingScheme", "batch_inputs", "build_scheme", "check_weights", "register_scheme", "scheme_settings",
           "weigh_batch"]
