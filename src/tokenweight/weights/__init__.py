"""Weighting schemes: the interface, the registry and one module or folder per scheme.

Every module and folder of this package is imported here, found on disk (:mod:`tokenweight.discovery`, sorted by
name): importing a scheme's module registers it, so a new scheme's folder is all it takes (docs/ADDING_A_SCHEME.md).
"""

import importlib

from tokenweight.discovery import weights_modules
from tokenweight.weights.base import (SCHEMES, LossContext, PrepareContext, SchemeContext, TokenWeights,
                                      WeightingInputs, WeightingScheme, batch_inputs, build_scheme, check_weights,
                                      dataset_rows, register_scheme, row_seeds, scheme_settings,
                                      weigh_batch)

for _module in weights_modules():
    importlib.import_module(f"{__name__}.{_module}")

__all__ = ["SCHEMES", "LossContext", "PrepareContext", "SchemeContext", "TokenWeights", "WeightingInputs",
           "WeightingScheme", "batch_inputs", "build_scheme", "check_weights", "dataset_rows", "register_scheme",
           "row_seeds", "scheme_settings", "weigh_batch"]
