"""Independent float64 oracles for the OTPO tests: POT's stabilized solver and a tiny log-domain Sinkhorn."""

from __future__ import annotations

import warnings
from unittest import mock

import numpy as np
import ot
from ot.backend import NumpyBackend
from scipy.special import logsumexp


def pot_unbalanced(cost: np.ndarray, a: np.ndarray, b: np.ndarray, reg: float, reg_m,
                   max_iter: int = 1000, stop_thr: float = 1e-6) -> tuple[np.ndarray, int, bool]:
    """POT's plan ``[n, m]`` (float64), exactly as the official OTPO code calls the solver, the iterations it ran
    (counted from its mat-vecs: three ``nx.dot`` per iteration of ``sinkhorn_stabilized_unbalanced``) and whether
    it converged (its last checked error is at most ``stop_thr``)."""
    calls = []
    original = NumpyBackend.dot

    def counting_dot(self, x, y):
        calls.append(None)
        return original(self, x, y)

    with warnings.catch_warnings(), mock.patch.object(NumpyBackend, "dot", counting_dot):
        warnings.simplefilter("ignore")  # reg_type='entropy' always warns
        plan, log = ot.unbalanced.sinkhorn_unbalanced(a, b, cost, reg, reg_m, method="sinkhorn_stabilized",
                                                      reg_type="entropy", numItermax=max_iter, stopThr=stop_thr,
                                                      log=True)
    return plan, len(calls) // 3, bool(log["err"][-1] <= stop_thr)


def official_otpo_weights(chosen: np.ndarray, rejected: np.ndarray, reg: float, reg_m, prompt_len: int = 5,
                          extra_padding: int = 3) -> tuple[np.ndarray, np.ndarray, int]:
    """The official per-pair algorithm in float64: full padded matrix, zero vectors off the responses.

    ``chosen`` ``[n_c, d]`` and ``rejected`` ``[n_r, d]`` are the response states; they are placed after
    ``prompt_len`` prompt positions and padded to a common length. Returns the weights on the response tokens
    ``([n_c], [n_r])`` and POT's iteration count.
    """
    n_c, n_r, d = len(chosen), len(rejected), chosen.shape[1]
    length = prompt_len + max(n_c, n_r) + extra_padding
    full_c, full_r = np.zeros((length, d)), np.zeros((length, d))
    full_c[prompt_len:prompt_len + n_c] = chosen
    full_r[prompt_len:prompt_len + n_r] = rejected
    a, b = np.zeros(length), np.zeros(length)
    a[prompt_len:prompt_len + n_c] = 1.0
    b[prompt_len:prompt_len + n_r] = 1.0
    cost = np.sqrt(((full_c[:, None, :] - full_r[None, :, :]) ** 2).sum(-1)) + 1e-6
    normaliser = cost.max()
    if normaliser > 1:
        cost = cost / normaliser
    plan, iterations, _ = pot_unbalanced(cost, a, b, reg, reg_m)
    scale = plan.sum() / min(n_c, n_r)
    return (plan.sum(1)[prompt_len:prompt_len + n_c] / scale, plan.sum(0)[prompt_len:prompt_len + n_r] / scale,
            iterations)


def log_domain_unbalanced(cost: np.ndarray, reg: float, reg_m_rows: float, reg_m_cols: float,
                          stop_thr: float = 1e-6, max_iter: int = 5000) -> tuple[np.ndarray, np.ndarray, int]:
    """Float64 log-domain unbalanced Sinkhorn with unit marginals on a full ``[n, m]`` cost.

    Dual potentials ``f = reg·log u``, ``g = reg·log v``; POT's stopping rule (relative change of ``u``, checked
    every 10 iterations). Returns the row and column masses of the plan and the iteration count.
    """
    rho_rows, rho_cols = reg_m_rows / (reg_m_rows + reg), reg_m_cols / (reg_m_cols + reg)
    f, g = np.zeros(cost.shape[0]), np.zeros(cost.shape[1])
    for k in range(max_iter):
        f_new = -rho_rows * reg * logsumexp((g[None, :] - cost) / reg, axis=1)
        g = -rho_cols * reg * logsumexp((f_new[:, None] - cost) / reg, axis=0)
        converged = False
        if k % 10 == 0:
            top = max(f_new.max(), f.max(), 0.0) / reg
            converged = np.abs(np.exp(f_new / reg - top) - np.exp(f / reg - top)).max() <= stop_thr
        f = f_new
        if converged:
            break
    log_plan = (f[:, None] + g[None, :] - cost) / reg
    return np.exp(logsumexp(log_plan, axis=1)), np.exp(logsumexp(log_plan, axis=0)), k + 1


def normalised_cost(chosen: np.ndarray, rejected: np.ndarray) -> np.ndarray:
    """OTPO's cost on the response block alone, float64 (D from distances and norms)."""
    dist = np.sqrt(((chosen[:, None, :] - rejected[None, :, :]) ** 2).sum(-1))
    normaliser = max(dist.max(), np.linalg.norm(chosen, axis=1).max(), np.linalg.norm(rejected, axis=1).max()) + 1e-6
    return (dist + 1e-6) / normaliser if normaliser > 1 else dist + 1e-6
