"""Weighting schemes: the interface, the registry and one module or folder per scheme (importing registers it)."""

from tokenweight.weights.base import (SCHEMES, LossContext, PrepareContext, SchemeContext, TokenWeights,
                                      WeightingInputs, WeightingScheme, batch_inputs, build_scheme, check_weights,
                                      dataset_rows, register_scheme, row_seeds, scheme_settings,
                                      weigh_batch)
from tokenweight.weights import (attention, cdpo, column, confpo, d2po, lddpo, otpo, sampo, sepo, simpo,  # noqa: F401
                                 tdpo, tgdpo, tidpo, tisdpo, uniform)  # (registration)

__all__ = ["SCHEMES", "LossContext", "PrepareContext", "SchemeContext", "TokenWeights", "WeightingInputs",
           "WeightingScheme", "batch_inputs", "build_scheme", "check_weights", "dataset_rows", "register_scheme",
           "row_seeds", "scheme_settings", "weigh_batch"]
