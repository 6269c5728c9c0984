"""OTPO token weights (Li et al. 2025): unbalanced optimal transport between chosen and rejected hidden states.

For one pair with ``n_c`` chosen and ``n_r`` rejected response tokens (arXiv:2505.18720; the official code at
https://github.com/Mimasss2/OTPO is authoritative)::

    dist_ij = ‖h_c,i − h_r,j‖₂                       (Euclidean, not squared; fp32)
    D       = max(max_ij dist_ij, max_i ‖h_c,i‖, max_j ‖h_r,j‖) + 1e-6
    C_ij    = (dist_ij + 1e-6) / D   if D > 1   else   dist_ij + 1e-6
    Γ       = unbalanced Sinkhorn(C, unit marginals, reg, reg_m)          (POT's stabilized solver)
    ω_c     = τ · Γ 1 / ‖Γ‖₁,   ω_r = τ · Γᵀ 1 / ‖Γ‖₁,   τ = min(n_c, n_r)

This reproduces the official implementation, which runs POT on the full padded ``(L−1) × (L−1)`` matrix with prompt
and padding states replaced by zero vectors: those contribute exactly zero mass, and their only effect is through
the normaliser ``D`` (the norms of the response states), which is reproduced here on the response block alone.

Special cases:

* a one-token response gets weight ``τ = 1`` on its token, and the other side's weights sum to 1;
* identical chosen and rejected responses get identical weights on both sides (the plan is symmetric), summing
  to ``n``; they are not uniform in general (tokens far from the others carry less mass). Their zero distances
  come out of the fp32 matmul form as about ``sqrt(eps_fp32) · ‖h − mean h‖``, hence the centring in :func:`otpo_cost`.

No gradient flows through the weights.
"""

from __future__ import annotations

from contextlib import contextmanager

from dataclasses import dataclass
from typing import Sequence

import torch

from tokenweight.sinkhorn import unbalanced_sinkhorn


@dataclass
class OTPOStats:
    """Diagnostics of one :func:`otpo_weights_with_stats` call for ``B`` pairs.

    Attributes:
        mass_scale: ``[B]`` ``‖Γ‖₁ / τ`` (the official ``logps/scaled_coeff``).
        iterations: ``[B]`` int64 Sinkhorn iterations per pair.
        converged: ``[B]`` bool, whether each pair met the stopping threshold within the iteration budget.
    """

    mass_scale: torch.Tensor
    iterations: torch.Tensor
    converged: torch.Tensor


def otpo_cost(chosen_hidden: torch.Tensor, rejected_hidden: torch.Tensor, chosen_mask: torch.Tensor,
              rejected_mask: torch.Tensor) -> torch.Tensor:
    """OTPO's normalised cost ``C`` ``[B, N, M]`` from ``[B, N, d]`` / ``[B, M, d]`` states and bool masks.

    Entries outside ``chosen_mask ⊗ rejected_mask`` are meaningless but finite. Distances use the matmul form
    ``‖x‖² + ‖y‖² − 2x·y`` (as fp32 ``torch.cdist`` does upstream), whose rounding error grows with ``‖x‖²`` and
    dominates near-zero distances; they are therefore computed after subtracting each pair's mean state (exact in
    real arithmetic), since final hidden states share a large common component.

    Raises:
        ValueError: a response is empty or a valid hidden state is NaN/inf (naming the batch rows).
    """
    _check_shapes(chosen_hidden, rejected_hidden, chosen_mask, rejected_mask)
    chosen = _zero_outside(chosen_hidden, chosen_mask)
    rejected = _zero_outside(rejected_hidden, rejected_mask)
    chosen_norms, rejected_norms = chosen.norm(dim=2), rejected.norm(dim=2)
    _check_responses(chosen_mask, rejected_mask, chosen_norms, rejected_norms)
    counts = (chosen_mask.sum(dim=1) + rejected_mask.sum(dim=1)).to(chosen.dtype)
    center = ((chosen.sum(dim=1) + rejected.sum(dim=1)) / counts[:, None])[:, None, :]
    chosen.sub_(center).masked_fill_(~chosen_mask[:, :, None], 0.0)
    rejected.sub_(center).masked_fill_(~rejected_mask[:, :, None], 0.0)
    rejected_squares = rejected.norm(dim=2).square_()[:, None, :]
    with _ieee_fp32_matmul():  # TF32 (e.g. `--tf32 true`) would ruin near-zero distances
        squared = torch.baddbmm(rejected_squares, chosen, rejected.transpose(1, 2), alpha=-2.0)
    dist = squared.add_(chosen.norm(dim=2).square_()[:, :, None]).clamp_min_(0.0).sqrt_()
    valid = chosen_mask[:, :, None] & rejected_mask[:, None, :]
    largest_norm = torch.maximum(chosen_norms.amax(dim=1), rejected_norms.amax(dim=1))
    normaliser = torch.maximum(dist.masked_fill(~valid, 0.0).amax(dim=(1, 2)), largest_norm) + 1e-6
    normaliser = torch.where(normaliser > 1, normaliser, torch.ones_like(normaliser))
    return dist.add_(1e-6).div_(normaliser[:, None, None])


@contextmanager
def _ieee_fp32_matmul():
    """Full-precision fp32 matmuls on CUDA inside the block, whatever the global TF32 setting."""
    previous = torch.backends.cuda.matmul.fp32_precision
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.fp32_precision = previous


def _zero_outside(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A new fp32 (or fp64) copy of ``hidden`` ``[B, T, d]`` with zeros where ``mask`` ``[B, T]`` is False."""
    dtype = torch.promote_types(hidden.dtype, torch.float32)
    return hidden.detach().to(dtype, copy=True).masked_fill_(~mask[:, :, None], 0.0)


def otpo_weights_with_stats(
    chosen_hidden: torch.Tensor,
    rejected_hidden: torch.Tensor,
    chosen_mask: torch.Tensor,
    rejected_mask: torch.Tensor,
    reg: float = 1.0,
    reg_m: float | Sequence[float] = 0.2,
) -> tuple[torch.Tensor, torch.Tensor, OTPOStats]:
    """:func:`otpo_weights` plus its :class:`OTPOStats` (for the trainer's logging)."""
    with torch.no_grad():
        cost = otpo_cost(chosen_hidden, rejected_hidden, chosen_mask, rejected_mask)
        result = unbalanced_sinkhorn(cost, chosen_mask, rejected_mask, reg=reg, reg_m=reg_m)
        budget = torch.minimum(chosen_mask.sum(dim=1), rejected_mask.sum(dim=1)).to(result.total_mass.dtype)
        scale = budget / result.total_mass
        chosen_weights = result.row_mass * scale[:, None]
        rejected_weights = result.col_mass * scale[:, None]
    bad = (~torch.isfinite(chosen_weights).all(dim=1)) | (~torch.isfinite(rejected_weights).all(dim=1))
    bad_rows = bad.nonzero().flatten().tolist()
    if bad_rows:
        raise FloatingPointError(f"OTPO produced non-finite weights for pairs {bad_rows} (reg={reg}, reg_m={reg_m})")
    stats = OTPOStats(mass_scale=result.total_mass / budget, iterations=result.iterations,
                      converged=result.converged)
    return chosen_weights, rejected_weights, stats


def otpo_weights(
    chosen_hidden: torch.Tensor,
    rejected_hidden: torch.Tensor,
    chosen_mask: torch.Tensor,
    rejected_mask: torch.Tensor,
    reg: float = 1.0,
    reg_m: float | Sequence[float] = 0.2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """OTPO token weights for ``B`` preference pairs, batched on the inputs' device.

    Args:
        chosen_hidden: ``[B, N, d]`` final (post-norm) hidden states of the chosen responses, left aligned.
        rejected_hidden: ``[B, M, d]`` the same for the rejected responses.
        chosen_mask: ``[B, N]`` bool, valid chosen tokens (at least one per row).
        rejected_mask: ``[B, M]`` bool, valid rejected tokens (at least one per row).
        reg: entropic regulariser ε1 (upstream ``ot_reg``; official configs 1 and 0.1).
        reg_m: marginal relaxation ε2, a number or a ``(chosen, rejected)`` pair (upstream ``ot_reg_m``, 0.2).

    Returns:
        ``(chosen_weights [B, N], rejected_weights [B, M])``, fp32 (fp64 for fp64 states), detached, exactly 0
        outside the masks; both sides of a pair sum to ``min(n_c, n_r)``.

    Raises:
        ValueError: a response is empty or a valid hidden state is NaN/inf (the message names the batch rows).
    """
    chosen_weights, rejected_weights, _ = otpo_weights_with_stats(
        chosen_hidden, rejected_hidden, chosen_mask, rejected_mask, reg=reg, reg_m=reg_m)
    return chosen_weights, rejected_weights


def _check_shapes(chosen_hidden: torch.Tensor, rejected_hidden: torch.Tensor, chosen_mask: torch.Tensor,
                  rejected_mask: torch.Tensor) -> None:
    """Raise on misshaped states or masks."""
    if chosen_hidden.dim() != 3 or rejected_hidden.dim() != 3:
        raise ValueError("chosen_hidden and rejected_hidden must be [B, N, d] and [B, M, d]")
    if chosen_mask.shape != chosen_hidden.shape[:2] or rejected_mask.shape != rejected_hidden.shape[:2]:
        raise ValueError(f"mask shapes {tuple(chosen_mask.shape)}, {tuple(rejected_mask.shape)} do not match hidden "
                         f"states {tuple(chosen_hidden.shape)}, {tuple(rejected_hidden.shape)}")
    if chosen_hidden.shape[0] != rejected_hidden.shape[0] or chosen_hidden.shape[2] != rejected_hidden.shape[2]:
        raise ValueError(f"chosen {tuple(chosen_hidden.shape)} and rejected {tuple(rejected_hidden.shape)} hidden "
                         "states differ in batch size or hidden size")
    if chosen_mask.dtype != torch.bool or rejected_mask.dtype != torch.bool:
        raise TypeError("chosen_mask and rejected_mask must be bool tensors")


def _check_responses(chosen_mask: torch.Tensor, rejected_mask: torch.Tensor, chosen_norms: torch.Tensor,
                     rejected_norms: torch.Tensor) -> None:
    """Raise on empty responses or non-finite valid states, seen through their norms ``[B, N]``, ``[B, M]``.

    A NaN/inf entry makes the norm NaN/inf; masked positions are zero vectors. One host sync.
    """
    flags = torch.stack([
        ~chosen_mask.any(dim=1),
        ~rejected_mask.any(dim=1),
        ~torch.isfinite(chosen_norms).all(dim=1),
        ~torch.isfinite(rejected_norms).all(dim=1),
    ]).tolist()
    problems = ["empty chosen response", "empty rejected response", "non-finite chosen hidden state",
                "non-finite rejected hidden state"]
    messages = [f"{problem} in batch rows {[b for b, flag in enumerate(row) if flag]}"
                for problem, row in zip(problems, flags) if any(row)]
    if messages:
        raise ValueError("OTPO weights: " + "; ".join(messages))
