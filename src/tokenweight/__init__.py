"""tokenweight: token-weighted preference optimization (DPO, OTPO, TI-DPO, AttentionPO) on the Hugging Face stack.

The names below are imported on first use (``import tokenweight`` stays light, so ``tokenweight --help`` does not
load torch).
"""

import importlib

#: Public name -> the module that defines it.
_EXPORTS = {
    "attention_weights": "tokenweight.weights.attention",
    "TokenweightConfig": "tokenweight.config",
    "PreferenceCollator": "tokenweight.data",
    "load_preference_split": "tokenweight.data",
    "tokenize_preference_dataset": "tokenweight.data",
    "pair_loss": "tokenweight.objectives",
    "otpo_weights": "tokenweight.weights.otpo",
    "tidpo_weights": "tokenweight.weights.tidpo",
    "TokenweightTrainer": "tokenweight.trainer",
    "SCHEMES": "tokenweight.weights",
    "WeightingScheme": "tokenweight.weights",
    "register_scheme": "tokenweight.weights",
}

__version__ = "0.1.0"
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tokenweight' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
