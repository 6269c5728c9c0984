"""``confpo`` against a naive per-row computation (a loop over pairs, full-logit softmax of an identical model): loss,
reward metrics and gradients; against an oracle re-typed from the authors' ``cpo_loss_confpo`` (a response that
selects no token zeroes its pair's loss, the pair staying in the mean); the selection rule p_t < mean_t p_t on
hand-made rows, including the all-equal row."""

from __future__ import annotations

import datasets
import pytest
import torch
import torch.nn.functional as F
from conftest import make_model, standard_rows

from tokenweight.config import TokenweightConfig
from tokenweight.data import PreferenceCollator, tokenize_preference_dataset
from tokenweight.errors import UserError
from tokenweight.objectives import pair_loss, pair_sides
from tokenweight.trainer import TokenweightTrainer
from tokenweight.weights import WeightingInputs, build_scheme
from tokenweight.weights.confpo import low_confidence_tokens

BETA, GAMMA = 1.5, 1.6  # the released Mistral-Base script


def naive_confpo(model, batch: dict[str, torch.Tensor], beta: float, gamma: float):
    """Per pair: each response's token log-probs from the full softmax, S = {t : p_t < mean p}, the mean log-prob
    over S, and −log σ(β(mean_w − mean_l) − γ). Returns (mean loss, [B] β·mean_S of chosen, of rejected)."""
    pairs = batch["input_ids"].shape[0] // 2
    losses, rewards = [], {"chosen": [], "rejected": []}
    for b in range(pairs):
        means = {}
        for side, row in (("chosen", b), ("rejected", pairs + b)):
            length = int(batch["attention_mask"][row].sum())
            ids = batch["input_ids"][row, :length]
            logits = model(input_ids=ids[None]).logits[0, :-1].float()
            token_logps = torch.log_softmax(logits, dim=-1).gather(1, ids[1:, None])[:, 0]
            completion = batch["completion_mask"][row, 1:length].bool()
            logps = token_logps[completion]
            probs = logps.detach().exp()
            selected = probs < probs.mean()
            assert selected.any()
            means[side] = logps[selected].mean()
            rewards[side].append(beta * means[side].detach())
        losses.append(-F.logsigmoid(beta * (means["chosen"] - means["rejected"]) - gamma))
    return torch.stack(losses).mean(), torch.stack(rewards["chosen"]), torch.stack(rewards["rejected"])


def test_confpo_loss_metrics_and_gradients_match_the_naive_per_row_computation(tokenizer):
    dataset, _ = tokenize_preference_dataset(datasets.Dataset.from_list(standard_rows(4)), tokenizer)
    batch = PreferenceCollator(tokenizer.pad_token_id)(list(dataset))
    config = TokenweightConfig(output_dir="/tmp/tw-test", use_cpu=True, report_to="none", weighting="confpo")
    assert config.effective_beta == BETA and config.confpo_gamma == GAMMA  # the defaults are the released ones
    trainer = TokenweightTrainer(make_model(len(tokenizer), seed=3), None, config, processing_class=tokenizer)
    assert trainer.ref_model is None
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    oracle = make_model(len(tokenizer), seed=3).train()
    expected, chosen_rewards, rejected_rewards = naive_confpo(oracle, batch, BETA, GAMMA)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    metrics = {name: values[-1] for name, values in trainer._metrics["train"].items()}
    assert metrics["rewards/chosen"].item() == pytest.approx(chosen_rewards.mean().item(), abs=1e-6)
    assert metrics["rewards/rejected"].item() == pytest.approx(rejected_rewards.mean().item(), abs=1e-6)
    assert metrics["rewards/accuracies"].item() == (chosen_rewards > rejected_rewards).float().mean().item()
    assert 0 < metrics["confpo/selected_chosen"].item() < 1 and 0 < metrics["confpo/selected_rejected"].item() < 1
    assert metrics["confpo/all_equal_rows"].value.item() == 0
    loss.backward()
    expected.backward()
    for (name, p_oracle), p_ours in zip(oracle.named_parameters(), trainer.model.parameters()):
        assert torch.allclose(p_oracle.grad, p_ours.grad, atol=1e-6, rtol=1e-4), name
    # the selection matters: SimPO's weights (all tokens) give another loss (the random model is near-uniform)
    simpo = TokenweightConfig(output_dir="/tmp/tw-test", use_cpu=True, report_to="none", weighting="simpo",
                              beta=BETA, simpo_gamma_beta_ratio=GAMMA / BETA)
    simpo_trainer = TokenweightTrainer(make_model(len(tokenizer), seed=3), None, simpo, processing_class=tokenizer)
    assert abs(simpo_trainer.compute_loss(simpo_trainer.model, batch).item() - loss.item()) > 1e-4


def test_selection_is_below_the_mean_probability_and_a_flat_response_selects_nothing():
    probs = torch.tensor([[0.5, 0.5, 0.5, 1.0],     # flat response (the last slot is padding): all equal
                          [0.1, 0.9, 0.5, 0.6],     # mean 0.525: tokens 0 and 2
                          [0.2, 1.0, 1.0, 1.0],     # a one-token response: all equal
                          [0.9, 0.8, 0.05, 0.05]])  # mean 0.45: tokens 2 and 3
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    selected = low_confidence_tokens(probs.log(), mask)
    assert selected.tolist() == [[False, False, False, False], [True, False, True, False],
                                 [False, False, False, False], [False, False, True, True]]
    # below the geometric mean (the mean log-prob) is another set: the rule is on probabilities
    assert (probs[1].log() < probs[1].log().mean()).tolist() == [True, False, False, False]


def upstream_confpo_losses(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, loss_mask: torch.Tensor,
                           beta: float, gamma: float) -> torch.Tensor:
    """hee-suk-yoon/ConfPO ``trl-main/trl/trainer/cpo_trainer.py::CPOTrainer.cpo_loss_confpo`` (``loss_type``
    "simpo", no label smoothing), re-typed: per-token log-probs ``[B, T]`` of each side and ``loss_mask`` ``[2B, T]``
    → per-pair losses ``[B]``."""
    pairs = chosen_logps.shape[0]
    chosen_mask, rejected_mask = loss_mask[:pairs], loss_mask[pairs:]
    chosen_avg = ((chosen_logps.exp() * chosen_mask).sum(-1) / chosen_mask.sum(-1)).log()
    rejected_avg = ((rejected_logps.exp() * rejected_mask).sum(-1) / rejected_mask.sum(-1)).log()
    chosen_sel = (chosen_logps < chosen_avg.unsqueeze(1)).detach() * chosen_mask
    rejected_sel = (rejected_logps < rejected_avg.unsqueeze(1)).detach() * rejected_mask
    chosen_zero, rejected_zero = chosen_sel.sum(dim=-1) == 0, rejected_sel.sum(dim=-1) == 0
    zero_sample = torch.logical_or(chosen_zero, rejected_zero)
    chosen_len, rejected_len = chosen_sel.sum(-1), rejected_sel.sum(-1)
    chosen_len[chosen_zero] = 1
    rejected_len[rejected_zero] = 1
    chosen = (chosen_logps * chosen_sel).sum(-1) / chosen_len
    rejected = (rejected_logps * rejected_sel).sum(-1) / rejected_len
    logits = chosen - rejected - gamma / beta
    return -F.logsigmoid(beta * logits) * ~zero_sample


def test_a_response_that_selects_nothing_zeroes_its_pair_as_the_authors_code():
    """Oracle: hee-suk-yoon/ConfPO ``cpo_loss_confpo`` (selection, empty-set guard, ``losses * ~zero_sample``, mean
    over every pair); ours: the scheme's weights and pair weights through :func:`pair_loss`, as the trainer combines
    them. Gradients by autograd on the per-token log-probs. Flat responses use log-prob 0 (p = 1), where upstream's
    log-space comparison is exact."""
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1],     # chosen rows
                         [1, 1, 1, 1, 1], [1, 1, 1, 1, 0], [1, 0, 0, 0, 0]])    # rejected rows
    values = torch.tensor([[-0.5, -2.0, -1.0, -0.1, -9.0], [0.0, 0.0, 0.0, -3.0, -3.0], [-1.5, -0.2, -3.0, -0.7, -0.4],
                           [-1.0, -0.3, -2.5, -0.05, -1.2], [-0.6, -0.9, -4.0, -0.2, -5.0], [0.0, -1.0, -2.0, -3, -4]])
    scheme = build_scheme("confpo")
    beta, gamma = scheme.context.beta, scheme.settings.confpo_gamma
    ours_logps, oracle_logps = values.clone().requires_grad_(), values.clone().requires_grad_()
    inputs = WeightingInputs(input_ids=torch.zeros(6, 6, dtype=torch.long), attention_mask=torch.ones(6, 6),
                             completion_mask=F.pad(mask, (1, 0)), loss_mask=mask.bool(), batch={},
                             policy_logps=values)
    result = scheme.compute(inputs)
    assert result.pair_weights.tolist() == [1.0, 0.0, 0.0]  # pair 1: flat chosen; pair 2: one-token rejected
    assert result.metrics["confpo/all_equal_rows"].value.item() == 2
    assert result.metrics["confpo/zeroed_pairs"].value.item() == 2
    assert result.weights[1].tolist() == [0.0] * 5 and result.weights[5].tolist() == [0.0] * 5
    ours = pair_loss(*pair_sides(ours_logps, result.weights, mask.bool()), beta,
                     offset=torch.full((3,), gamma / beta), pair_weights=result.pair_weights)
    losses = upstream_confpo_losses(oracle_logps[:3], oracle_logps[3:], mask, beta, gamma)
    assert losses[1].item() == losses[2].item() == 0.0 and losses[0].item() > 0.1
    assert ours.per_pair.tolist() == pytest.approx(losses.tolist(), abs=1e-6)
    assert ours.loss.item() == pytest.approx(losses.mean().item(), abs=1e-6)  # the zeroed pairs stay in the mean
    ours.loss.backward()
    losses.mean().backward()
    assert torch.allclose(ours_logps.grad, oracle_logps.grad, atol=1e-6)
    assert ours_logps.grad[[1, 2, 4, 5]].abs().sum().item() == 0.0  # nothing flows through a zeroed pair


def test_trainer_zeroes_every_pair_of_a_flat_policy(tokenizer):
    """A policy with a zero output layer gives every token the same probability: every response selects nothing, so
    every pair's loss is 0 (SimPO's weights would give −log σ(−γ) per pair) and no gradient flows."""
    dataset, _ = tokenize_preference_dataset(datasets.Dataset.from_list(standard_rows(4)), tokenizer)
    batch = PreferenceCollator(tokenizer.pad_token_id)(list(dataset))
    config = TokenweightConfig(output_dir="/tmp/tw-test", use_cpu=True, report_to="none", weighting="confpo")
    model = make_model(len(tokenizer), seed=3)
    with torch.no_grad():
        model.lm_head.weight.zero_()
    trainer = TokenweightTrainer(model, None, config, processing_class=tokenizer)
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    assert loss.item() == 0.0
    metrics = trainer._metrics["train"]
    assert metrics["confpo/zeroed_pairs"][-1].value.item() == 4
    assert metrics["confpo/all_equal_rows"][-1].value.item() == 8
    loss.backward()
    assert all(p.grad is None or p.grad.abs().sum().item() == 0.0 for p in trainer.model.parameters())


def test_confpo_refuses_other_losses_and_reference_settings():
    with pytest.raises(UserError, match="weighting=confpo supports sigmoid, not hinge"):
        TokenweightConfig(output_dir="/tmp/tw", weighting="confpo", loss_type="hinge")
    with pytest.raises(UserError, match="confpo_gamma` must be >= 0"):
        TokenweightConfig(output_dir="/tmp/tw", weighting="confpo", confpo_gamma=-1.0)
