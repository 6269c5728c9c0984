"""TI-DPO building blocks (spec tidpo.md): attribution weights, TDPO2 KL, anchors, triplet loss, presets."""

from tokenweight.tidpo.anchor import AnchorBatch, anchor_token_logps, sample_anchors
from tokenweight.tidpo.attribution import gaussian_prior, input_attribution, tidpo_weights
from tokenweight.tidpo.kl import tdpo_kl
from tokenweight.tidpo.presets import PRESETS, TIDPOSettings, preset_beta, resolve_tidpo_settings
from tokenweight.tidpo.triplet import left_align, triplet_loss

__all__ = ["AnchorBatch", "PRESETS", "TIDPOSettings", "anchor_token_logps", "gaussian_prior", "input_attribution",
           "left_align", "preset_beta", "resolve_tidpo_settings", "sample_anchors", "tdpo_kl", "tidpo_weights",
           "triplet_loss"]
