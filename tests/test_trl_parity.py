"""``weighting=uniform`` reproduces TRL 1.16's DPOTrainer: tokenization, loss and reward metrics on one batch, and
the logged loss and metrics (TRL's ``entropy``, ``logits/*``, ``mean_token_accuracy``, ``num_tokens`` included) of a
20-step training run from the same checkpoint, data order and optimizer.

TRL is the oracle here only; nothing of it is used by the library."""

from __future__ import annotations

import datasets
import pytest
import torch
from conftest import conversational_rows, make_model, standard_rows
from trl import DPOConfig, DPOTrainer

from tokenweight.config import TokenweightConfig
from tokenweight.data import tokenize_preference_dataset
from tokenweight.trainer import TokenweightTrainer

REWARD_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins")
#: the other metrics TRL's DPOTrainer logs, computed by its fused head and by our chunked head
HEAD_METRICS = ("entropy", "logits/chosen", "logits/rejected", "mean_token_accuracy", "num_tokens")
COMMON_ARGS = dict(report_to=[], use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False,
                   disable_tqdm=True, save_strategy="no", seed=0)


#: the training run of the 20-step comparisons: same optimizer, schedule and data order in both trainers
TWENTY_STEPS = dict(max_steps=20, per_device_train_batch_size=2, learning_rate=1e-3, optim="adamw_torch",
                    lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
                    logging_steps=1, data_seed=0)


def build_trainers(tokenizer, rows, loss_type, tmp_path, ours_only: dict | None = None, **training):
    """TRL's DPOTrainer and ours on the same rows, with identical fresh policies and references; ``training`` goes
    to both configurations, ``ours_only`` (e.g. ``weighting``) to ours alone."""
    dataset = datasets.Dataset.from_list(rows)
    vocab = len(tokenizer)
    trl = DPOTrainer(model=make_model(vocab, seed=0), ref_model=make_model(vocab, seed=1), train_dataset=dataset,
                     processing_class=tokenizer,
                     args=DPOConfig(output_dir=str(tmp_path / "trl"), beta=0.1, loss_type=[loss_type], max_length=None,
                                    dataset_num_proc=None, **COMMON_ARGS, **training))
    ours_dataset, _ = tokenize_preference_dataset(dataset, tokenizer, max_length=None)
    ours = TokenweightTrainer(make_model(vocab, seed=0), make_model(vocab, seed=1), train_dataset=ours_dataset,
                              processing_class=tokenizer,
                              args=TokenweightConfig(output_dir=str(tmp_path / "ours"), beta=0.1, loss_type=loss_type,
                                                     max_length=None, **COMMON_ARGS, **training,
                                                     **(ours_only or {})))
    return trl, ours


@pytest.mark.parametrize("fmt", ["standard", "conversational"])
def test_tokenization_matches_trl(tokenizer, tmp_path, fmt):
    rows = standard_rows(8) if fmt == "standard" else conversational_rows(8)
    trl, ours = build_trainers(tokenizer, rows, "sigmoid", tmp_path)
    assert len(trl.train_dataset) == len(ours.train_dataset) == 8
    for i in range(8):
        for column in ("prompt_ids", "chosen_ids", "rejected_ids"):
            assert ours.train_dataset[i][column] == trl.train_dataset[i][column], (i, column)


@pytest.mark.parametrize("fmt", ["standard", "conversational"])
@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
def test_loss_and_rewards_match_trl(tokenizer, tmp_path, fmt, loss_type):
    rows = standard_rows(4) if fmt == "standard" else conversational_rows(4)
    trl, ours = build_trainers(tokenizer, rows, loss_type, tmp_path)
    trl.model.train()
    ours.model.train()
    trl_batch = trl.data_collator([trl.train_dataset[i] for i in range(4)])
    our_batch = ours.data_collator([ours.train_dataset[i] for i in range(4)])
    for key in ("input_ids", "attention_mask", "completion_mask"):
        assert torch.equal(trl_batch[key], our_batch[key]), key
    trl_loss = trl.compute_loss(trl.model, trl_batch)
    our_loss = ours.compute_loss(ours.model, our_batch)
    assert abs(trl_loss.item() - our_loss.item()) < 1e-5
    for name in REWARD_METRICS:
        trl_value, our_value = trl._metrics["train"][name][-1], ours._metrics["train"][name][-1]
        assert abs(trl_value - our_value) < 1e-5, name
    # the margins are not trivially zero: the reference differs from the policy
    assert abs(ours._metrics["train"]["rewards/margins"][-1]) > 1e-4
    trl.log({})
    ours.log({})
    trl_logged, our_logged = trl.state.log_history[-1], ours.state.log_history[-1]
    for name in HEAD_METRICS + REWARD_METRICS:
        assert our_logged[name] == pytest.approx(trl_logged[name], rel=1e-5, abs=1e-6), name
    assert our_logged["num_tokens"] == int(our_batch["attention_mask"].sum())
    # and the gradients agree too
    trl_loss.backward()
    our_loss.backward()
    for (name, p_trl), p_ours in zip(trl.model.named_parameters(), ours.model.parameters()):
        assert torch.allclose(p_trl.grad, p_ours.grad, atol=1e-6, rtol=1e-4), name


class RecordingCollator:
    """Wraps a collator and keeps every batch's ``input_ids`` (to check that both runs see the same data)."""

    def __init__(self, collator):
        self.collator = collator
        self.input_ids = []
        self.batches = []

    def __call__(self, rows):
        batch = self.collator(rows)
        self.input_ids.append(batch["input_ids"].clone())
        self.batches.append(batch)
        return batch


def step_losses(trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def test_twenty_training_steps_match_trl(tokenizer, tmp_path):
    trl, ours = build_trainers(tokenizer, standard_rows(8), "sigmoid", tmp_path, **TWENTY_STEPS)
    trl.data_collator = RecordingCollator(trl.data_collator)
    ours.data_collator = RecordingCollator(ours.data_collator)
    trl.train()
    ours.train()
    assert len(ours.data_collator.input_ids) == len(trl.data_collator.input_ids) == 20
    for step, (a, b) in enumerate(zip(trl.data_collator.input_ids, ours.data_collator.input_ids)):
        assert torch.equal(a, b), f"step {step}: the two trainers saw different rows"
    trl_losses, our_losses = step_losses(trl), step_losses(ours)
    assert len(trl_losses) == len(our_losses) == 20
    differences = [abs(a - b) for a, b in zip(trl_losses, our_losses)]
    assert max(differences) < 1e-4, differences
    assert our_losses[-1] < our_losses[0] - 0.02  # it did train
    trl_logs, our_logs = (logged_steps(t) for t in (trl, ours))
    for name in HEAD_METRICS + REWARD_METRICS:
        trl_values, our_values = [entry[name] for entry in trl_logs], [entry[name] for entry in our_logs]
        assert our_values == pytest.approx(trl_values, rel=1e-4, abs=1e-4), name
    assert len({entry["mean_token_accuracy"] for entry in our_logs}) > 1  # the metrics move with training
    tokens_per_step = [b["attention_mask"].sum().item() for b in ours.data_collator.batches]
    assert [entry["num_tokens"] for entry in our_logs] == [sum(tokens_per_step[:k + 1]) for k in range(20)]


def logged_steps(trainer) -> list[dict]:
    return [entry for entry in trainer.state.log_history if "loss" in entry]
