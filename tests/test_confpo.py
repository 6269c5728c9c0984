"""``confpo`` against a naive per-row computation (a loop over pairs, full-logit softmax of an identical model): loss,
reward metrics and gradients; the selection rule p_t < mean_t p_t on hand-made rows, including the all-equal row."""

from __future__ import annotations

import datasets
import pytest
import torch
import torch.nn.functional as F
from conftest import make_model, standard_rows

from tokenweight.config import TokenweightConfig
from tokenweight.data import PreferenceCollator, tokenize_preference_dataset
from tokenweight.errors import UserError
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
    assert metrics["confpo/all_equal_rows"].item() == 0
    loss.backward()
    expected.backward()
    for (name, p_oracle), p_ours in zip(oracle.named_parameters(), trainer.model.parameters()):
        assert torch.allclose(p_oracle.grad, p_ours.grad, atol=1e-6, rtol=1e-4), name
    # the selection matters: SimPO's weights (all tokens) give another loss (the random model is near-uniform)
    simpo = TokenweightConfig(output_dir="/tmp/tw-test", use_cpu=True, report_to="none", weighting="simpo",
                              beta=BETA, simpo_gamma_beta_ratio=GAMMA / BETA)
    simpo_trainer = TokenweightTrainer(make_model(len(tokenizer), seed=3), None, simpo, processing_class=tokenizer)
    assert abs(simpo_trainer.compute_loss(simpo_trainer.model, batch).item() - loss.item()) > 1e-4


def test_selection_is_below_the_mean_probability_and_a_flat_response_keeps_every_token():
    probs = torch.tensor([[0.5, 0.5, 0.5, 1.0],     # flat response (the last slot is padding): all equal
                          [0.1, 0.9, 0.5, 0.6],     # mean 0.525: tokens 0 and 2
                          [0.2, 1.0, 1.0, 1.0],     # a one-token response: all equal
                          [0.9, 0.8, 0.05, 0.05]])  # mean 0.45: tokens 2 and 3
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    selected, all_equal = low_confidence_tokens(probs.log(), mask)
    assert selected.tolist() == [[True, True, True, False], [True, False, True, False],
                                 [True, False, False, False], [False, False, True, True]]
    assert all_equal.tolist() == [True, False, True, False]
    # below the geometric mean (the mean log-prob) is another set: the rule is on probabilities
    assert (probs[1].log() < probs[1].log().mean()).tolist() == [True, False, False, False]


def test_confpo_counts_flat_responses_and_weighs_them_like_simpo():
    scheme = build_scheme("confpo")
    mask = torch.tensor([[0, 1, 1, 1], [0, 1, 1, 0]], dtype=torch.bool)
    logps = torch.tensor([[0.0, -1.0, -1.0, -1.0], [0.0, -0.5, -2.0, 0.0]])
    inputs = WeightingInputs(input_ids=torch.zeros(2, 5, dtype=torch.long), attention_mask=torch.ones(2, 5),
                             completion_mask=torch.ones(2, 5), loss_mask=mask, batch={}, policy_logps=logps)
    result = scheme.compute(inputs)
    assert torch.equal(result.weights, torch.tensor([[0.0, 1 / 3, 1 / 3, 1 / 3], [0.0, 0.0, 1.0, 0.0]]))
    assert result.metrics["confpo/all_equal_rows"].item() == 1


def test_confpo_refuses_other_losses_and_reference_settings():
    with pytest.raises(UserError, match="weighting=confpo supports sigmoid, not hinge"):
        TokenweightConfig(output_dir="/tmp/tw", weighting="confpo", loss_type="hinge")
    with pytest.raises(UserError, match="confpo_gamma` must be >= 0"):
        TokenweightConfig(output_dir="/tmp/tw", weighting="confpo", confpo_gamma=-1.0)
