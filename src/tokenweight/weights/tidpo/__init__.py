"""``tidpo``: token-importance guided DPO (spec tidpo.md) — every piece of the scheme lives in this package.

``scheme`` (the registered :class:`TIDPOScheme`), ``presets`` (the flags :class:`TIDPOSettings`, the paper /
upstream presets, the default β), ``attribution`` (gradient-attribution weights and the Gaussian prior), ``anchor``
(seeded anchor sampling and scoring), ``triplet`` (the triplet loss), ``common`` (eval mode). The TDPO2 KL is
shared with the ``tdpo`` scheme: :mod:`tokenweight.weights.kl`.
"""

from tokenweight.weights.tidpo.anchor import AnchorBatch, anchor_seeds, anchor_token_logps, sample_anchors
from tokenweight.weights.tidpo.attribution import gaussian_prior, input_attribution, tidpo_weights
from tokenweight.weights.tidpo.presets import (PRESETS, TIDPOParameters, TIDPOSettings, preset_beta,
                                              resolve_tidpo_settings)
from tokenweight.weights.tidpo.scheme import TIDPOScheme
from tokenweight.weights.tidpo.triplet import left_align, triplet_loss

__all__ = ["AnchorBatch", "PRESETS", "TIDPOParameters", "TIDPOScheme", "TIDPOSettings", "anchor_seeds",
           "anchor_token_logps", "gaussian_prior", "input_attribution", "left_align", "preset_beta",
           "resolve_tidpo_settings", "sample_anchors", "tidpo_weights", "triplet_loss"]
