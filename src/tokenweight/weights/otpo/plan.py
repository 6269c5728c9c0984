"""OTPO token weights (Li et al. 2025, arXiv:2505.18720): unbalanced optimal transport between chosen and rejected
final hidden states; the official code (https://github.com/Mimasss2/OTPO) is authoritative::

    C       = otpo_cost(h_c, h_r)                                   (cost.py)
    Γ       = unbalanced Sinkhorn(C, unit marginals, reg, reg_m)    (sinkhorn.py; POT's stabilized solver)
    ω_c     = τ · Γ 1 / ‖Γ‖₁,   ω_r = τ · Γᵀ 1 / ‖Γ‖₁,   τ = min(n_c, n_r)

Special cases: a one-token response gets weight ``τ = 1`` on its token, and the other side's weights sum to 1;
identical chosen and rejected responses get identical weights on both sides (the plan is symmetric), summing to
``n``; they are not uniform in general (tokens far from the others carry less mass). No gradient flows through the
weights.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from tokenweight.weights.otpo.cost import MAX_COST, otpo_cost
from tokenweight.weights.otpo.sinkhorn import unbalanced_sinkhorn


@torch.no_grad()
def otpo_weights(
    chosen_hidden: torch.Tensor,
    rejected_hidden: torch.Tensor,
    chosen_mask: torch.Tensor,
    rejected_mask: torch.Tensor,
    reg: float = 1.0,
    reg_m: float | Sequence[float] = 0.2,
    log: bool = False,
    check: bool = True,
    max_iter: int = 1000,
    with_plan: bool = True,
    chosen_positions: torch.Tensor | None = None,
    rejected_positions: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """OTPO token weights for ``B`` preference pairs, batched on the inputs' device.

    Args:
        chosen_hidden: ``[B, N, d]`` final (post-norm) hidden states of the chosen responses, left aligned.
        rejected_hidden: ``[B, M, d]`` the same for the rejected responses.
        chosen_mask: ``[B, N]`` bool, valid chosen tokens (at least one per row).
        rejected_mask: ``[B, M]`` bool, valid rejected tokens (at least one per row).
        reg: entropic regulariser ε1 (upstream ``ot_reg``; official configs 1 and 0.1).
        reg_m: marginal relaxation ε2, a number or a ``(chosen, rejected)`` pair (upstream ``ot_reg_m``, 0.2).
        log: also return a dict of diagnostics (as POT's ``log=True``):
            ``plan`` ``[B, N, M]`` the transport plan scaled like the weights (``τ Γ / ‖Γ‖₁``: its row sums are
            the chosen weights, its column sums the rejected weights; 0 off the masks), ``cost`` ``[B, N, M]``,
            ``mass_scale`` ``[B]`` ``‖Γ‖₁ / τ`` (the official ``logps/scaled_coeff``), ``iterations`` ``[B]``
            int64, ``converged`` ``[B]`` bool, ``method`` (``"scaling"`` or ``"log"``) and ``host_reads`` (host
            synchronisations of the solver).
        check: raise on empty responses or non-finite valid states (one host read). ``check=False`` is for a
            caller that has checked them already (the ``otpo`` scheme): the result is then meaningless for such
            pairs.
        max_iter: the solver's iteration budget (POT's ``numItermax``).
        chosen_positions, rejected_positions: optional ``[B, N]`` / ``[B, M]`` int64 rows of unpacked
            ``[B, T, d]`` states (see :func:`~tokenweight.weights.otpo.cost.otpo_cost`).
        with_plan: with ``log``, include the ``[B, N, M]`` ``plan`` (``False``: ``plan`` is ``None``, which saves
            two passes over ``[B, N, M]``; the ``otpo`` scheme needs only the other diagnostics).

    Returns:
        ``(chosen_weights [B, N], rejected_weights [B, M])`` (plus the log dict when ``log=True``), fp32 (fp64 for
        fp64 states), detached, exactly 0 outside the masks; both sides of a pair sum to ``min(n_c, n_r)``.

    Raises:
        ValueError: a response is empty or a valid hidden state is NaN/inf (the message names the batch rows).
    """
    cost = otpo_cost(chosen_hidden, rejected_hidden, chosen_mask, rejected_mask, check=check,
                     chosen_positions=chosen_positions, rejected_positions=rejected_positions)
    result = unbalanced_sinkhorn(cost, chosen_mask, rejected_mask, reg=reg, reg_m=reg_m, max_iter=max_iter,
                                 max_cost=MAX_COST, return_plan=log and with_plan)
    budget = torch.minimum(chosen_mask.sum(dim=1), rejected_mask.sum(dim=1)).double()
    log_total = torch.logsumexp(result.log_row_mass, dim=1)  # ‖Γ‖₁ in fp64 logs: no underflow, no 0/0
    dtype = result.row_mass.dtype
    chosen_weights = (result.log_row_mass - log_total[:, None]).exp().mul(budget[:, None]).to(dtype)
    rejected_weights = (result.log_col_mass - log_total[:, None]).exp().mul(budget[:, None]).to(dtype)
    if not log:
        return chosen_weights, rejected_weights
    scale = (budget / log_total.exp()).to(dtype)
    plan = None if result.plan is None else result.plan.mul_(scale[:, None, None])
    diagnostics = {"plan": plan, "cost": cost,
                   "mass_scale": (log_total.exp() / budget).to(dtype), "iterations": result.iterations,
                   "converged": result.converged, "method": result.method, "host_reads": result.host_reads}
    return chosen_weights, rejected_weights, diagnostics
