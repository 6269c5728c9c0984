"""Pair losses on weighted log-ratio sums, and the metrics logged under TRL's names.

:func:`pair_loss` takes the chosen and the rejected responses of ``B`` pairs as two :class:`Responses` (per-token
log-probs in the shifted alignment, see :mod:`tokenweight.weights.base`, weights, masks: ``[B, T]`` each;
:func:`pair_sides` splits a collated batch's ``[2B, T]`` tensors) and returns the unreduced ``[B]`` pair losses:

    Δ = Σ_t ω_c,t (log π_θ − log π_ref)(y_c,t) − Σ_t ω_r,t (log π_θ − log π_ref)(y_r,t) − offset

- ``sigmoid`` (DPO; cDPO with ``label_smoothing`` ε): −(1−ε)·log σ(βΔ) − ε·log σ(−βΔ)
- ``ipo``: (Δ_c/n_c − Δ_r/n_r − 1/(2β))², the weighted sums divided by the completion lengths as TRL does
- ``hinge``: max(0, 1 − βΔ)

``offset`` ``[B]`` lets a scheme move the margin (TI-DPO's TDPO2 KL term, SimPO's γ/β); it is 0 otherwise. A
scheme may weigh the reference log-probs with weights of their own (``ref_weights``, SamPO's independent
reference sample), and the per-pair losses may be scaled by detached pair weights (``pair_weights``: WPO's,
``use_weighting``, times a scheme's own, ConfPO's 0 on a pair with an empty token set); a pair weighted 0 stays in
the batch mean.

Reference-free (``ref_logps=None``, SimPO and ConfPO): the log-ratios are the policy's own log-probs,
Δ = Σ_t ω_c,t log π_θ(y_c,t) − Σ_t ω_r,t log π_θ(y_r,t) − offset, and the reward metrics are what TRL's CPO trainer
logs for ``loss_type="simpo"``: ``rewards/chosen`` = β·Σ_t ω_t log π_θ(y_t) (the length-normalised log-prob for
SimPO), ``logps/chosen`` = Σ_t ω_t log π_θ(y_t); there are no separate ``rewards/weighted_*`` (they would be equal).

The metric functions here return detached 0-d tensors on the batch's device (no ``.item()``), recorded and reduced
by :mod:`tokenweight.metrics` with declared kinds (means; :class:`~tokenweight.metrics.TokenMean` for TRL's per-token
head metrics).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from tokenweight.logps import TokenStats
from tokenweight.masks import last_index
from tokenweight.metrics import TokenMean

LOSS_TYPES = ("sigmoid", "ipo", "hinge")


@dataclass
class PairLoss:
    """``per_pair``: the ``[B]`` unreduced pair losses (with grad); ``loss``: their mean (the batch loss);
    ``metrics``: detached 0-d tensors."""

    per_pair: torch.Tensor
    metrics: dict[str, torch.Tensor]

    @property
    def loss(self) -> torch.Tensor:
        return self.per_pair.mean()


def weighted_log_ratios(policy_logps: torch.Tensor, ref_logps: torch.Tensor | None, weights: torch.Tensor,
                        loss_mask: torch.Tensor, ref_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Per response ``Σ_t ω_t ℓ_θ,t − Σ_t ω_ref,t ℓ_ref,t`` over the completion tokens → ``[2B]``.

    ``policy_logps``, ``ref_logps``, ``weights``, ``loss_mask`` and ``ref_weights`` are ``[2B, T]``;
    ``ref_weights=None`` means the same weights on both, i.e. ``Σ_t ω_t (ℓ_θ,t − ℓ_ref,t)``; ``ref_logps=None`` (a
    reference-free scheme) gives ``Σ_t ω_t ℓ_θ,t``.
    """
    mask = loss_mask.to(policy_logps.dtype)
    weights = weights.to(policy_logps.dtype)
    if ref_logps is None:
        return (policy_logps * mask * weights).sum(dim=1)
    if ref_weights is None:
        return ((policy_logps - ref_logps) * mask * weights).sum(dim=1)
    return ((policy_logps * weights - ref_logps * ref_weights.to(policy_logps.dtype)) * mask).sum(dim=1)


def wpo_pair_weights(policy_logps: torch.Tensor, log_sum_sq_probs: torch.Tensor, loss_mask: torch.Tensor,
                     clamp: bool = True) -> torch.Tensor:
    """WPO's pair weights (arXiv 2406.11827, Eq. 2) → ``[B]``, detached.

    Per response, ``w = exp(mean_t (ℓ_θ,t − log Σ_v π_θ(v | ·)²))`` over its completion tokens (the policy's
    length-normalised probability of the response, relative to the probability that the policy's own sampling
    repeats its draw); a pair weighs ``min(w_chosen · w_rejected, 1)`` as the authors' code
    (github.com/wzhouad/WPO, ``scripts/run_wpo.py::WPOTrainer.get_batch_logps``:
    ``clamp(exp(avg_c + avg_r), max=1)``), or ``w_chosen · w_rejected`` unclamped with ``clamp=False`` (TRL 1.16's
    ``DPOTrainer(use_weighting=True)``; on policy-like completions it exceeds 1). ``policy_logps``,
    ``log_sum_sq_probs`` (from :class:`~tokenweight.logps.TokenStats`) and ``loss_mask`` are ``[2B, T]``.
    """
    with torch.no_grad():
        mask = loss_mask.to(policy_logps.dtype)
        aligned = ((policy_logps - log_sum_sq_probs) * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
        chosen, rejected = aligned.chunk(2)
        weights = (chosen + rejected).exp()
        return weights.clamp(max=1.0) if clamp else weights


class Responses(NamedTuple):
    """One side of ``B`` preference pairs, the chosen or the rejected responses: ``[B, T]`` per-token tensors in the
    shifted alignment.

    Attributes:
        policy_logps: the policy's per-token log-probs (with grad).
        weights: the token weights ω, 0 outside ``mask`` (no grad).
        mask: bool, the completion tokens.
        ref_logps: the reference's per-token log-probs (no grad); ``None``: reference-free (module docstring).
        ref_weights: weights of the reference log-probs alone (:func:`weighted_log_ratios`); ``None``: ``weights``.
    """

    policy_logps: torch.Tensor
    weights: torch.Tensor
    mask: torch.Tensor
    ref_logps: torch.Tensor | None = None
    ref_weights: torch.Tensor | None = None

    def weighted_log_ratios(self) -> torch.Tensor:
        """``[B]`` Σ_t ω_t ℓ_θ,t − Σ_t ω_ref,t ℓ_ref,t per response (:func:`weighted_log_ratios`)."""
        return weighted_log_ratios(self.policy_logps, self.ref_logps, self.weights, self.mask, self.ref_weights)

    def log_ratios(self) -> torch.Tensor:
        """``[B]`` the unweighted Σ_t (ℓ_θ,t − ℓ_ref,t) per response (Σ_t ℓ_θ,t when reference-free)."""
        ratios = self.policy_logps if self.ref_logps is None else self.policy_logps - self.ref_logps
        return (ratios * self.mask.to(self.policy_logps.dtype)).sum(dim=1)


def pair_sides(policy_logps: torch.Tensor, weights: torch.Tensor, loss_mask: torch.Tensor,
               ref_logps: torch.Tensor | None = None,
               ref_weights: torch.Tensor | None = None) -> tuple[Responses, Responses]:
    """The chosen and the rejected :class:`Responses` of a collated batch's ``[2B, T]`` tensors (rows ``[0, B)``
    chosen, ``[B, 2B)`` rejected, as the collator stacks them)."""
    parts = [None if tensor is None else tensor.chunk(2)
             for tensor in (policy_logps, weights, loss_mask, ref_logps, ref_weights)]
    return tuple(Responses(*(None if part is None else part[side] for part in parts)) for side in (0, 1))


def pair_loss(chosen: Responses, rejected: Responses, beta: float, loss_type: str = "sigmoid",
              label_smoothing: float = 0.0, offset: torch.Tensor | None = None,
              pair_weights: torch.Tensor | None = None) -> PairLoss:
    """Token-weighted preference loss of ``B`` pairs, pair ``b`` = (``chosen`` row ``b``, ``rejected`` row ``b``).

    Args:
        chosen, rejected: the two sides (:class:`Responses`, ``[B, T]`` each); both with reference log-probs, or
            both without (reference-free, module docstring).
        offset: optional ``[B]`` subtracted from Δ before the pair loss.
        pair_weights: optional ``[B]`` factors of each pair's loss (WPO, :func:`wpo_pair_weights`), no grad.

    Returns:
        :class:`PairLoss`: the unreduced ``[B]`` losses (with grad), their mean, and the reward metrics.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r} (config key `loss_type`); known: {list(LOSS_TYPES)}")
    if label_smoothing and loss_type != "sigmoid":
        raise ValueError("label_smoothing (cDPO) applies to loss_type='sigmoid' only")
    if (chosen.ref_logps is None) != (rejected.ref_logps is None):
        raise ValueError("pair_loss: chosen and rejected must both have reference log-probs or both have none")
    chosen_w, rejected_w = chosen.weighted_log_ratios(), rejected.weighted_log_ratios()
    delta = chosen_w - rejected_w
    if offset is not None:
        delta = delta - offset
    if loss_type == "sigmoid":
        per_pair = -(1 - label_smoothing) * F.logsigmoid(beta * delta) - label_smoothing * F.logsigmoid(-beta * delta)
    elif loss_type == "hinge":
        per_pair = torch.relu(1 - beta * delta)
    else:
        chosen_len, rejected_len = (side.mask.sum(dim=1).clamp(min=1).to(side.policy_logps.dtype)
                                    for side in (chosen, rejected))
        ipo_delta = chosen_w / chosen_len - rejected_w / rejected_len
        if offset is not None:
            ipo_delta = ipo_delta - offset
        per_pair = (ipo_delta - 1 / (2 * beta)) ** 2
    if pair_weights is not None:
        per_pair = per_pair * pair_weights.to(per_pair.dtype)
    metrics = (reference_free_metrics(chosen_w, rejected_w, beta) if chosen.ref_logps is None
               else preference_metrics(chosen, rejected, chosen_w, rejected_w, beta))
    return PairLoss(per_pair=per_pair, metrics=metrics)


def preference_metrics(chosen: Responses, rejected: Responses, chosen_w: torch.Tensor, rejected_w: torch.Tensor,
                       beta: float) -> dict[str, torch.Tensor]:
    """TRL's reward metrics (unweighted β·Σ log-ratio, so schemes stay comparable) plus the weighted ones, from the
    two sides and their weighted log-ratio sums ``[B]``."""
    with torch.no_grad():
        rewards_c, rewards_r = beta * chosen.log_ratios(), beta * rejected.log_ratios()
        weighted_c, weighted_r = beta * chosen_w.detach(), beta * rejected_w.detach()
        logps_c, logps_r = ((side.policy_logps.detach() * side.mask.to(side.policy_logps.dtype)).sum(dim=1)
                            for side in (chosen, rejected))
        return {
            "rewards/chosen": rewards_c.mean(),
            "rewards/rejected": rewards_r.mean(),
            "rewards/margins": (rewards_c - rewards_r).mean(),
            "rewards/accuracies": (rewards_c > rewards_r).float().mean(),
            "rewards/weighted_chosen": weighted_c.mean(),
            "rewards/weighted_rejected": weighted_r.mean(),
            "rewards/weighted_margins": (weighted_c - weighted_r).mean(),
            "rewards/weighted_accuracies": (weighted_c > weighted_r).float().mean(),
            "logps/chosen": logps_c.mean(),
            "logps/rejected": logps_r.mean(),
        }


def reference_free_metrics(chosen_w: torch.Tensor, rejected_w: torch.Tensor, beta: float) -> dict[str, torch.Tensor]:
    """TRL CPO's reward metrics of a reference-free pair loss from the weighted policy log-prob sums ``[B]`` of each
    side: rewards β·Σ ω log π_θ, ``logps/*`` Σ ω log π_θ (the length-normalised log-probs for SimPO)."""
    with torch.no_grad():
        logps_c, logps_r = chosen_w.detach(), rejected_w.detach()
        rewards_c, rewards_r = beta * logps_c, beta * logps_r
        return {
            "rewards/chosen": rewards_c.mean(),
            "rewards/rejected": rewards_r.mean(),
            "rewards/margins": (rewards_c - rewards_r).mean(),
            "rewards/accuracies": (rewards_c > rewards_r).float().mean(),
            "logps/chosen": logps_c.mean(),
            "logps/rejected": logps_r.mean(),
        }


def weight_statistics(weights: torch.Tensor, loss_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Statistics of ``weights`` ``[2B, T]`` over the completion tokens of ``loss_mask`` ``[2B, T]``.

    ``weights/eff_frac`` is the effective token fraction (Σw)²/(n·Σw²) averaged over responses (1 for uniform);
    ``weights/first_token`` and ``weights/last_token`` are the mean weights of each response's first and last
    completion token (the last is usually EOS).
    """
    with torch.no_grad():
        mask = loss_mask.bool()
        w = weights.float() * mask
        n = mask.sum(dim=1).clamp(min=1).float()
        total = w.sum(dim=1)
        eff = total ** 2 / (n * (w ** 2).sum(dim=1)).clamp(min=1e-12)
        positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
        first = torch.where(mask, positions, mask.shape[1]).min(dim=1).values.clamp(max=mask.shape[1] - 1)
        last = last_index(mask).clamp(min=0)
        rows = torch.arange(mask.shape[0], device=mask.device)
        return {
            "weights/mean": total.sum() / mask.sum().clamp(min=1),
            "weights/max": w.max(),
            "weights/min": weights.float().masked_fill(~mask, float("inf")).min(),
            "weights/eff_frac": eff.mean(),
            "weights/first_token": w[rows, first].mean(),
            "weights/last_token": w[rows, last].mean(),
        }


def completion_statistics(stats: TokenStats, loss_mask: torch.Tensor) -> dict[str, TokenMean]:
    """TRL's ``entropy`` (over every completion token), ``logits/chosen``, ``logits/rejected`` (mean logit over the
    chosen / rejected completion tokens) and ``mean_token_accuracy`` (share of chosen completion tokens that are the
    policy's top-1 prediction), from the policy's :class:`~tokenweight.logps.TokenStats` ``[2B, T]`` and
    ``loss_mask`` ``[2B, T]``."""
    mask = loss_mask.bool()
    chosen, rejected = mask.chunk(2)
    mean_logit_chosen, mean_logit_rejected = (stats.mean_logit * mask).chunk(2)  # products, not [mask]: no sync
    return {
        "entropy": TokenMean((stats.entropy * mask).sum(), mask.sum()),
        "logits/chosen": TokenMean(mean_logit_chosen.sum(), chosen.sum()),
        "logits/rejected": TokenMean(mean_logit_rejected.sum(), rejected.sum()),
        "mean_token_accuracy": TokenMean((stats.is_top1.chunk(2)[0] & chosen).sum(), chosen.sum()),
    }
