"""TI-DPO triplet loss vs a naive per-pair loop: values and gradients of all three legs; zero at init; NaN."""

import pytest
import torch

from tidpo_oracles import naive_triplet
from tokenweight.weights.tidpo.triplet import left_align, triplet_loss


def test_left_align_matches_loop_and_is_differentiable():
    torch.manual_seed(0)
    values = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[0, 0, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 1, 0, 0]], dtype=torch.bool)
    aligned, lengths = left_align(values, mask)
    assert lengths.tolist() == [3, 6, 1] and aligned.shape == (3, 6)
    for r in range(3):
        torch.testing.assert_close(aligned[r, : lengths[r]], values[r][mask[r]])
        assert (aligned[r, lengths[r]:] == 0).all()
    (grad,) = torch.autograd.grad(aligned.sum(), values)
    assert torch.equal(grad, mask.double())


@pytest.mark.parametrize("margin", [0.5, 20.0])  # 20: every hinge active, so every leg gets gradient
def test_value_and_gradients_match_naive_formula(margin):
    torch.manual_seed(1)
    lens_a, lens_w, lens_l = [5, 2, 4], [3, 6, 4], [6, 1, 2]
    legs = [[torch.randn(n, dtype=torch.float64, requires_grad=True) for n in lens]
            for lens in (lens_a, lens_w, lens_l)]

    def padded(rows):
        width = max(len(x) for x in rows)
        return torch.stack([torch.cat([x, x.new_zeros(width - len(x))]) for x in rows]), torch.tensor(
            [len(x) for x in rows])

    (a, la), (w, lw), (l, ll) = (padded(rows) for rows in legs)
    loss, dist_pos, dist_neg = triplet_loss(a, w, l, la, lw, ll, margin=margin)
    naive = naive_triplet(*legs, margin=margin)
    torch.testing.assert_close(loss, naive, rtol=1e-12, atol=1e-12)
    assert dist_pos[1].item() == pytest.approx(((legs[0][1] - legs[1][1][:2]) ** 2).sum().item())
    leaves = [x for rows in legs for x in rows]
    grads = torch.autograd.grad(loss, leaves)
    naive_grads = torch.autograd.grad(naive, leaves)
    for got, want in zip(grads, naive_grads):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    if margin == 20.0:  # anchor, chosen and rejected legs all carry gradient
        assert all(g[0] != 0 for g in grads)  # (entries past an overlap get none, as they should)


def test_policy_equal_reference_gives_margin_and_exactly_zero_gradient():
    legs = [torch.zeros(2, 5, dtype=torch.float32, requires_grad=True) for _ in range(3)]
    lengths = torch.tensor([5, 3])
    loss, _, _ = triplet_loss(*legs, lengths, lengths, lengths, margin=0.01)
    assert loss.item() == pytest.approx(0.01)
    for grad in torch.autograd.grad(loss, legs):
        assert torch.equal(grad, torch.zeros_like(grad))


def test_non_finite_raises_naming_the_pair():
    a = torch.zeros(3, 4)
    a[2, 1] = float("nan")
    lengths = torch.tensor([4, 4, 4])
    with pytest.raises(FloatingPointError, match=r"pairs \[2\]"):
        triplet_loss(a, torch.zeros(3, 4), torch.zeros(3, 4), lengths, lengths, lengths, margin=0.01)
