"""Pair losses on weighted log-ratio sums, and the metrics logged under TRL's names.

Inputs are per-token log-probs in the shifted alignment (see :mod:`tokenweight.weights.base`), rows
``[0, B)`` chosen and ``[B, 2B)`` rejected:

    Δ = Σ_t ω_c,t (log π_θ − log π_ref)(y_c,t) − Σ_t ω_r,t (log π_θ − log π_ref)(y_r,t) − offset

- ``sigmoid`` (DPO; cDPO with ``label_smoothing`` ε): −(1−ε)·log σ(βΔ) − ε·log σ(−βΔ)
- ``ipo``: (Δ_c/n_c − Δ_r/n_r − 1/(2β))², the weighted sums divided by the completion lengths as TRL does
- ``hinge``: max(0, 1 − βΔ)

``offset`` ``[B]`` lets a scheme move the margin (TI-DPO's TDPO2 KL term); it is 0 otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

LOSS_TYPES = ("sigmoid", "ipo", "hinge")


@dataclass
class PairLoss:
    """``loss`` is the batch mean (scalar, with grad); ``metrics`` are detached floats; ``per_pair`` ``[B]``."""

    loss: torch.Tensor
    per_pair: torch.Tensor
    metrics: dict[str, float]


def pair_loss(policy_logps: torch.Tensor, ref_logps: torch.Tensor, weights: torch.Tensor, loss_mask: torch.Tensor,
              beta: float, loss_type: str = "sigmoid", label_smoothing: float = 0.0,
              offset: torch.Tensor | None = None) -> PairLoss:
    """Token-weighted preference loss.

    Args:
        policy_logps: ``[2B, T]`` per-token log-probs of the policy (with grad).
        ref_logps: ``[2B, T]`` per-token log-probs of the reference.
        weights: ``[2B, T]`` token weights, 0 outside ``loss_mask`` (no grad).
        loss_mask: ``[2B, T]`` bool, completion tokens.
        offset: optional ``[B]`` subtracted from Δ before the pair loss.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r} (config key `loss_type`); known: {list(LOSS_TYPES)}")
    if label_smoothing and loss_type != "sigmoid":
        raise ValueError("label_smoothing (cDPO) applies to loss_type='sigmoid' only")
    mask = loss_mask.to(policy_logps.dtype)
    weights = weights.to(policy_logps.dtype)
    ratios = (policy_logps - ref_logps) * mask
    weighted = (ratios * weights).sum(dim=1)
    chosen_w, rejected_w = weighted.chunk(2)
    delta = chosen_w - rejected_w
    if offset is not None:
        delta = delta - offset
    if loss_type == "sigmoid":
        per_pair = -(1 - label_smoothing) * F.logsigmoid(beta * delta) - label_smoothing * F.logsigmoid(-beta * delta)
    elif loss_type == "hinge":
        per_pair = torch.relu(1 - beta * delta)
    else:
        chosen_len, rejected_len = loss_mask.sum(dim=1).clamp(min=1).to(policy_logps.dtype).chunk(2)
        ipo_delta = chosen_w / chosen_len - rejected_w / rejected_len
        if offset is not None:
            ipo_delta = ipo_delta - offset
        per_pair = (ipo_delta - 1 / (2 * beta)) ** 2
    return PairLoss(loss=per_pair.mean(), per_pair=per_pair.detach(),
                    metrics=preference_metrics(policy_logps, ratios, weighted, mask, beta))


def preference_metrics(policy_logps: torch.Tensor, ratios: torch.Tensor, weighted: torch.Tensor,
                       mask: torch.Tensor, beta: float) -> dict[str, float]:
    """TRL's reward metrics (unweighted β·Σ log-ratio, so schemes stay comparable) plus the weighted ones."""
    with torch.no_grad():
        rewards_c, rewards_r = (beta * ratios.sum(dim=1)).chunk(2)
        weighted_c, weighted_r = (beta * weighted.detach()).chunk(2)
        logps_c, logps_r = (policy_logps.detach() * mask).sum(dim=1).chunk(2)
        return {
            "rewards/chosen": rewards_c.mean().item(),
            "rewards/rejected": rewards_r.mean().item(),
            "rewards/margins": (rewards_c - rewards_r).mean().item(),
            "rewards/accuracies": (rewards_c > rewards_r).float().mean().item(),
            "rewards/weighted_chosen": weighted_c.mean().item(),
            "rewards/weighted_rejected": weighted_r.mean().item(),
            "rewards/weighted_margins": (weighted_c - weighted_r).mean().item(),
            "rewards/weighted_accuracies": (weighted_c > weighted_r).float().mean().item(),
            "logps/chosen": logps_c.mean().item(),
            "logps/rejected": logps_r.mean().item(),
        }


def weight_statistics(weights: torch.Tensor, loss_mask: torch.Tensor) -> dict[str, float]:
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
        last = torch.where(mask, positions, -1).max(dim=1).values.clamp(min=0)
        rows = torch.arange(mask.shape[0], device=mask.device)
        return {
            "weights/mean": (total.sum() / mask.sum().clamp(min=1)).item(),
            "weights/max": w.max().item(),
            "weights/min": weights.float().masked_fill(~mask, float("inf")).min().item(),
            "weights/eff_frac": eff.mean().item(),
            "weights/first_token": w[rows, first].mean().item(),
            "weights/last_token": w[rows, last].mean().item(),
        }
