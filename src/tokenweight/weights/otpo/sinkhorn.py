"""Batched unbalanced Sinkhorn (entropic unbalanced optimal transport) that runs POT's stabilized algorithm.

Solves, independently for every pair ``b`` of a batch, POT's entropic unbalanced problem with unit marginals on
the valid entries (``a_i = 1`` where ``row_mask``, ``b_j = 1`` where ``col_mask``)::

    Γ* = argmin_{Γ ≥ 0}  Σ Γ_ij C_ij + reg · Σ Γ_ij (log Γ_ij − 1)
                          + reg_m1 · KL(Γ 1 ‖ a) + reg_m2 · KL(Γᵀ 1 ‖ b)

by replaying, pair by pair and iteration by iteration, POT's ``sinkhorn_unbalanced(..., method=
"sinkhorn_stabilized", reg_type="entropy")`` (``ot.unbalanced.sinkhorn_stabilized_unbalanced``)::

    u ← (a / (K v + 1e-16)) ** ρ1 · exp(−α / (reg + reg_m1)),   v ← (b / (Kᵀ u + 1e-16)) ** ρ2 · exp(−β / (reg + reg_m2))
    K = exp((α + β − C) / reg),   ρ = reg_m / (reg_m + reg)
    absorption (any u or v > tau):  α += reg · log max u,  β += reg · log max v,  v ← 1   (u kept)
    check at k = 0 and at k % 10 = 0 unless absorbing:  err = max|u − u_prev| / max(max u, max u_prev, 1)

with the scalars ``α, β`` (POT's absorbed potentials), so the iteration counts, the absorptions (which move the
iterate: ``v ← 1``) and the stopping rule are POT's, whatever ``reg_m / reg``. A pair stops at the first check
with ``err ≤ stop_thr`` (``k + 1`` iterations, as POT counts) and is then frozen on the device; the loop ends when
every pair is frozen or after ``max_iter`` iterations, and pairs still running are reported unconverged.

The iteration is carried in the log domain, in units of ``reg``: ``log u``, ``log v`` (fp64 ``[B, N]`` /
``[B, M]``) and ``a = α/reg``, ``b = β/reg`` (fp64 ``[B]``; they grow large when ``reg_m ≫ reg``), so that
``log K v = a + b + LSE_j(log v_j − C_ij/reg)``; the only ``[B, N, M]`` work is the two masked log-sum-exps
``LSE_j(log v_j − C_ij/reg)`` and ``LSE_i(log u_i − C_ij/reg)`` per iteration, in fp32 (fp64 for fp64 costs).
Two ways to evaluate them:

* **scaling** — a mat-vec with the fixed kernel ``exp(−C/reg)`` against ``exp(log v − max log v)`` — when
  ``max C / reg ≤ MAX_SCALING_EXPONENT`` (50): every kernel entry is then ``≥ e^-50``, so the largest term of each
  sum is a normal fp32 number and what underflows is below ``e^-37`` of it. For OTPO's costs in ``(0, 1]`` this is
  ``reg ≥ 0.02``.
* **log** — otherwise (e.g. ``reg = 0.01``): the iterations use mat-vecs with a row- and a column-stabilised
  kernel ``exp(−(C_ij − min C)/reg)`` (:class:`_StabilisedKernelSums`), which flag (at the checks, from the
  smallest sum seen) any sum that fp32 underflow could have made inexact; a flag reruns the solve with the exact
  in-place masked log-sum-exp over a reused ``[B, N, M]`` buffer (:class:`_LogSums`), which also gives the final
  masses and plan.

Host synchronisations: one per convergence check (and one at the end when ``max_iter`` stops the loop between
checks); validating the inputs and choosing the form costs one more unless the caller passes ``max_cost``; a rerun
of the log form in its exact evaluation (only when a stabilised sum could have underflowed) adds its own checks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import torch

MAX_SCALING_EXPONENT = 50.0
"""The scaling form is used while ``max C / reg`` is at most this (kernel entries ``≥ e^-50``)."""

GUARD = 1e-16
"""POT's ``+ 1e-16`` in ``a / (K v + 1e-16)``."""

LOG_FP64_TINY = math.log(5e-324)
"""Below this log, a float64 number (POT's ``Kᵀu``) is 0."""

LOG_FP64_HUGE = math.log(1.7976931348623157e308)
"""Above this log, a float64 number (POT's ``u``, ``v``) is inf."""

Method = Literal["auto", "scaling", "log"]


@dataclass
class SinkhornResult:
    """Output of :func:`unbalanced_sinkhorn` for ``B`` pairs of ``N`` rows and ``M`` columns.

    Attributes:
        row_mass: ``[B, N]`` row sums ``Γ 1`` of the transport plan, exactly 0 on masked rows.
        col_mass: ``[B, M]`` column sums ``Γᵀ 1``, exactly 0 on masked columns.
        total_mass: ``[B]`` ``‖Γ‖₁`` (the sum of ``row_mass``).
        log_row_mass: ``[B, N]`` fp64 ``log Γ 1`` (−inf on masked rows): exact even where ``row_mass`` underflows.
        log_col_mass: ``[B, M]`` fp64 ``log Γᵀ 1``.
        iterations: ``[B]`` int64, Sinkhorn iterations run for each pair (POT's count; 0 for an invalid pair).
        converged: ``[B]`` bool, whether the pair met ``stop_thr`` at a check.
        numerical_error: ``[B]`` bool, pairs stopped (unconverged) by POT's early exit on a numerical error.
        invalid: ``[B]`` bool, pairs without a valid row or column or with a non-finite valid cost (only reported
            here when ``max_cost`` was given; otherwise they raise). Their masses are meaningless.
        method: the form that ran (``"scaling"`` or ``"log"``).
        host_reads: host synchronisations the call made.
        plan: ``[B, N, M]`` the plan ``Γ`` (only when ``return_plan=True``), 0 on masked entries.
    """

    row_mass: torch.Tensor
    col_mass: torch.Tensor
    total_mass: torch.Tensor
    log_row_mass: torch.Tensor
    log_col_mass: torch.Tensor
    iterations: torch.Tensor
    converged: torch.Tensor
    invalid: torch.Tensor
    numerical_error: torch.Tensor
    method: str
    host_reads: int
    plan: torch.Tensor | None = None


def mass_exponents(reg: float, reg_m: float | Sequence[float]) -> tuple[float, float, float, float]:
    """``(ρ1, ρ2, reg_m1, reg_m2)``: POT's exponents ``ρ = reg_m / (reg_m + reg)`` (``reg_m = inf`` gives 1).

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
    rho = [1.0 if math.isinf(m) else m / (m + reg) for m in pair]
    return rho[0], rho[1], float(pair[0]), float(pair[1])


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
    tau: float = 1e5,
    method: Method = "auto",
    max_cost: float | None = None,
    return_plan: bool = False,
) -> SinkhornResult:
    """Entropic unbalanced OT with unit marginals, batched over pairs, iteration for iteration POT's solver.

    Args:
        cost: ``[B, N, M]`` cost matrices; entries outside ``row_mask ⊗ col_mask`` are ignored (may be anything).
        row_mask: ``[B, N]`` bool, valid rows (mass 1 each); every pair needs at least one.
        col_mask: ``[B, M]`` bool, valid columns (mass 1 each); every pair needs at least one.
        reg: entropic regulariser (POT ``reg``).
        reg_m: marginal relaxation, a number or a ``(rows, columns)`` pair (POT ``reg_m``; ``inf`` = hard side).
        stop_thr, check_every, max_iter, tau: POT's ``stopThr``, its every-10-iterations check, ``numItermax``
            and absorption threshold ``tau``.
        method: ``"auto"`` (scaling when ``max C / reg ≤ MAX_SCALING_EXPONENT``, log otherwise), ``"scaling"``
            or ``"log"``.
        max_cost: a known bound on ``|C|`` over the valid entries (OTPO's costs are ``≤ 1``). Given, the inputs
            are checked on the device and bad pairs reported in ``invalid`` (no host read); omitted, one host
            read finds ``max|C|`` and raises on bad pairs.
        return_plan: also return the ``[B, N, M]`` plan.

    Returns:
        A :class:`SinkhornResult`.
    """
    rho_rows, rho_cols, reg_m_rows, reg_m_cols = mass_exponents(reg, reg_m)
    _check_shapes(cost, row_mask, col_mask)
    valid = row_mask[:, :, None] & col_mask[:, None, :]
    host_reads = 0
    if max_cost is None:
        max_cost = _validate(cost.masked_fill(~valid, 0.0), row_mask, col_mask)
        host_reads += 1
    if method == "auto":
        method = "scaling" if max_cost / reg <= MAX_SCALING_EXPONENT else "log"
    if method not in ("scaling", "log"):
        raise ValueError(f"method must be 'auto', 'scaling' or 'log', got {method!r}")
    if method == "scaling" and max_cost / reg > 80.0:
        raise ValueError(f"method='scaling' would underflow exp(-C/reg) (max|C|/reg = {max_cost / reg:.3g}); "
                         "use method='log'")
    work = cost.to(torch.promote_types(cost.dtype, torch.float32))
    sums = (_KernelSums if method == "scaling" else _StabilisedKernelSums)(work, valid, reg)
    # a NaN or −inf valid cost makes its pair's kernel sum NaN/inf (a +inf cost is a forbidden entry, as in POT)
    invalid = (~row_mask.any(dim=1)) | (~col_mask.any(dim=1)) | ~torch.isfinite(sums.total())
    settings = (reg, rho_rows, rho_cols, reg_m_rows, reg_m_cols, tau, stop_thr, check_every, max_iter)
    run = _Run(sums, row_mask, col_mask, invalid, *settings)
    host_reads += run.host_reads
    if method == "log":
        del sums  # the final masses (and a rerun, should a stabilised sum have been inexact) use the exact form
        sums = _LogSums(work, valid, reg)
        if run.inexact:
            run = _Run(sums, row_mask, col_mask, invalid, *settings)
            host_reads += run.host_reads
    del work, valid
    state = run.state
    log_rows, log_cols = state.log_masses(sums)
    row_mass, col_mass = log_rows.exp(), log_cols.exp()
    plan = sums.plan(state.log_row_potential, state.log_col_potential) if return_plan else None
    out_dtype = sums.dtype
    return SinkhornResult(row_mass=row_mass.to(out_dtype), col_mass=col_mass.to(out_dtype),
                          total_mass=row_mass.sum(dim=1).to(out_dtype), log_row_mass=log_rows, log_col_mass=log_cols,
                          iterations=run.iterations, converged=~run.active & ~invalid & ~run.stopped,
                          invalid=invalid, numerical_error=run.stopped, method=method,
                          host_reads=host_reads, plan=plan)


class _Run:
    """POT's loop for every pair, with the periodic convergence check (one host read each) and frozen pairs.

    ``sums`` may flag inexact log-sum-exps (:class:`_StabilisedKernelSums`): the flag is read with each check,
    and the run stops at the first check that sees it, with ``inexact`` set (the caller reruns in the exact form).
    Attributes after the run: ``state`` (:class:`_PotState`), ``iterations`` ``[B]``, ``active`` ``[B]`` (pairs
    still running), ``stopped`` ``[B]`` (POT's numerical-error exit), ``inexact``, ``host_reads``.
    """

    def __init__(self, sums, row_mask, col_mask, invalid, reg, rho_rows, rho_cols, reg_m_rows, reg_m_cols, tau,
                 stop_thr, check_every, max_iter):
        col_min_cost = sums.col_min_cost()  # [B, M], for POT's "Kᵀu == 0" exit
        state = _PotState(row_mask, col_mask, col_min_cost, reg, rho_rows, rho_cols, reg_m_rows, reg_m_cols, tau)
        active = ~invalid
        stopped = torch.zeros_like(invalid)  # POT's early exit on a numerical error
        iterations = torch.where(invalid, 0, max_iter).to(torch.int64)
        self.host_reads, self.inexact = 0, False
        read_after_last = False
        for k in range(max_iter):
            log_u_prev = state.log_u
            absorbing, numerical_error = state.step(sums, active)
            iterations = torch.where(numerical_error, k, iterations)
            stopped = stopped | numerical_error
            active = active & ~numerical_error
            if k % check_every == 0:
                checked = active if k == 0 else active & ~absorbing
                newly_converged = checked & (state.relative_change(log_u_prev) <= stop_thr)
                iterations = torch.where(newly_converged, k + 1, iterations)
                active = active & ~newly_converged
                self.host_reads += 1
                read_after_last = True
                running, self.inexact = _read_flags(active, sums.inexact())
                if not running or self.inexact:
                    break
            else:
                read_after_last = False
        if not read_after_last:
            # the caller reads the results of the iterations after the last check: that read, made here
            self.host_reads += 1
            self.inexact = _read_flags(active, sums.inexact())[1]
        self.state, self.iterations, self.active, self.stopped = state, iterations, active, stopped


def _read_flags(active: torch.Tensor, inexact: torch.Tensor | None) -> tuple[bool, bool]:
    """``(any pair active, any sum inexact)`` in one host read."""
    if inexact is None:
        return bool(active.any()), False
    running, flagged = torch.stack([active.any(), inexact.any()]).tolist()
    return running, flagged


class _PotState:
    """POT's iterate for ``B`` pairs, in units of ``reg``: fp64 ``log u`` ``[B, N]``, ``log v`` ``[B, M]`` (−inf on
    masked entries) and the absorbed scalars ``a = α/reg``, ``b = β/reg`` ``[B]``; the dual potentials are
    ``f/reg = a + log u`` (:attr:`log_row_potential`) and ``g/reg = b + log v``."""

    def __init__(self, row_mask, col_mask, col_min_cost, reg, rho_rows, rho_cols, reg_m_rows, reg_m_cols, tau):
        dtype, device = torch.float64, row_mask.device
        self.row_invalid, self.col_invalid = ~row_mask, ~col_mask
        self.col_top = col_min_cost.to(dtype) / -reg  # −min_i C_ij/reg: column j of K is 0 when a + b + this is
        self.rho_rows, self.rho_cols = rho_rows, rho_cols
        # POT's exp(−α/(reg + reg_m)) in log u: −a · reg/(reg + reg_m)
        self.a_damping = 0.0 if math.isinf(reg_m_rows) else reg / (reg + reg_m_rows)
        self.b_damping = 0.0 if math.isinf(reg_m_cols) else reg / (reg + reg_m_cols)
        self.log_tau = math.log(tau)
        self.log_guard = torch.tensor(math.log(GUARD), dtype=dtype, device=device)  # POT's + 1e-16, in logs
        self.log_u = torch.zeros(row_mask.shape, dtype=dtype, device=device).masked_fill(self.row_invalid, -math.inf)
        self.log_v_reset = torch.zeros(col_mask.shape, dtype=dtype, device=device).masked_fill(
            self.col_invalid, -math.inf)  # v = 1 (POT's reset on absorption)
        self.log_v = self.log_v_reset
        self.a = torch.zeros(row_mask.shape[0], dtype=dtype, device=device)
        self.b = torch.zeros_like(self.a)

    @property
    def log_row_potential(self) -> torch.Tensor:
        """``[B, N]`` ``f/reg = α/reg + log u``."""
        return self.a[:, None] + self.log_u

    @property
    def log_col_potential(self) -> torch.Tensor:
        """``[B, M]`` ``g/reg = β/reg + log v``."""
        return self.b[:, None] + self.log_v

    def step(self, sums, active: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One POT iteration for the ``active`` pairs (others keep their state).

        Returns ``[B]`` bool ``(absorbing, numerical_error)``. A numerical error is POT's early exit (``Kᵀu``
        has a zero, or ``u``/``v`` overflow, in POT's float64): the pair keeps its previous ``u, v`` (and, as in
        POT, the absorbed ``α, β`` of this iteration) and stops unconverged.
        """
        # log K_ij = a + b − C_ij/reg:  log(K v + 1e-16) = logaddexp(a + b + LSE_j(log v_j − C_ij/reg), log 1e-16)
        ab = (self.a + self.b)[:, None]
        log_kv = torch.logaddexp(sums.rows(self.log_v).add_(ab), self.log_guard)
        log_u = log_kv.mul_(-self.rho_rows).sub_(self.a[:, None] * self.a_damping).masked_fill_(
            self.row_invalid, -math.inf)
        log_ktu_raw = sums.cols(log_u).add_(ab)
        log_v = torch.logaddexp(log_ktu_raw, self.log_guard).mul_(-self.rho_cols).sub_(
            self.b[:, None] * self.b_damping).masked_fill_(self.col_invalid, -math.inf)
        max_log_u, max_log_v = log_u.amax(dim=1), log_v.amax(dim=1)
        top = torch.maximum(max_log_u, max_log_v)  # NaN if any u or v is NaN
        absorbing = active & (top > self.log_tau)
        overflow = ~(top <= LOG_FP64_HUGE)
        # Kᵀu has a zero on a valid column: its sum underflows, or its whole kernel column does
        zero_ktu = torch.minimum(log_ktu_raw, self.col_top + ab).masked_fill_(self.col_invalid, math.inf).amin(
            dim=1) < LOG_FP64_TINY
        numerical_error = active & (zero_ktu | overflow)
        a = torch.where(absorbing, self.a + max_log_u, self.a)
        b = torch.where(absorbing, self.b + max_log_v, self.b)
        log_v = torch.where(absorbing[:, None], self.log_v_reset, log_v)
        keep = (active & ~numerical_error)[:, None]
        self.log_u = torch.where(keep, log_u, self.log_u)
        self.log_v = torch.where(keep, log_v, self.log_v)
        self.a, self.b = torch.where(active, a, self.a), torch.where(active, b, self.b)
        return absorbing, numerical_error

    def relative_change(self, log_u_prev: torch.Tensor) -> torch.Tensor:
        """POT's ``max|u − u_prev| / max(max u, max u_prev, 1)`` ``[B]``, computed after dividing by that scale."""
        log_scale = torch.maximum(torch.maximum(self.log_u.amax(dim=1), log_u_prev.amax(dim=1)),
                                  torch.zeros_like(self.a))[:, None]
        return ((self.log_u - log_scale).exp() - (log_u_prev - log_scale).exp()).abs().amax(dim=1)

    def log_masses(self, sums) -> tuple[torch.Tensor, torch.Tensor]:
        """fp64 ``log`` row and column sums of ``Γ = exp((f_i + g_j − C_ij)/reg)``, −inf on masked entries."""
        ab = (self.a + self.b)[:, None]
        rows = (sums.rows(self.log_v) + ab + self.log_u).masked_fill(self.row_invalid, -math.inf)
        cols = (sums.cols(self.log_u) + ab + self.log_v).masked_fill(self.col_invalid, -math.inf)
        return rows, cols


class _KernelSums:
    """The two masked log-sum-exps by mat-vecs with the kernel ``exp(−C/reg)`` ``[B, N, M]`` (0 off the masks)."""

    def __init__(self, cost: torch.Tensor, valid: torch.Tensor, reg: float):
        self.dtype, self.reg = cost.dtype, reg
        self.kernel = cost.mul(-1.0 / reg).exp_().masked_fill_(~valid, 0.0)

    def inexact(self) -> None:
        """Not watched: "auto" picks this form only while max C / reg ≤ MAX_SCALING_EXPONENT."""
        return None

    def rows(self, log_v: torch.Tensor) -> torch.Tensor:
        """``[B, N]`` fp64 ``LSE_j(log_v_j − C_ij/reg)`` for ``log_v`` ``[B, M]`` (a new tensor)."""
        weights, shift = _scaled_weights(log_v, self.dtype)
        # [1, M] × [M, N] with Kᵀ a transposed view: BLAS reads K row by row (bmm(K, w[:, :, None]) is ~10× slower)
        return torch.bmm(weights[:, None, :], self.kernel.transpose(1, 2))[:, 0, :].double().log_().add_(shift)

    def cols(self, log_u: torch.Tensor) -> torch.Tensor:
        """``[B, M]`` fp64 ``LSE_i(log_u_i − C_ij/reg)`` for ``log_u`` ``[B, N]`` (a new tensor)."""
        weights, shift = _scaled_weights(log_u, self.dtype)
        return torch.bmm(weights[:, None, :], self.kernel)[:, 0, :].double().log_().add_(shift)

    def total(self) -> torch.Tensor:
        """``[B]`` the kernel's sum (NaN or inf when a valid cost is NaN or −inf)."""
        return self.kernel.sum(dim=(1, 2))

    def col_min_cost(self) -> torch.Tensor:
        """``[B, M]`` the smallest valid cost of each column (inf for a masked column)."""
        return self.kernel.amax(dim=1).double().log().mul(-self.reg)

    def plan(self, log_row: torch.Tensor, log_col: torch.Tensor) -> torch.Tensor:
        """``[B, N, M]`` ``Γ = exp(f_i/reg) K_ij exp(g_j/reg)`` from ``log_row = f/reg``, ``log_col = g/reg``."""
        row, row_shift = _scaled_weights(log_row, self.dtype)
        col = (log_col + row_shift).exp().to(self.dtype)
        return row[:, :, None] * self.kernel * col[:, None, :]


class _StabilisedKernelSums:
    """The two masked log-sum-exps by mat-vecs with a row- and a column-stabilised kernel ``[B, N, M]``::

        LSE_j(o_j − C_ij/reg) = −r_i/reg + log Σ_j exp(o_j) · exp(−(C_ij − r_i)/reg),   r_i = min_j C_ij

    (and the same per column with ``c_j = min_i C_ij``). Each kernel is ``≤ 1`` with a 1 in every row (column),
    and the weights ``exp(o_j)`` are ``≤ 1``, so a term lost to fp32 underflow is below 1.2e-38 and a sum loses
    at most ``M · 1.2e-38`` of itself. The smallest sum of every row and column is kept (one ``minimum`` per
    mat-vec); :meth:`inexact` ``[B]`` flags a pair where one with a finite cost fell below
    :data:`MIN_STABLE_SUM` (read with the solver's checks, which then rerun the solve in the exact form
    :class:`_LogSums`). Two mat-vecs per iteration instead of two ``[B, N, M]`` exps.
    """

    def __init__(self, cost: torch.Tensor, valid: torch.Tensor, reg: float):
        self.dtype, self.reg = cost.dtype, reg
        log_kernel = cost.mul(-1.0 / reg).masked_fill_(~valid, -math.inf)
        row_top, col_top = log_kernel.amax(dim=2), log_kernel.amax(dim=1)
        # rows / columns with a finite entry (the valid ones, unless all their costs are +inf)
        self.row_watched, self.col_watched = row_top > -math.inf, col_top > -math.inf
        self.col_min = col_top.double().mul(-reg)  # [B, M] c_j (inf for a masked column)
        row_top, col_top = _no_minus_inf(row_top), _no_minus_inf(col_top)  # −r_i/reg, −c_j/reg
        self.row_kernel = torch.sub(log_kernel, row_top[:, :, None]).exp_()
        self.col_kernel = log_kernel.sub_(col_top[:, None, :]).exp_()
        self.row_top, self.col_top = row_top.double(), col_top.double()
        # pairs with a NaN or −inf cost are invalid (see total()): their sums are not watched
        self.watched = torch.isfinite(self.total())
        self.smallest_rows = torch.full(row_top.shape, math.inf, dtype=self.dtype, device=cost.device)
        self.smallest_cols = torch.full(col_top.shape, math.inf, dtype=self.dtype, device=cost.device)

    def inexact(self) -> torch.Tensor:
        """``[B]`` bool: a watched pair had a row or column sum below :data:`MIN_STABLE_SUM` (or NaN)."""
        bad = [((smallest < MIN_STABLE_SUM) & watched).any(dim=1) | smallest.isnan().any(dim=1)
               for smallest, watched in ((self.smallest_rows, self.row_watched),
                                         (self.smallest_cols, self.col_watched))]
        return (bad[0] | bad[1]) & self.watched

    def rows(self, log_v: torch.Tensor) -> torch.Tensor:
        """``[B, N]`` fp64 ``LSE_j(log_v_j − C_ij/reg)`` for ``log_v`` ``[B, M]`` (a new tensor)."""
        weights, shift = _scaled_weights(log_v, self.dtype)
        sums = torch.bmm(weights[:, None, :], self.row_kernel.transpose(1, 2))[:, 0, :]
        torch.minimum(self.smallest_rows, sums, out=self.smallest_rows)
        return sums.double().log_().add_(shift).add_(self.row_top)

    def cols(self, log_u: torch.Tensor) -> torch.Tensor:
        """``[B, M]`` fp64 ``LSE_i(log_u_i − C_ij/reg)`` for ``log_u`` ``[B, N]`` (a new tensor)."""
        weights, shift = _scaled_weights(log_u, self.dtype)
        sums = torch.bmm(weights[:, None, :], self.col_kernel)[:, 0, :]
        torch.minimum(self.smallest_cols, sums, out=self.smallest_cols)
        return sums.double().log_().add_(shift).add_(self.col_top)

    def total(self) -> torch.Tensor:
        """``[B]`` the sum of the rows' largest ``−C/reg`` (NaN or inf when a valid cost is NaN or −inf)."""
        return self.row_top.sum(dim=1)

    def col_min_cost(self) -> torch.Tensor:
        """``[B, M]`` the smallest valid cost of each column (inf for a masked column)."""
        return self.col_min


MIN_STABLE_SUM = 1e-25
"""Below this, a stabilised kernel sum (``≥`` its largest term) may have lost more than ``4096 · 1.2e-38 / 1e-25``
≈ 5e-10 of itself to fp32 underflow: :class:`_StabilisedKernelSums` flags it."""


def _no_minus_inf(values: torch.Tensor) -> torch.Tensor:
    """``values`` with −inf (a row or column without a finite entry) replaced by 0; NaN and +inf are kept."""
    return torch.where(values == -math.inf, torch.zeros_like(values), values)


def _scaled_weights(log_potential: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``(exp(p − s) in dtype, s [B, 1])`` for fp64 ``p`` ``[B, K]``, ``s`` its largest finite entry per pair (the
    weights are ≤ 1; a pair without one gets ``s = 0``)."""
    shift = log_potential.amax(dim=1, keepdim=True).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
    return (log_potential - shift).to(dtype).exp_(), shift


class _LogSums:
    """The two masked log-sum-exps over ``−C/reg`` ``[B, N, M]`` (−inf off the masks), in one reused buffer."""

    def __init__(self, cost: torch.Tensor, valid: torch.Tensor, reg: float):
        self.dtype, self.reg = cost.dtype, reg
        self.log_kernel = cost.mul(-1.0 / reg).masked_fill_(~valid, -math.inf)
        self.buffer = torch.empty_like(self.log_kernel)

    def inexact(self) -> None:
        """Exact: nothing to flag."""
        return None

    def _lse(self, log_potential: torch.Tensor, dim: int) -> torch.Tensor:
        offset, shift = _scaled_log_weights(log_potential, self.dtype)
        offset = offset[:, None, :] if dim == 2 else offset[:, :, None]
        buffer = torch.add(self.log_kernel, offset, out=self.buffer)
        top = buffer.amax(dim=dim, keepdim=True).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
        total = buffer.sub_(top).exp_().sum(dim=dim)
        return total.double().log_().add_(top.squeeze(dim).double()).add_(shift)

    def rows(self, log_v: torch.Tensor) -> torch.Tensor:
        """``[B, N]`` fp64 ``LSE_j(log_v_j − C_ij/reg)`` for ``log_v`` ``[B, M]`` (a new tensor)."""
        return self._lse(log_v, dim=2)

    def cols(self, log_u: torch.Tensor) -> torch.Tensor:
        """``[B, M]`` fp64 ``LSE_i(log_u_i − C_ij/reg)`` for ``log_u`` ``[B, N]`` (a new tensor)."""
        return self._lse(log_u, dim=1)

    def total(self) -> torch.Tensor:
        """``[B]`` the sum of the finite ``−C/reg`` (NaN or inf when a valid cost is NaN or −inf)."""
        return torch.where(self.log_kernel == -math.inf, 0.0, self.log_kernel).sum(dim=(1, 2))

    def col_min_cost(self) -> torch.Tensor:
        """``[B, M]`` the smallest valid cost of each column (inf for a masked column)."""
        return self.log_kernel.amax(dim=1).double().mul(-self.reg)

    def plan(self, log_row: torch.Tensor, log_col: torch.Tensor) -> torch.Tensor:
        """``[B, N, M]`` ``Γ = exp(f_i/reg + g_j/reg − C_ij/reg)``, 0 off the masks."""
        row, shift = _scaled_log_weights(log_row, self.dtype)
        col = (log_col + shift).to(self.dtype)
        return (self.log_kernel + row[:, :, None] + col[:, None, :]).exp_()


def _scaled_log_weights(log_potential: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``(p − s in dtype, s [B, 1])``: the logs of :func:`_scaled_weights`."""
    shift = log_potential.amax(dim=1, keepdim=True).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
    return (log_potential - shift).to(dtype), shift


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
    """Raise on a pair without valid rows or columns or with a non-finite valid cost (one host read).

    ``masked_cost`` ``[B, N, M]`` is 0 on invalid entries. Returns ``max|C|`` over the valid entries.
    """
    largest = masked_cost.abs().amax(dim=(1, 2))  # NaN propagates
    empty_rows, empty_cols, largest = torch.stack([
        (~row_mask.any(dim=1)).to(largest.dtype), (~col_mask.any(dim=1)).to(largest.dtype), largest]).tolist()
    problems = (("no valid row", empty_rows), ("no valid column", empty_cols),
                ("a non-finite cost", [not math.isfinite(value) for value in largest]))
    for name, flags in problems:
        pairs = [b for b, flag in enumerate(flags) if flag]
        if pairs:
            raise ValueError(f"unbalanced_sinkhorn: pairs {pairs} have {name}")
    return max(largest)
