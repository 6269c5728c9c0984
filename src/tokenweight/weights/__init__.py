"""Weighting schemes: the interface, the registry and one module or folder per scheme (importing registers it)."""

from tokenweight.weights.base import (SCHEMES, LossContext, PrepareContext, SchemeContext, TokenWeights,
                                      WeightingInputs, WeightingScheme, batch_inputs, build_scheme, check_weights,
                                      dataset_rows, register_scheme, row_seeds, scheme_settings,
                                      weigh_batch)
from tokenweight.weights import (attention, column, d2po, lddpo, otpo, sampo, tdpo, tidpo,  # noqa: F401  (registration)
                                 tisdpo, uniform)

__all__ = ["SCHEMES", "LossContext", "PrepareContext", "SchemeContext", "TokenWeights", "WeightingInputs",
           "WeightingScheme", "batch_inputs", "build_scheme", "check_weights", "dataset_rows", "register_scheme",
           "row_seeds", "scheme_settings", "weigh_batch"]
