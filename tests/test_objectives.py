"""Pair losses, reward metrics and weight statistics against naive per-pair formulas and autograd; the
``column`` scheme against ``uniform`` through the trainer."""

from __future__ import annotations

import math

import datasets
import pytest
import torch
from conftest import make_model, standard_rows

from tokenweight.config import TokenweightConfig
from tokenweight.data import tokenize_preference_dataset
from tokenweight.logps import naive_token_logps
from tokenweight.objectives import Responses, pair_loss, pair_sides, weight_statistics
from tokenweight.trainer import TokenweightTrainer

BETA = 0.3


def make_pairs(seed: int = 0, pairs: int = 3, length: int = 7):
    """Random policy/reference log-probs ``[2B, T]`` and a completion mask whose rows have different lengths."""
    generator = torch.Generator().manual_seed(seed)
    policy = -torch.rand(2 * pairs, length, generator=generator, dtype=torch.float64) * 3
    ref = -torch.rand(2 * pairs, length, generator=generator, dtype=torch.float64) * 3
    mask = torch.zeros(2 * pairs, length, dtype=torch.bool)
    for row in range(2 * pairs):
        start = 1 + row % 2
        mask[row, start:length - row % 3] = True
    return policy.requires_grad_(), ref, mask


def naive_sums(policy, ref, weights, mask):
    """Per-row Σ_t w_t (π_t − ref_t) over completion tokens, by explicit loops."""
    sums = []
    for row in range(policy.shape[0]):
        total = 0.0
        for t in range(policy.shape[1]):
            if mask[row, t]:
                total = total + weights[row, t].item() * (policy[row, t].item() - ref[row, t].item())
        sums.append(total)
    return sums


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_sigmoid_and_cdpo_match_naive(label_smoothing):
    policy, ref, mask = make_pairs()
    weights = torch.rand(mask.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * mask
    sums = naive_sums(policy, ref, weights, mask)
    pairs = len(sums) // 2
    expected = []
    for i in range(pairs):
        z = BETA * (sums[i] - sums[pairs + i])
        expected.append(-(1 - label_smoothing) * log_sigmoid(z) - label_smoothing * log_sigmoid(-z))
    result = pair_loss(*pair_sides(policy, weights, mask, ref), BETA, "sigmoid", label_smoothing)
    assert result.per_pair.tolist() == pytest.approx(expected, abs=1e-12)
    assert result.loss.item() == pytest.approx(sum(expected) / pairs, abs=1e-12)


def test_ipo_is_length_normalised():
    policy, ref, mask = make_pairs(seed=2)
    weights = mask.double()
    sums = naive_sums(policy, ref, weights, mask)
    lengths = mask.sum(dim=1).tolist()
    pairs = len(sums) // 2
    expected = [(sums[i] / lengths[i] - sums[pairs + i] / lengths[pairs + i] - 1 / (2 * BETA)) ** 2
                for i in range(pairs)]
    result = pair_loss(*pair_sides(policy, weights, mask, ref), BETA, "ipo")
    assert result.per_pair.tolist() == pytest.approx(expected, abs=1e-12)


def test_hinge_matches_naive_on_both_sides_of_the_kink():
    policy, ref, mask = make_pairs(seed=3, pairs=4)
    weights = mask.double()
    # push pair 0 far beyond the margin so that its hinge is exactly 0
    with torch.no_grad():
        policy[0] += 40 * mask[0]
    sums = naive_sums(policy, ref, weights, mask)
    expected = [max(0.0, 1 - BETA * (sums[i] - sums[4 + i])) for i in range(4)]
    result = pair_loss(*pair_sides(policy, weights, mask, ref), BETA, "hinge")
    assert expected[0] == 0.0 and any(e > 0 for e in expected)
    assert result.per_pair.tolist() == pytest.approx(expected, abs=1e-12)


def test_offset_moves_the_margin():
    policy, ref, mask = make_pairs(seed=4)
    weights = mask.double()
    offset = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    sums = naive_sums(policy, ref, weights, mask)
    expected = [-log_sigmoid(BETA * (sums[i] - sums[3 + i] - offset[i].item())) for i in range(3)]
    result = pair_loss(*pair_sides(policy, weights, mask, ref), BETA, "sigmoid", offset=offset)
    assert result.per_pair.tolist() == pytest.approx(expected, abs=1e-12)


def test_reward_metrics_match_hand_computation():
    policy, ref, mask = make_pairs(seed=5)
    weights = torch.rand(mask.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(6)) * mask
    plain = naive_sums(policy, ref, mask.double(), mask)
    weighted = naive_sums(policy, ref, weights, mask)
    logps = naive_sums(policy, torch.zeros_like(ref), mask.double(), mask)
    metrics = pair_loss(*pair_sides(policy, weights, mask, ref), BETA).metrics
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    chosen, rejected = [BETA * s for s in plain[:3]], [BETA * s for s in plain[3:]]
    assert metrics["rewards/chosen"] == pytest.approx(mean(chosen), abs=1e-6)
    assert metrics["rewards/rejected"] == pytest.approx(mean(rejected), abs=1e-6)
    assert metrics["rewards/margins"] == pytest.approx(mean(chosen) - mean(rejected), abs=1e-6)
    assert metrics["rewards/accuracies"] == pytest.approx(mean([float(c > r) for c, r in zip(chosen, rejected)]))
    assert metrics["rewards/weighted_margins"] == pytest.approx(
        BETA * (mean(weighted[:3]) - mean(weighted[3:])), abs=1e-6)
    assert metrics["logps/chosen"] == pytest.approx(mean(logps[:3]), abs=1e-6)
    assert metrics["logps/rejected"] == pytest.approx(mean(logps[3:]), abs=1e-6)


def test_token_weight_scales_its_gradient_by_hand_formula():
    """For sigmoid, dL/dΔ_i = −β σ(−βΔ_i) / B, so dL/dlogπ(y_t) = ∓β σ(−βΔ_i) · w_t / B (− chosen, + rejected)."""
    policy, ref, mask = make_pairs(seed=7)
    pairs = 3
    weights = mask.double().clone()
    chosen_token = (0, int(mask[0].nonzero()[0]))
    rejected_token = (pairs + 1, int(mask[pairs + 1].nonzero()[-1]))
    weights[chosen_token] = 2.0
    weights[rejected_token] = 2.0
    pair_loss(*pair_sides(policy, weights, mask, ref), BETA, "sigmoid").loss.backward()
    sums = naive_sums(policy, ref, weights, mask)
    deltas = [sums[i] - sums[pairs + i] for i in range(pairs)]
    slope = [BETA * (1 / (1 + math.exp(BETA * d))) / pairs for d in deltas]  # β σ(−βΔ) / B
    expected = torch.zeros_like(policy)
    for row in range(2 * pairs):
        sign = -1.0 if row < pairs else 1.0
        expected[row] = sign * slope[row % pairs] * weights[row] * mask[row]
    assert torch.allclose(policy.grad, expected, atol=1e-12)
    # the doubled tokens carry exactly twice the gradient of an unweighted token of the same response
    neighbour = int(mask[0].nonzero()[1])
    assert policy.grad[chosen_token].item() == pytest.approx(2 * policy.grad[0, neighbour].item(), rel=1e-12)


def test_weight_statistics_match_hand_computation():
    weights = torch.tensor([[0.0, 1.0, 3.0, 0.0], [0.0, 0.0, 2.0, 2.0]])
    mask = torch.tensor([[False, True, True, False], [False, False, True, True]])
    stats = weight_statistics(weights, mask)
    assert stats["weights/mean"] == pytest.approx((1 + 3 + 2 + 2) / 4)
    assert stats["weights/max"] == pytest.approx(3.0)
    assert stats["weights/min"] == pytest.approx(1.0)
    # effective fraction (Σw)²/(n Σw²): row 0 16/(2·10) = 0.8, row 1 16/(2·8) = 1
    assert stats["weights/eff_frac"] == pytest.approx((0.8 + 1.0) / 2)
    assert stats["weights/first_token"] == pytest.approx((1.0 + 2.0) / 2)
    assert stats["weights/last_token"] == pytest.approx((3.0 + 2.0) / 2)


# ------------------------------------------------------------------------------------ column scheme via the trainer


def column_trainer(tokenizer, tmp_path, weighting, weight_of):
    """A trainer on 4 standard rows whose weight columns are ``weight_of(side, row, n_tokens)``."""
    rows = standard_rows(4)
    for i, row in enumerate(rows):
        for side in ("chosen", "rejected"):
            n_tokens = len(tokenizer(row["prompt"] + row[side] + tokenizer.eos_token)["input_ids"]) - \
                len(tokenizer(row["prompt"])["input_ids"])
            row[f"{side}_weights"] = weight_of(side, i, n_tokens)
    dataset, _ = tokenize_preference_dataset(datasets.Dataset.from_list(rows), tokenizer, max_length=None)
    args = TokenweightConfig(output_dir=str(tmp_path / weighting), weighting=weighting, beta=BETA, report_to=[],
                             use_cpu=True, max_length=None)
    vocab = len(tokenizer)
    trainer = TokenweightTrainer(make_model(vocab, seed=0), make_model(vocab, seed=1), args, train_dataset=dataset,
                                 processing_class=tokenizer)
    trainer.model.train()
    return trainer, trainer.data_collator([dataset[i] for i in range(4)])


def test_column_weights_of_one_equal_uniform(tokenizer, tmp_path):
    ones = lambda side, row, n: [1.0] * n  # noqa: E731
    uniform, batch = column_trainer(tokenizer, tmp_path, "uniform", ones)
    column, _ = column_trainer(tokenizer, tmp_path, "column", ones)
    uniform_loss = uniform.compute_loss(uniform.model, batch)
    column_loss = column.compute_loss(column.model, batch)
    assert column_loss.item() == uniform_loss.item()
    uniform_loss.backward()
    column_loss.backward()
    for p_uniform, p_column in zip(uniform.model.parameters(), column.model.parameters()):
        assert torch.equal(p_uniform.grad, p_column.grad)


def test_column_weight_two_matches_hand_loss(tokenizer, tmp_path):
    """Weight 2 on the second chosen token of row 1: the trainer's loss equals the hand-weighted DPO loss computed
    from the models' plain logits."""
    def weights(side, row, n):
        values = [1.0] * n
        if side == "chosen" and row == 1:
            values[1] = 2.0
        return values

    trainer, batch = column_trainer(tokenizer, tmp_path, "column", weights)
    loss = trainer.compute_loss(trainer.model, batch)
    with torch.no_grad():
        policy = naive_token_logps(trainer.model(input_ids=batch["input_ids"],
                                                 attention_mask=batch["attention_mask"]).logits, batch["input_ids"])
        ref = naive_token_logps(trainer.ref_model(input_ids=batch["input_ids"],
                                                  attention_mask=batch["attention_mask"]).logits, batch["input_ids"])
    mask = batch["completion_mask"][:, 1:].bool()
    hand_weights = mask.float().clone()
    hand_weights[1, int(mask[1].nonzero()[1])] = 2.0
    sums = naive_sums(policy, ref, hand_weights, mask)
    expected = sum(-log_sigmoid(BETA * (sums[i] - sums[4 + i])) for i in range(4)) / 4
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert trainer._metrics["train"]["weights/max"][-1] == 2.0


def test_reference_weights_and_pair_weights_enter_the_loss_as_written():
    """``ref_weights`` weigh the reference's log-probs alone, ``pair_weights`` scale each pair's loss (naive sums)."""
    policy, ref, mask = make_pairs(seed=4)
    generator = torch.Generator().manual_seed(5)
    weights = torch.rand(mask.shape, generator=generator, dtype=torch.float64) * mask
    ref_weights = torch.rand(mask.shape, generator=generator, dtype=torch.float64) * mask
    pair_weights = torch.tensor([0.5, 1.5, 0.25], dtype=torch.float64)
    result = pair_loss(*pair_sides(policy, weights, mask, ref, ref_weights), BETA, pair_weights=pair_weights)
    pairs = mask.shape[0] // 2
    sums = [sum(weights[i, t] * policy[i, t] - ref_weights[i, t] * ref[i, t] for t in range(mask.shape[1])
                if mask[i, t]) for i in range(2 * pairs)]
    expected = [pair_weights[b] * -math.log(1 / (1 + math.exp(-BETA * (sums[b] - sums[pairs + b]))))
                for b in range(pairs)]
    assert result.per_pair.tolist() == pytest.approx([float(e) for e in expected], rel=1e-12)
    same = pair_loss(*pair_sides(policy, weights, mask, ref, weights), BETA)
    assert same.loss.item() == pytest.approx(pair_loss(*pair_sides(policy, weights, mask, ref), BETA).loss.item(),
                                               rel=1e-12)


def test_the_two_sides_are_explicit_and_may_differ_in_length():
    """Chosen ``[B, 5]`` and rejected ``[B, 7]`` given apart (no stacked layout): the naive per-pair sigmoid loss; a
    side with reference log-probs and one without are refused."""
    policy, ref, mask = make_pairs(seed=8)
    weights = torch.rand(mask.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(9)) * mask
    chosen = Responses(policy[:3, :5], weights[:3, :5], mask[:3, :5], ref[:3, :5])
    rejected = Responses(policy[3:], weights[3:], mask[3:], ref[3:])
    sums_c = naive_sums(policy[:3, :5], ref[:3, :5], weights[:3, :5], mask[:3, :5])
    sums_r = naive_sums(policy[3:], ref[3:], weights[3:], mask[3:])
    expected = [-log_sigmoid(BETA * (c - r)) for c, r in zip(sums_c, sums_r)]
    result = pair_loss(chosen, rejected, BETA)
    assert result.per_pair.tolist() == pytest.approx(expected, abs=1e-12)
    assert result.loss.item() == pytest.approx(sum(expected) / 3, abs=1e-12)
    with pytest.raises(ValueError, match="both have reference log-probs or both have none"):
        pair_loss(chosen, rejected._replace(ref_logps=None), BETA)
