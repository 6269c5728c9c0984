"""Batched unbalanced Sinkhorn (entropic unbalanced optimal transport), pure tensors.

Solves, independently for every pair ``b`` of a batch, POT's entropic unbalanced problem with unit marginals on
the valid entries (``a_i = 1`` where ``row_mask``, ``b_j = 1`` where ``col_mask``)::

    Γ* = argmin_{Γ ≥ 0}  Σ Γ_ij C_ij + reg · Σ Γ_ij (log Γ_ij − 1)
                          + reg_m1 · KL(Γ 1 ‖ a) + reg_m2 · KL(Γᵀ 1 ‖ b)

with the iteration of POT's ``sinkhorn_unbalanced(..., method="sinkhorn_stabilized", reg_type="entropy")``::

    u ← (a / (K v + 1e-16)) ** ρ1,   v ← (b / (Kᵀ u + 1e-16)) ** ρ2,   K = exp(−C / reg),  ρ = reg_m / (reg_m + reg)

and POT's stopping rule: the error ``max|u − u_prev| / max(max u, max u_prev, 1)`` (on ``u`` only) is checked at
iterations ``k % check_every == 0``; a pair whose error is ``≤ stop_thr`` is frozen, and the loop stops when every
pair is frozen or after ``max_iter`` iterations. A pair stopping at check ``k`` has run ``k + 1`` iterations, as in
POT (11 at ``reg=1``, 21 at ``reg=0.1`` on OTPO's normalised costs with ``reg_m=0.2``).

Two numerically equivalent forms:

* **scaling** (``u, v`` and the kernel ``K``; one batched mat-vec per half-step) when every kernel entry stays far
  from fp32 underflow: ``max|C| / reg ≤ MAX_SCALING_EXPONENT`` (20, i.e. ``K ≥ 2e-9``, leaving ~67 nats of fp32
  range for ``u``, ``v`` and the mat-vecs). For costs in ``(0, 1]`` (OTPO's normalised cost) this is ``reg ≥ 0.05``.
* **log** (``log u, log v`` and masked log-sum-exp) otherwise, e.g. ``reg = 0.01``. It is the logarithm of the
  scaling iteration without POT's ``+ 1e-16`` guard (which only prevents a division by zero that cannot happen in
  the log domain). POT's absorption of large potentials (``tau``) is a change of representation that the log
  form does not need.

Everything runs on the inputs' device in fp32 (bf16/fp16 are upcast; fp64 stays fp64). Host synchronisations:
one to validate the inputs and choose the form, then one per convergence check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import torch

MAX_SCALING_EXPONENT = 20.0
"""The scaling form is used while ``max|C| / reg`` is at most this (kernel entries ``≥ e^-20``)."""

Method = Literal["auto", "scaling", "log"]


@dataclass
class SinkhornResult:
    """Output of :func:`unbalanced_sinkhorn` for ``B`` pairs of ``N`` rows and ``M`` columns.

    Attributes:
        row_mass: ``[B, N]`` row sums ``Γ 1`` of the transport plan, exactly 0 on masked rows.
        col_mass: ``[B, M]`` column sums ``Γᵀ 1``, exactly 0 on masked columns.
        total_mass: ``[B]`` ``‖Γ‖₁`` (the sum of ``row_mass``).
        iterations: ``[B]`` int64, Sinkhorn iterations run for each pair (POT's count).
        converged: ``[B]`` bool, whether the pair met ``stop_thr`` at a check.
        method: the form that ran (``"scaling"`` or ``"log"``).
        plan: ``[B, N, M]`` the plan ``Γ`` (only when ``return_plan=True``), 0 on masked entries.
    """

    row_mass: torch.Tensor
    col_mass: torch.Tensor
    total_mass: torch.Tensor
    iterations: torch.Tensor
    converged: torch.Tensor
    method: str
    plan: torch.Tensor | None = None


def mass_exponents(reg: float, reg_m: float | Sequence[float]) -> tuple[float, float]:
    """POT's exponents ``ρ = reg_m / (reg_m + reg)`` for rows and columns (``reg_m = inf`` gives 1).

    ``reg_m`` is a scalar or a length-1 sequence (both sides) or a ``(rows, columns)`` pair, as in POT.
    """
    pair = [reg_m] if isinstance(reg_m, (int, float)) else list(reg_m)
    if len(pair) == 1:
        pair = pair * 2
    if len(pair) != 2:
        raise ValueError(f"reg_m must be a number or a (rows, columns) pair, got {reg_m!r}")
    if not reg > 0 or not math.isfinite(reg):
        raise ValueError(f"reg must be a finite positive number, got {reg!r}")
    if any(not m > 0 for m in pair):
        raise ValueError(f"reg_m must be positive, got {reg_m!r}")
    return tuple(1.0 if math.isinf(m) else m / (m + reg) for m in pair)


@torch.no_grad()
def unbalanced_sinkhorn(
    cost: torch.Tensor,
    row_mask: torch.Tensor,
    col_mask: torch.Tensor,
    reg: float,
    reg_m: float | Sequence[float],
    stop_thr: float = 1e-6,
    check_every: int = 10,
    max_iter: int = 1000,
    method: Method = "auto",
    return_plan: bool = False,
) -> SinkhornResult:
    """Entropic unbalanced OT with unit marginals, batched over pairs, equal to POT's stabilized solver.

    Args:
        cost: ``[B, N, M]`` cost matrices; entries outside ``row_mask ⊗ col_mask`` are ignored (may be anything).
        row_mask: ``[B, N]`` bool, valid rows (mass 1 each); every pair needs at least one.
        col_mask: ``[B, M]`` bool, valid columns (mass 1 each); every pair needs at least one.
        reg: entropic regulariser (POT ``reg``).
        reg_m: marginal relaxation, a number or a ``(rows, columns)`` pair (POT ``reg_m``; ``inf`` = hard side).
        stop_thr, check_every, max_iter: POT's ``stopThr``, its every-10-iterations check, ``numItermax``.
        method: ``"auto"`` (scaling when ``max|C|/reg ≤ MAX_SCALING_EXPONENT``, log otherwise), ``"scaling"``
            or ``"log"``.
        return_plan: also return the ``[B, N, M]`` plan.

    Returns:
        A :class:`SinkhornResult`.
    """
    rho_rows, rho_cols = mass_exponents(reg, reg_m)
    _check_shapes(cost, row_mask, col_mask)
    invalid = ~(row_mask[:, :, None] & col_mask[:, None, :])
    masked_cost = cost.to(torch.promote_types(cost.dtype, torch.float32)).masked_fill(invalid, 0.0)
    max_abs_cost = _validate(masked_cost, row_mask, col_mask)
    if method == "auto":
        method = "scaling" if max_abs_cost / reg <= MAX_SCALING_EXPONENT else "log"
    if method not in ("scaling", "log"):
        raise ValueError(f"method must be 'auto', 'scaling' or 'log', got {method!r}")
    if method == "scaling" and max_abs_cost / reg > 88.0:
        raise ValueError(f"method='scaling' would underflow exp(-C/reg) (max|C|/reg = {max_abs_cost / reg:.3g}); "
                         "use method='log'")

    log_kernel = masked_cost.mul_(-1.0 / reg)  # −C/reg, in place
    if method == "scaling":
        step = _ScalingStep(log_kernel.exp_().masked_fill_(invalid, 0.0), row_mask, col_mask, rho_rows, rho_cols)
    else:
        step = _LogStep(log_kernel.masked_fill_(invalid, -math.inf), row_mask, col_mask, rho_rows, rho_cols)
    del invalid

    batch = cost.shape[0]
    active = torch.ones(batch, dtype=torch.bool, device=cost.device)
    iterations = torch.full((batch,), max_iter, dtype=torch.int64, device=cost.device)
    for k in range(max_iter):
        u_prev = step.snapshot()
        step.update(active)
        if k % check_every == 0:
            newly_converged = active & (step.relative_change(u_prev) <= stop_thr)
            iterations = torch.where(newly_converged, k + 1, iterations)
            active = active & ~newly_converged
            if not bool(active.any()):
                break
    row_mass, col_mass, plan = step.masses(return_plan)
    row_mass = row_mass.masked_fill(~row_mask, 0.0)
    col_mass = col_mass.masked_fill(~col_mask, 0.0)
    return SinkhornResult(row_mass=row_mass, col_mass=col_mass, total_mass=row_mass.sum(dim=1),
                          iterations=iterations, converged=~active, method=method, plan=plan)


def _check_shapes(cost: torch.Tensor, row_mask: torch.Tensor, col_mask: torch.Tensor) -> None:
    """Raise unless ``cost`` is ``[B, N, M]`` and the masks are bool ``[B, N]`` / ``[B, M]``."""
    if cost.dim() != 3:
        raise ValueError(f"cost must be [B, N, M], got shape {tuple(cost.shape)}")
    batch, n, m = cost.shape
    if row_mask.shape != (batch, n) or col_mask.shape != (batch, m):
        raise ValueError(f"masks of shapes {tuple(row_mask.shape)}, {tuple(col_mask.shape)} do not match cost "
                         f"{tuple(cost.shape)}")
    if row_mask.dtype != torch.bool or col_mask.dtype != torch.bool:
        raise TypeError("row_mask and col_mask must be bool tensors")


def _validate(masked_cost: torch.Tensor, row_mask: torch.Tensor, col_mask: torch.Tensor) -> float:
    """Raise on a pair without valid rows or columns or with a non-finite valid cost (one host sync).

    ``masked_cost`` ``[B, N, M]`` is 0 on invalid entries. Returns ``max|C|`` over the valid entries.
    """
    largest = torch.maximum(masked_cost.amax(dim=(1, 2)), -masked_cost.amin(dim=(1, 2)))  # NaN propagates
    empty_rows, empty_cols, largest = torch.stack([
        (~row_mask.any(dim=1)).to(largest.dtype), (~col_mask.any(dim=1)).to(largest.dtype), largest]).tolist()
    problems = (("no valid row", empty_rows), ("no valid column", empty_cols),
                ("a non-finite cost", [not math.isfinite(value) for value in largest]))
    for name, flags in problems:
        pairs = [b for b, flag in enumerate(flags) if flag]
        if pairs:
            raise ValueError(f"unbalanced_sinkhorn: pairs {pairs} have {name}")
    return max(largest)


class _ScalingStep:
    """Scaling form: ``u [B, N]``, ``v [B, M]`` and the kernel ``K = exp(−C/reg)`` ``[B, N, M]`` (0 off the masks)."""

    def __init__(self, kernel: torch.Tensor, row_mask: torch.Tensor, col_mask: torch.Tensor,
                 rho_rows: float, rho_cols: float):
        self.kernel = kernel
        self.row_invalid, self.col_invalid = ~row_mask, ~col_mask
        self.rho_rows, self.rho_cols = rho_rows, rho_cols
        batch, n, m = kernel.shape
        self.u = kernel.new_ones(batch, n)
        self.v = kernel.new_ones(batch, m)

    def snapshot(self) -> torch.Tensor:
        """``u`` ``[B, N]``, what :meth:`relative_change` compares against."""
        return self.u

    def update(self, active: torch.Tensor) -> None:
        kv = torch.bmm(self.kernel, self.v[:, :, None])[:, :, 0]
        u = ((kv + 1e-16).reciprocal() ** self.rho_rows).masked_fill(self.row_invalid, 0.0)
        ktu = torch.bmm(u[:, None, :], self.kernel)[:, 0, :]
        v = ((ktu + 1e-16).reciprocal() ** self.rho_cols).masked_fill(self.col_invalid, 0.0)
        self.u = torch.where(active[:, None], u, self.u)
        self.v = torch.where(active[:, None], v, self.v)

    def relative_change(self, u_prev: torch.Tensor) -> torch.Tensor:
        scale = torch.maximum(torch.maximum(self.u.amax(dim=1), u_prev.amax(dim=1)), torch.ones_like(self.u[:, 0]))
        return (self.u - u_prev).abs().amax(dim=1) / scale

    def masses(self, return_plan: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        row = self.u * torch.bmm(self.kernel, self.v[:, :, None])[:, :, 0]
        col = self.v * torch.bmm(self.u[:, None, :], self.kernel)[:, 0, :]
        plan = self.u[:, :, None] * self.kernel * self.v[:, None, :] if return_plan else None
        return row, col, plan


class _LogStep:
    """Log form: ``log u [B, N]``, ``log v [B, M]`` (−inf on masked entries) and ``log K = −C/reg``."""

    def __init__(self, log_kernel: torch.Tensor, row_mask: torch.Tensor, col_mask: torch.Tensor,
                 rho_rows: float, rho_cols: float):
        self.log_kernel = log_kernel
        self.row_invalid, self.col_invalid = ~row_mask, ~col_mask
        self.rho_rows, self.rho_cols = rho_rows, rho_cols
        batch, n, m = log_kernel.shape
        self.log_u = log_kernel.new_zeros(batch, n)  # u = v = 1 initially, as in POT
        self.log_v = log_kernel.new_zeros(batch, m).masked_fill(self.col_invalid, -math.inf)

    def snapshot(self) -> torch.Tensor:
        """``log u`` ``[B, N]``, what :meth:`relative_change` compares against."""
        return self.log_u

    def update(self, active: torch.Tensor) -> None:
        log_kv = torch.logsumexp(self.log_kernel + self.log_v[:, None, :], dim=2)
        log_u = (-self.rho_rows * log_kv).masked_fill(self.row_invalid, -math.inf)
        log_ktu = torch.logsumexp(self.log_kernel + log_u[:, :, None], dim=1)
        log_v = (-self.rho_cols * log_ktu).masked_fill(self.col_invalid, -math.inf)
        self.log_u = torch.where(active[:, None], log_u, self.log_u)
        self.log_v = torch.where(active[:, None], log_v, self.log_v)

    def relative_change(self, log_u_prev: torch.Tensor) -> torch.Tensor:
        # max|u − u_prev| / max(max u, max u_prev, 1), evaluated after dividing everything by that denominator.
        log_scale = torch.maximum(torch.maximum(self.log_u.amax(dim=1), log_u_prev.amax(dim=1)),
                                  torch.zeros_like(self.log_u[:, 0]))[:, None]
        return ((self.log_u - log_scale).exp() - (log_u_prev - log_scale).exp()).abs().amax(dim=1)

    def masses(self, return_plan: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        log_plan = self.log_u[:, :, None] + self.log_kernel + self.log_v[:, None, :]
        row = torch.logsumexp(log_plan, dim=2).exp()
        col = torch.logsumexp(log_plan, dim=1).exp()
        return row, col, log_plan.exp() if return_plan else None
