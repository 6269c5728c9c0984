"""OTPO weights against the official per-pair algorithm (POT on the full padded matrix, float64)."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from otpo_oracles import log_domain_unbalanced, normalised_cost, official_otpo_weights
import tokenweight.weights.otpo.cost as cost_module
from tokenweight.weights.otpo import otpo_cost, otpo_weights

HIDDEN = 32
baddbmm = torch.baddbmm
LENGTHS = [(23, 17), (8, 30), (30, 30), (12, 5)]  # (chosen, rejected) response tokens per pair


def random_pairs(seed=0, lengths=LENGTHS, scale=1.0, shared=3.0):
    """Post-norm-like states: a shared direction plus noise, norms ≫ 1; NaN garbage at padding positions.

    Returns ``(chosen [B, N, d], rejected [B, M, d], chosen_mask [B, N], rejected_mask [B, M])``.
    """
    generator = torch.Generator().manual_seed(seed)
    batch, n, m = len(lengths), max(c for c, _ in lengths), max(r for _, r in lengths)
    common = shared * torch.randn(batch, 1, HIDDEN, generator=generator)
    chosen = scale * (common + torch.randn(batch, n, HIDDEN, generator=generator))
    rejected = scale * (common + torch.randn(batch, m, HIDDEN, generator=generator))
    chosen_mask = torch.arange(n)[None, :] < torch.tensor([c for c, _ in lengths])[:, None]
    rejected_mask = torch.arange(m)[None, :] < torch.tensor([r for _, r in lengths])[:, None]
    chosen = chosen.masked_fill(~chosen_mask[:, :, None], math.nan)
    rejected = rejected.masked_fill(~rejected_mask[:, :, None], math.nan)
    return chosen, rejected, chosen_mask, rejected_mask


def official(chosen, rejected, chosen_mask, rejected_mask, reg, reg_m):
    """Per-pair official weights: lists of float64 arrays and POT iteration counts."""
    results = [official_otpo_weights(chosen[b][chosen_mask[b]].double().numpy(),
                                     rejected[b][rejected_mask[b]].double().numpy(), reg, reg_m)
               for b in range(chosen.shape[0])]
    return [r[0] for r in results], [r[1] for r in results], [r[2] for r in results]


def assert_matches_official(chosen, rejected, chosen_mask, rejected_mask, reg, reg_m, rtol=1e-5):
    w_c, w_r, stats = otpo_weights(chosen, rejected, chosen_mask, rejected_mask, reg=reg, reg_m=reg_m, log=True)
    ref_c, ref_r, ref_iterations = official(chosen, rejected, chosen_mask, rejected_mask, reg, reg_m)
    for b in range(chosen.shape[0]):
        np.testing.assert_allclose(w_c[b][chosen_mask[b]].double().numpy(), ref_c[b], rtol=rtol)
        np.testing.assert_allclose(w_r[b][rejected_mask[b]].double().numpy(), ref_r[b], rtol=rtol)
    assert (w_c[~chosen_mask] == 0).all() and (w_r[~rejected_mask] == 0).all()
    budget = torch.minimum(chosen_mask.sum(1), rejected_mask.sum(1)).float()
    torch.testing.assert_close(w_c.sum(1), budget, rtol=1e-5, atol=0)
    torch.testing.assert_close(w_r.sum(1), budget, rtol=1e-5, atol=0)
    return stats, ref_iterations


@pytest.mark.parametrize("reg", [1.0, 0.1])
@pytest.mark.parametrize("reg_m", [0.2, (0.2, 0.5)])
def test_matches_official_pot(reg, reg_m):
    stats, ref_iterations = assert_matches_official(*random_pairs(), reg=reg, reg_m=reg_m)
    assert stats["converged"].all()
    assert all(abs(ours - pot) <= 10 for ours, pot in zip(stats["iterations"].tolist(), ref_iterations))


def test_official_iteration_counts_and_mass_scale():
    pairs = random_pairs(seed=1)
    for reg, expected_iterations in ((1.0, 11), (0.1, 21)):
        stats, ref_iterations = assert_matches_official(*pairs, reg=reg, reg_m=0.2)
        assert stats["iterations"].tolist() == ref_iterations == [expected_iterations] * len(LENGTHS)
        assert (stats["mass_scale"] > 0).all()


def test_normaliser_branches():
    # shared=10: the normaliser is a hidden-state norm (larger than every distance); shared=0: a distance
    for shared in (10.0, 0.0):
        chosen, rejected, chosen_mask, rejected_mask = random_pairs(seed=2, shared=shared)
        c, r = chosen[0][chosen_mask[0]], rejected[0][rejected_mask[0]]
        norms_win = max(c.norm(dim=1).max(), r.norm(dim=1).max()) > torch.cdist(c, r).max()
        assert norms_win == (shared > 0)
        assert_matches_official(chosen, rejected, chosen_mask, rejected_mask, reg=1.0, reg_m=0.2)
    # tiny states: D < 1, the cost is not divided
    pairs = random_pairs(seed=3, scale=0.005)
    assert otpo_cost(*pairs).masked_fill(~(pairs[2][:, :, None] & pairs[3][:, None, :]), 0).max() < 1
    assert_matches_official(*pairs, reg=0.1, reg_m=0.2)


def test_very_large_norms_stay_finite_and_correct():
    assert_matches_official(*random_pairs(seed=4, scale=1e4), reg=0.1, reg_m=0.2)


def test_small_reg_matches_float64_log_domain_reference():
    chosen, rejected, chosen_mask, rejected_mask = random_pairs(seed=5)
    w_c, w_r, stats = otpo_weights(chosen, rejected, chosen_mask, rejected_mask, reg=0.01, reg_m=0.2, log=True)
    assert torch.isfinite(w_c).all() and torch.isfinite(w_r).all() and stats["converged"].all()
    for b in range(len(LENGTHS)):
        cost = normalised_cost(chosen[b][chosen_mask[b]].double().numpy(),
                               rejected[b][rejected_mask[b]].double().numpy())
        rows, cols, _ = log_domain_unbalanced(cost, 0.01, 0.2, 0.2)
        scale = min(cost.shape) / rows.sum()
        np.testing.assert_allclose(w_c[b][chosen_mask[b]].double().numpy(), rows * scale, rtol=2e-5)
        np.testing.assert_allclose(w_r[b][rejected_mask[b]].double().numpy(), cols * scale, rtol=2e-5)


def test_one_token_response():
    chosen, rejected, chosen_mask, rejected_mask = random_pairs(seed=6, lengths=[(1, 9), (7, 1), (1, 1)])
    w_c, w_r = otpo_weights(chosen, rejected, chosen_mask, rejected_mask)
    assert w_c[0, 0].item() == pytest.approx(1.0, rel=1e-6) and w_r[0].sum().item() == pytest.approx(1.0, rel=1e-6)
    assert w_r[1, 0].item() == pytest.approx(1.0, rel=1e-6) and w_c[1].sum().item() == pytest.approx(1.0, rel=1e-6)
    assert w_c[2, 0].item() == pytest.approx(1.0, rel=1e-6) and w_r[2, 0].item() == pytest.approx(1.0, rel=1e-6)
    assert_matches_official(chosen, rejected, chosen_mask, rejected_mask, reg=1.0, reg_m=0.2)


def test_identical_chosen_and_rejected():
    # a strong common component, as in real final hidden states: the zero distances are then computed accurately
    chosen, _, chosen_mask, _ = random_pairs(seed=7, lengths=[(40, 40), (6, 6)], shared=30.0)
    w_c, w_r = otpo_weights(chosen, chosen.clone(), chosen_mask, chosen_mask.clone(), reg=0.1)
    torch.testing.assert_close(w_c, w_r, rtol=1e-6, atol=0)  # symmetric plan
    torch.testing.assert_close(w_c.sum(1), chosen_mask.sum(1).float(), rtol=1e-5, atol=0)
    assert w_c[0, :40].std() > 0  # not uniform in general
    for b, n in enumerate((40, 6)):
        states = chosen[b, :n].double().numpy()
        ref_c, ref_r, _ = official_otpo_weights(states, states, 0.1, 0.2)
        np.testing.assert_allclose(w_c[b, :n].double().numpy(), ref_c, rtol=1e-5)


def test_bf16_states_are_upcast():
    chosen, rejected, chosen_mask, rejected_mask = random_pairs(seed=8)
    w_c, _ = otpo_weights(chosen.bfloat16(), rejected.bfloat16(), chosen_mask, rejected_mask)
    assert w_c.dtype == torch.float32
    ref_c, _, _ = official(chosen.bfloat16().float(), rejected.bfloat16().float(), chosen_mask, rejected_mask, 1.0, 0.2)
    np.testing.assert_allclose(w_c[0][chosen_mask[0]].double().numpy(), ref_c[0], rtol=1e-5)


def test_errors_name_the_row():
    chosen, rejected, chosen_mask, rejected_mask = random_pairs(seed=9)
    bad = rejected.clone()
    bad[2, 3, 0] = math.nan
    with pytest.raises(ValueError, match=r"non-finite rejected hidden state in batch rows \[2\]"):
        otpo_weights(chosen, bad, chosen_mask, rejected_mask)
    bad = chosen.clone()
    bad[1, 0, 5] = math.inf
    with pytest.raises(ValueError, match=r"non-finite chosen hidden state in batch rows \[1\]"):
        otpo_weights(bad, rejected, chosen_mask, rejected_mask)
    empty = chosen_mask.clone()
    empty[3] = False
    with pytest.raises(ValueError, match=r"empty chosen response in batch rows \[3\]"):
        otpo_weights(chosen, rejected, empty, rejected_mask)
    with pytest.raises(TypeError, match="bool"):
        otpo_weights(chosen, rejected, chosen_mask.float(), rejected_mask)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("reg", [1.0, 0.1])
@pytest.mark.parametrize("prefix", [1, 5, 30])
def test_shared_prefix_states_match_float64_oracle(prefix, reg, dtype):
    """Chat templates make the first response states of chosen and rejected identical (the assistant header):
    their exact zero distances must not come out of the matmul form as ~sqrt(eps)·‖h‖ (issue 10 item 2)."""
    chosen, rejected, chosen_mask, rejected_mask = random_pairs(seed=12, lengths=[(40, 35), (31, 45)], shared=3.0)
    rejected[:, :prefix] = chosen[:, :prefix]
    chosen, rejected = chosen.to(dtype), rejected.to(dtype)
    w_c, w_r = otpo_weights(chosen, rejected, chosen_mask, rejected_mask, reg=reg, reg_m=0.2)
    ref_c, ref_r, _ = official(chosen.float(), rejected.float(), chosen_mask, rejected_mask, reg, 0.2)
    for b in range(2):
        np.testing.assert_allclose(w_c[b][chosen_mask[b]].double().numpy(), ref_c[b], rtol=1e-5)
        np.testing.assert_allclose(w_r[b][rejected_mask[b]].double().numpy(), ref_r[b], rtol=1e-5)


def test_ieee_matmul_guard_works_without_fp32_precision(monkeypatch):
    """PyTorch < 2.9 has no ``torch.backends.cuda.matmul.fp32_precision`` (pyproject allows torch ≥ 2.2)."""
    old_backend = SimpleNamespace(allow_tf32=True)
    monkeypatch.setattr(torch.backends.cuda, "matmul", old_backend)
    chosen, rejected, chosen_mask, rejected_mask = random_pairs(seed=13)
    seen = []
    monkeypatch.setattr(torch, "baddbmm", lambda *a, **k: seen.append(old_backend.allow_tf32) or baddbmm(*a, **k))
    otpo_cost(chosen, rejected, chosen_mask, rejected_mask)
    assert seen == [False] and old_backend.allow_tf32 is True


def test_chunks_of_pairs_and_unpacked_states_give_the_packed_cost(monkeypatch):
    """Pairs are processed in chunks (one pair each with a 1-byte budget) and states may be gathered from unpacked
    rows by ``positions``: neither may change a valid cost, and states off the masks (NaN here) are never read."""
    chosen, rejected, chosen_mask, rejected_mask = random_pairs(seed=14)
    valid = chosen_mask[:, :, None] & rejected_mask[:, None, :]
    whole = otpo_cost(chosen, rejected, chosen_mask, rejected_mask)
    assert torch.isfinite(whole[valid]).all()
    monkeypatch.setattr(cost_module, "CHUNK_BYTES", 1)
    chunked = otpo_cost(chosen, rejected, chosen_mask, rejected_mask)
    torch.testing.assert_close(chunked[valid], whole[valid], rtol=1e-6, atol=0)
    generator = torch.Generator().manual_seed(15)
    unpacked, positions = [], []
    for states in (chosen, rejected):
        batch, width, hidden = states.shape
        spread = torch.full((batch, 2 * width + 3, hidden), math.nan)  # the rows at random positions, NaN elsewhere
        order = torch.stack([torch.randperm(2 * width + 3, generator=generator)[:width] for _ in range(batch)])
        spread[torch.arange(batch)[:, None], order] = states
        unpacked.append(spread)
        positions.append(order)
    gathered = otpo_cost(*unpacked, chosen_mask, rejected_mask, chosen_positions=positions[0],
                         rejected_positions=positions[1])
    torch.testing.assert_close(gathered[valid], whole[valid], rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="chosen mask"):
        otpo_cost(*unpacked, chosen_mask, rejected_mask, chosen_positions=positions[0][:, :-1],
                  rejected_positions=positions[1])


def test_empty_response_over_nan_states_is_reported_as_empty_only():
    chosen, rejected, chosen_mask, rejected_mask = random_pairs(seed=16)
    chosen_mask = chosen_mask.clone()
    chosen_mask[1] = False  # its states stay finite, but the slots of an empty response read garbage
    chosen = chosen.clone()
    chosen[1] = math.nan
    with pytest.raises(ValueError, match=r"^OTPO weights: empty chosen response in batch rows \[1\]$"):
        otpo_weights(chosen, rejected, chosen_mask, rejected_mask)
