"""The batched unbalanced Sinkhorn against POT's stabilized solver and a float64 log-domain reference."""

import math

import numpy as np
import pytest
import torch

from otpo_oracles import log_domain_unbalanced, pot_unbalanced
from tokenweight.weights.otpo import otpo_cost
from tokenweight.weights.otpo.sinkhorn import mass_exponents, unbalanced_sinkhorn

LENGTHS = [(17, 12), (9, 20), (20, 20), (1, 6)]  # (rows, columns) valid per pair


def random_problem(seed: int = 0, lengths=LENGTHS):
    """Costs in (0, 1] ``[B, 20, 20]`` with left-aligned valid blocks of the given sizes (garbage elsewhere)."""
    generator = torch.Generator().manual_seed(seed)
    batch, n, m = len(lengths), max(r for r, _ in lengths), max(c for _, c in lengths)
    cost = torch.rand(batch, n, m, generator=generator) * 0.9 + 0.05
    row_mask = torch.arange(n)[None, :] < torch.tensor([r for r, _ in lengths])[:, None]
    col_mask = torch.arange(m)[None, :] < torch.tensor([c for _, c in lengths])[:, None]
    cost = cost.masked_fill(~(row_mask[:, :, None] & col_mask[:, None, :]), 123.0)
    return cost, row_mask, col_mask


def pot_masses(cost, row_mask, col_mask, reg, reg_m):
    """POT on each pair's valid block, float64: ([row masses], [column masses], [iterations])."""
    rows, cols, iterations = [], [], []
    for b in range(cost.shape[0]):
        n, m = int(row_mask[b].sum()), int(col_mask[b].sum())
        plan, count, _ = pot_unbalanced(cost[b, :n, :m].double().numpy(), np.ones(n), np.ones(m), reg, reg_m)
        rows.append(plan.sum(1))
        cols.append(plan.sum(0))
        iterations.append(count)
    return rows, cols, iterations


def relative_difference(ours: torch.Tensor, reference: np.ndarray) -> float:
    """``max |ours − reference| / max |reference|`` (the relative difference every OTPO table reports)."""
    return float(np.abs(ours.double().numpy() - reference).max() / np.abs(reference).max())


def assert_masses_close(result, rows, cols, row_mask, col_mask, rtol):
    for b, (row, col) in enumerate(zip(rows, cols)):
        n, m = len(row), len(col)
        np.testing.assert_allclose(result.row_mass[b, :n].double().numpy(), row, rtol=rtol)
        np.testing.assert_allclose(result.col_mass[b, :m].double().numpy(), col, rtol=rtol)
        assert result.total_mass[b].item() == pytest.approx(row.sum(), rel=rtol)
    assert (result.row_mass[~row_mask] == 0).all() and (result.col_mass[~col_mask] == 0).all()


@pytest.mark.parametrize("method", ["auto", "log"])
@pytest.mark.parametrize("reg", [1.0, 0.1])
@pytest.mark.parametrize("reg_m", [0.2, (0.2, 0.7), (float("inf"), 0.3)])
def test_matches_pot(method, reg, reg_m):
    cost, row_mask, col_mask = random_problem()
    result = unbalanced_sinkhorn(cost, row_mask, col_mask, reg=reg, reg_m=reg_m, method=method)
    rows, cols, iterations = pot_masses(cost, row_mask, col_mask, reg, reg_m)
    assert result.method == ("scaling" if method == "auto" else "log")
    assert_masses_close(result, rows, cols, row_mask, col_mask, rtol=1e-5)
    assert result.converged.all()
    assert all(abs(ours - pot) <= 10 for ours, pot in zip(result.iterations.tolist(), iterations))


def test_iteration_counts_equal_pot_at_official_settings():
    cost, row_mask, col_mask = random_problem(seed=1)
    for reg in (1.0, 0.1):
        result = unbalanced_sinkhorn(cost, row_mask, col_mask, reg=reg, reg_m=0.2)
        assert result.iterations.tolist() == pot_masses(cost, row_mask, col_mask, reg, 0.2)[2]


def test_small_reg_follows_pot_and_reports_its_non_convergence_truthfully():
    # reg 0.01 on costs up to 0.95: the log form; POT's absorptions (v ← 1) make pairs 1 and 3 cycle until
    # numItermax, so they must come out unconverged, with POT's values, and the others converged
    cost, row_mask, col_mask = random_problem(seed=2)
    result = unbalanced_sinkhorn(cost, row_mask, col_mask, reg=0.01, reg_m=0.2)
    assert result.method == "log"
    rows, cols, iterations = pot_masses(cost, row_mask, col_mask, 0.01, 0.2)
    assert iterations == [131, 1000, 101, 1000] == result.iterations.tolist()
    assert result.converged.tolist() == [True, False, True, False]
    for b, (row, col) in enumerate(zip(rows, cols)):
        n, m = len(row), len(col)
        assert relative_difference(result.row_mass[b, :n], row) <= 1e-5
        assert relative_difference(result.col_mass[b, :m], col) <= 1e-5
    # where POT converged it agrees with a plain float64 log-domain Sinkhorn
    for b in (0, 2):
        n, m = LENGTHS[b]
        reference, _, _ = log_domain_unbalanced(cost[b, :n, :m].double().numpy(), 0.01, 0.2, 0.2)
        assert relative_difference(result.row_mass[b, :n], reference) <= 5e-5  # POT stops ~1e-5 short of it


def test_scaling_and_log_forms_agree_and_pairs_freeze_independently():
    cost, row_mask, col_mask = random_problem(seed=3)
    # with a loose mass constraint the pairs stop at different iterations (131 or 141, 71, 101, 21)
    scaling = unbalanced_sinkhorn(cost, row_mask, col_mask, reg=0.1, reg_m=2.0, method="scaling")
    log = unbalanced_sinkhorn(cost, row_mask, col_mask, reg=0.1, reg_m=2.0, method="log")
    torch.testing.assert_close(scaling.row_mass, log.row_mass, rtol=2e-6, atol=0)
    assert (scaling.iterations - log.iterations).abs().max() <= 10  # fp32 rounding near the threshold
    assert len(set(scaling.iterations.tolist())) == len(LENGTHS)
    # each pair solved alone stops after the same iterations and gives the same masses as inside the batch
    for b in range(len(LENGTHS)):
        alone = unbalanced_sinkhorn(cost[b:b + 1], row_mask[b:b + 1], col_mask[b:b + 1], reg=0.1, reg_m=2.0)
        assert alone.iterations.item() == scaling.iterations[b].item()
        torch.testing.assert_close(alone.row_mass[0], scaling.row_mass[b], rtol=1e-6, atol=0)


def test_plan_is_consistent_with_masses():
    cost, row_mask, col_mask = random_problem(seed=4)
    for method in ("scaling", "log"):
        result = unbalanced_sinkhorn(cost, row_mask, col_mask, reg=0.5, reg_m=0.2, method=method, return_plan=True)
        valid = row_mask[:, :, None] & col_mask[:, None, :]
        assert (result.plan[~valid] == 0).all()
        torch.testing.assert_close(result.plan.sum(2), result.row_mass, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(result.plan.sum(1), result.col_mass, rtol=1e-5, atol=1e-7)


def test_dtypes():
    cost, row_mask, col_mask = random_problem(seed=5)
    assert unbalanced_sinkhorn(cost.bfloat16(), row_mask, col_mask, 1.0, 0.2).row_mass.dtype == torch.float32
    result64 = unbalanced_sinkhorn(cost.double(), row_mask, col_mask, 1.0, 0.2)
    assert result64.row_mass.dtype == torch.float64
    rows, _, _ = pot_masses(cost, row_mask, col_mask, 1.0, 0.2)
    np.testing.assert_allclose(result64.row_mass[0, :17].numpy(), rows[0], rtol=1e-9)


def test_automatic_form_follows_the_cost_range():
    cost, row_mask, col_mask = random_problem(seed=6)
    assert unbalanced_sinkhorn(cost * 10, row_mask, col_mask, reg=1.0, reg_m=0.2).method == "scaling"
    assert unbalanced_sinkhorn(cost * 60, row_mask, col_mask, reg=1.0, reg_m=0.2).method == "log"
    with pytest.raises(ValueError, match="method='log'"):
        unbalanced_sinkhorn(cost * 100, row_mask, col_mask, reg=1.0, reg_m=0.2, method="scaling")


def test_errors_name_the_pair():
    cost, row_mask, col_mask = random_problem(seed=7)
    empty = row_mask.clone()
    empty[2] = False
    with pytest.raises(ValueError, match=r"pairs \[2\] have no valid row"):
        unbalanced_sinkhorn(cost, empty, col_mask, 1.0, 0.2)
    nan_cost = cost.clone()
    nan_cost[1, 0, 0] = math.nan
    with pytest.raises(ValueError, match=r"pairs \[1\] have a non-finite cost"):
        unbalanced_sinkhorn(nan_cost, row_mask, col_mask, 1.0, 0.2)
    nan_cost[1, 0, 0] = 0.5
    nan_cost[1, -1, -1] = math.nan  # outside pair 1's valid block: ignored
    unbalanced_sinkhorn(nan_cost, row_mask, col_mask, 1.0, 0.2)
    with pytest.raises(ValueError, match="reg_m"):
        mass_exponents(1.0, (0.1, 0.2, 0.3))
    with pytest.raises(ValueError, match="reg must"):
        mass_exponents(0.0, 0.2)


GRID_LENGTHS = [(7, 5), (4, 9)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ratio", [0.01, 1.0, 100.0, 1e4])
@pytest.mark.parametrize("reg", [0.01, 0.1, 1.0, 10.0])
def test_pot_oracle_grid(reg, ratio, dtype):
    """POT's values (≤ 1e-5 relative), convergence flags and iteration counts for reg_m/reg from 0.01 to 1e4."""
    cost, row_mask, col_mask = random_problem(seed=11, lengths=GRID_LENGTHS)
    reg_m, max_iter = reg * ratio, 300
    result = unbalanced_sinkhorn(cost.to(dtype), row_mask, col_mask, reg=reg, reg_m=reg_m, max_iter=max_iter)
    for b, (n, m) in enumerate(GRID_LENGTHS):
        plan, iterations, converged = pot_unbalanced(cost[b, :n, :m].double().numpy(), np.ones(n), np.ones(m), reg,
                                                     reg_m, max_iter=max_iter)
        assert relative_difference(result.row_mass[b, :n], plan.sum(1)) <= 1e-5
        assert relative_difference(result.col_mass[b, :m], plan.sum(0)) <= 1e-5
        assert result.converged[b].item() == converged
        if dtype == torch.float64:
            assert result.iterations[b].item() == iterations
        else:  # fp32 noise in the checked error can move a stop near the threshold by one check
            assert abs(result.iterations[b].item() - iterations) <= 10


def test_large_reg_m_over_reg_does_not_converge_falsely():
    # issue 10 item 1: the old scaling form froze u at Kv ≈ 1e-16 and reported "converged" after 131 iterations
    # with total mass 6.942; POT runs 691 iterations to 7.667
    g = torch.Generator().manual_seed(0)
    c = 3 * torch.randn(1, 1, 64, generator=g)
    hc, hr = c + torch.randn(1, 12, 64, generator=g), c + torch.randn(1, 5, 64, generator=g)
    mc, mr = torch.ones(1, 12, dtype=torch.bool), torch.ones(1, 5, dtype=torch.bool)
    cost = otpo_cost(hc, hr, mc, mr)
    plan, iterations, converged = pot_unbalanced(cost[0].double().numpy(), np.ones(12), np.ones(5), 0.1, 10.0)
    assert (iterations, converged) == (691, True) and plan.sum() == pytest.approx(7.667, abs=1e-3)
    for method in ("scaling", "log"):
        result = unbalanced_sinkhorn(cost, mc, mr, 0.1, 10.0, method=method)
        assert relative_difference(result.row_mass[0], plan.sum(1)) <= 1e-5
        assert result.total_mass.item() == pytest.approx(plan.sum(), rel=1e-5)
        assert result.converged.item() and abs(result.iterations.item() - 691) <= 10
        fp64 = unbalanced_sinkhorn(cost.double(), mc, mr, 0.1, 10.0, method=method)
        assert fp64.iterations.item() == 691


def test_small_reg_iterates_without_a_rerun_on_otpo_like_costs():
    # the log form's iterations use the stabilised kernels; on costs in (0.05, 0.95] no sum can underflow, so
    # the solve makes one read per check only (a rerun in the exact form would double them) and still equals POT
    cost, row_mask, col_mask = random_problem(seed=2)
    result = unbalanced_sinkhorn(cost, row_mask, col_mask, reg=0.01, reg_m=0.2, max_cost=1.0)
    assert result.method == "log" and result.iterations.tolist() == [131, 1000, 101, 1000]
    assert result.host_reads == 100 + 1  # checks at 0, 10, …, 990, and the read after iteration 999


def test_small_reg_reruns_exactly_when_a_stabilised_sum_underflows():
    # column 1 is far (cost 1) from both rows and column 0 is next to row 0: at reg 0.008, v_1 / v_0 reaches
    # ~e^120, so row 0's stabilised fp32 sum (terms e^-120 · 1 and 1 · e^-125) underflows to 0, where POT's fp64
    # sum does not; without the exact rerun the masses come out ~1e37 wrong after 2 iterations
    cost = torch.tensor([[[1e-4, 1.0], [1.0, 1.0]]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    plan, iterations, converged = pot_unbalanced(cost[0].double().numpy(), np.ones(2), np.ones(2), 0.008, 0.2)
    assert (iterations, converged) == (71, True)
    result = unbalanced_sinkhorn(cost, mask, mask, reg=0.008, reg_m=0.2, max_cost=1.0)
    assert result.method == "log"
    assert relative_difference(result.row_mass[0], plan.sum(1)) <= 1e-5
    assert relative_difference(result.col_mass[0], plan.sum(0)) <= 1e-5
    assert result.iterations.item() == 71 and result.converged.item()
    assert result.host_reads > 8  # 8 checks (0, 10, …, 70) of the exact run, plus the abandoned run's reads
