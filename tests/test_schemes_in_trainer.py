"""Every scheme inside the trainer: reductions to plain DPO, and an end-to-end `tokenweight train` per scheme."""

from __future__ import annotations

import json

import datasets
import pytest
import torch
from conftest import make_model, standard_rows

import tokenweight.weights.otpo.scheme as otpo_scheme
import tokenweight.weights.tidpo.scheme as tidpo_scheme
from tokenweight.cli import main
from tokenweight.config import TokenweightConfig
from tokenweight.data import PreferenceCollator, tokenize_preference_dataset
from tokenweight.trainer import TokenweightTrainer


def trainer_loss(tokenizer, weighting: str, **settings) -> torch.Tensor:
    """The loss of one fixed batch (4 pairs, policy ≠ reference) under ``weighting``."""
    dataset, _ = tokenize_preference_dataset(datasets.Dataset.from_list(standard_rows(4)), tokenizer)
    config = TokenweightConfig(output_dir="/tmp/tw-test", use_cpu=True, report_to="none", beta=0.1,
                               weighting=weighting, **settings)
    trainer = TokenweightTrainer(make_model(len(tokenizer), seed=1), make_model(len(tokenizer), seed=2), config,
                                 processing_class=tokenizer)
    batch = PreferenceCollator(tokenizer.pad_token_id)(list(dataset))
    return trainer.compute_loss(trainer.model, batch)


def test_otpo_with_unit_weights_is_the_uniform_loss(tokenizer, monkeypatch):
    solve = otpo_scheme.otpo_weights

    def unit_weights(chosen_hidden, rejected_hidden, chosen_mask, rejected_mask, **kwargs):
        log = solve(chosen_hidden, rejected_hidden, chosen_mask, rejected_mask, **kwargs)[2]
        return chosen_mask.float(), rejected_mask.float(), log

    monkeypatch.setattr(otpo_scheme, "otpo_weights", unit_weights)
    assert trainer_loss(tokenizer, "otpo").item() == pytest.approx(trainer_loss(tokenizer, "uniform").item(),
                                                                   abs=1e-7)


def test_otpo_weights_change_the_loss(tokenizer):
    assert abs(trainer_loss(tokenizer, "otpo").item() - trainer_loss(tokenizer, "uniform").item()) > 1e-6


def test_tidpo_without_kl_triplet_and_with_unit_weights_is_the_uniform_loss(tokenizer, monkeypatch):
    def unit_weights(model, input_ids, attention_mask, completion_mask, log=False, **kwargs):
        return (completion_mask.float(), {"tidpo/weight_on_last_token": 1.0}) if log else completion_mask.float()

    monkeypatch.setattr(tidpo_scheme, "tidpo_weights", unit_weights)
    loss = trainer_loss(tokenizer, "tidpo", tidpo_kl_alpha=0.0, tidpo_gamma=0.0)
    assert loss.item() == pytest.approx(trainer_loss(tokenizer, "uniform").item(), abs=1e-7)
    assert abs(trainer_loss(tokenizer, "tidpo", tidpo_gamma=0.0).item() - loss.item()) > 1e-6  # KL term moves it


@pytest.mark.parametrize("weighting", ["uniform", "otpo", "tidpo", "attention"])
def test_tokenweight_train_end_to_end_on_small_keyfact(tmp_path, monkeypatch, weighting):
    """`tokenweight train` with the built-in task (small base model): trains, saves, reports before/after."""
    monkeypatch.setenv("TOKENWEIGHT_CACHE", str(tmp_path.parent / "keyfact-cache"))
    out = tmp_path / "run"
    assert main(["train", "--keyfact_model_size", "small", "--keyfact_train_size", "16", "--keyfact_eval_size", "8",
                 "--per_device_train_batch_size", "4", "--num_train_epochs", "1", "--logging_steps", "1",
                 "--weighting", weighting, "--output_dir", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["before"]["pref_acc"] == 0.5          # policy == reference: every implicit reward ties
    assert 0.0 <= results["after"]["pref_acc"] <= 1.0 and results["after"]["margin"] != 0.0  # it trained
    assert {"key_acc", "key_margin", "gen_len"} <= set(results["after"])
    state = json.loads((out / "trainer_state.json").read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert len(losses) == 4 and all(loss == loss for loss in losses)
    first = next(entry for entry in state["log_history"] if "loss" in entry)
    assert first["weights/mean"] == pytest.approx(1.0, abs=0.05) or weighting == "otpo"
    scheme_metric = {"otpo": "otpo/iterations", "tidpo": "tidpo/kl_term", "attention": "weights/eff_frac",
                     "uniform": "rewards/margins"}[weighting]
    assert scheme_metric in first
    assert (out / "model.safetensors").exists()
    if weighting == "attention":
        assert (out / "attention-weights").is_dir()


@pytest.mark.parametrize("weighting", ["uniform", "otpo", "tidpo"])
def test_activation_checkpointing_gives_the_same_loss_and_gradients(tokenizer, weighting):
    """Non-reentrant activation checkpointing changes memory, not numbers (TI-DPO's input gradients included)."""
    dataset, _ = tokenize_preference_dataset(datasets.Dataset.from_list(standard_rows(4)), tokenizer)
    results = []
    for checkpointing in (False, True):
        config = TokenweightConfig(output_dir="/tmp/tw-test", use_cpu=True, report_to="none", beta=0.1,
                                   weighting=weighting, tidpo_gamma=0.0, activation_checkpointing=checkpointing,
                                   activation_checkpointing_kwargs={"use_reentrant": False})
        model = make_model(len(tokenizer), seed=1)
        trainer = TokenweightTrainer(model, make_model(len(tokenizer), seed=2), config, processing_class=tokenizer)
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        loss = trainer.compute_loss(trainer.model, PreferenceCollator(tokenizer.pad_token_id)(list(dataset)))
        loss.backward()
        results.append((loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (loss_plain, grads_plain), (loss_ckpt, grads_ckpt) = results
    assert loss_ckpt == pytest.approx(loss_plain, abs=1e-6)
    assert max((grads_plain[n] - grads_ckpt[n]).abs().max().item() for n in grads_plain) < 1e-6


def test_lora_policy_starts_as_the_full_model_and_trains_only_adapters(tokenizer):
    """A PEFT (LoRA) policy goes through the same patched forward: at initialisation its loss equals the plain
    model's, and a step changes only adapter weights."""
    from tokenweight.models import add_lora_adapters

    dataset, _ = tokenize_preference_dataset(datasets.Dataset.from_list(standard_rows(4)), tokenizer)
    batch = PreferenceCollator(tokenizer.pad_token_id)(list(dataset))
    config = TokenweightConfig(output_dir="/tmp/tw-test", use_cpu=True, report_to="none", beta=0.1,
                               weighting="otpo")
    plain = TokenweightTrainer(make_model(len(tokenizer), seed=1), make_model(len(tokenizer), seed=2), config,
                               processing_class=tokenizer)
    lora_model = add_lora_adapters(make_model(len(tokenizer), seed=1), r=4, alpha=8)
    lora = TokenweightTrainer(lora_model, make_model(len(tokenizer), seed=2), config, processing_class=tokenizer)
    assert lora.compute_loss(lora.model, batch).item() == pytest.approx(
        plain.compute_loss(plain.model, batch).item(), abs=1e-6)
    before = {n: p.detach().clone() for n, p in lora_model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in lora_model.parameters() if p.requires_grad], lr=1.0)
    for _ in range(2):  # LoRA's B starts at 0: the second step moves A as well
        optimizer.zero_grad()
        lora.compute_loss(lora.model, batch).backward()
        optimizer.step()
    changed = {n for n, p in lora_model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)
