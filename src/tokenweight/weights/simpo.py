"""``simpo``: SimPO, reference-free and length-normalised, with a target reward margin.

Paper: Meng, Xia & Chen, "SimPO: Simple Preference Optimization with a Reference-Free Reward" (NeurIPS 2024,
arXiv 2405.14734). Upstream code followed: https://github.com/princeton-nlp/SimPO (``scripts/simpo_trainer.py``,
``scripts/simpo_config.py``, ``training_configs/llama-3-8b-*-simpo.yaml``); the test oracle is TRL's CPO trainer
with ``loss_type="simpo"``, ``cpo_alpha=0`` (``trl.experimental.cpo``). Spec: ``shared/specs/related.md`` §2.

    L = −log σ( β/|y_w| Σ_t log π_θ(y_w,t) − β/|y_l| Σ_t log π_θ(y_l,t) − γ ),   γ = β · simpo_gamma_beta_ratio

As a scheme: weights 1/|y| on every completion token of each response, on the policy's own log-probs (no reference:
``uses_reference = False``); the margin enters as the pair-loss offset γ/β = ``simpo_gamma_beta_ratio``, so
``sigmoid`` is the equation above (with ``label_smoothing`` ε: −(1−ε) log σ(z) − ε log σ(−z), as SimPO and TRL's
CPO) and ``hinge`` is SimPO's max(0, 1 − β(Δ − γ/β)).

Names: SimPO's ``gamma_beta_ratio`` is ``simpo_gamma_beta_ratio`` here; TRL CPO's ``simpo_gamma`` is the margin γ
itself, i.e. ``beta × simpo_gamma_beta_ratio`` (TRL's defaults β 0.1, ``simpo_gamma`` 0.5 are γ/β = 5). Defaults:
β 2.0 and γ/β 0.5, SimPO's released Llama3-Base setting (its code defaults to γ/β 0.25; Llama3-Instruct uses β 2.5,
γ/β 0.55: ``recipes/simpo_llama3_8b_*``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tokenweight.errors import UserError
from tokenweight.metrics import Count
from tokenweight.weights.base import LossContext, TokenWeights, WeightingInputs, WeightingScheme, register_scheme
from tokenweight.weights.tooling import PaperClaim, SchemeTooling

#: β of a SimPO run that sets no ``beta`` (SimPO's released Llama3-Base setting and its code default).
SIMPO_BETA = 2.0


@dataclass
class SimPOSettings:
    """SimPO's flags."""

    simpo_gamma_beta_ratio: float = field(default=0.5, metadata={
        "help": "SimPO's gamma_beta_ratio γ/β: the target reward margin γ = beta × this (TRL CPO's simpo_gamma is "
                "γ itself). Default 0.5 (SimPO's Llama3-Base setting; default β 2.0)."})

    def __post_init__(self):
        if self.simpo_gamma_beta_ratio < 0:
            raise UserError(f"config key `simpo_gamma_beta_ratio` must be >= 0, got {self.simpo_gamma_beta_ratio}")


def length_normalised_weights(selected: torch.Tensor) -> torch.Tensor:
    """``[2B, T]`` weights 1/|S| on each row's selected tokens (``selected`` ``[2B, T]`` bool), 0 elsewhere; a row
    with no selected token gets 0 (SimPO selects every token; ConfPO zeroes such a pair's loss)."""
    selected = selected.float()
    return selected / selected.sum(dim=1, keepdim=True).clamp(min=1)


def selected_token_weights(selected: torch.Tensor, loss_mask: torch.Tensor, prefix: str) -> TokenWeights:
    """Weights of a scheme that keeps only the ``selected`` tokens ``[2B, T]`` (bool) of each response (ConfPO,
    SePO): 1/|S| on each, ``[B]`` pair weights 0 where either response of the pair selected none of its completion
    tokens (``loss_mask`` ``[2B, T]``), as both authors' code zeroes such a pair's loss, else 1. Logs
    ``<prefix>/selected_chosen`` and ``<prefix>/selected_rejected`` (mean selected share) and
    ``<prefix>/zeroed_pairs``."""
    empty = loss_mask.bool().any(dim=1) & ~selected.any(dim=1)
    chosen_empty, rejected_empty = empty.chunk(2)
    zeroed = chosen_empty | rejected_empty
    chosen_share, rejected_share = (selected.sum(dim=1) / loss_mask.sum(dim=1).clamp(min=1)).chunk(2)
    return TokenWeights(weights=length_normalised_weights(selected), pair_weights=(~zeroed).float(), metrics={
        f"{prefix}/selected_chosen": chosen_share.mean(), f"{prefix}/selected_rejected": rejected_share.mean(),
        f"{prefix}/zeroed_pairs": Count(zeroed.sum())})


def margin_offsets(ctx: LossContext, gamma_over_beta: float) -> torch.Tensor:
    """The ``[B]`` pair-loss offset γ/β of a SimPO-style target margin γ (inside the loss β·(Δ − γ/β) = βΔ − γ)."""
    return ctx.policy_logps.new_full((ctx.policy_logps.shape[0] // 2,), gamma_over_beta)


@register_scheme
class SimPOScheme(WeightingScheme):
    name = "simpo"
    tooling = SchemeTooling(claims=(PaperClaim(
        "SimPO", "length normalisation: no longer answers than DPO when length is biased", "gen_len", -1, "verbosity"),))
    settings_class = SimPOSettings
    uses_reference = False
    loss_types = ("sigmoid", "hinge")

    @classmethod
    def default_beta(cls, settings=None) -> float:
        return SIMPO_BETA

    def compute(self, inputs: WeightingInputs) -> TokenWeights:
        """``[2B, L-1]`` weights 1/|y| on every completion token of each response."""
        return TokenWeights(weights=length_normalised_weights(inputs.loss_mask))

    def margin_offset(self, ctx: LossContext) -> tuple[torch.Tensor, dict[str, float]]:
        """γ/β = ``simpo_gamma_beta_ratio`` for every pair."""
        return margin_offsets(ctx, self.settings.simpo_gamma_beta_ratio), {}
