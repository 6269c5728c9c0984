"""TI-DPO inside the trainer: evaluation repeats exactly, training anchors come from (seed, global step, row)."""

from __future__ import annotations

import datasets
import pytest
from conftest import make_model, standard_rows

import tokenweight.weights.tidpo.scheme as tidpo_scheme
from tokenweight.config import TokenweightConfig
from tokenweight.data import tokenize_preference_dataset
from tokenweight.errors import UserError
from tokenweight.trainer import TokenweightTrainer


def tidpo_trainer(tokenizer, tmp_path, **settings) -> TokenweightTrainer:
    """Policy ≠ reference (so the triplet distances are not 0), the triplet on, short anchors, 4 pairs."""
    dataset, _ = tokenize_preference_dataset(datasets.Dataset.from_list(standard_rows(4)), tokenizer)
    config = TokenweightConfig(output_dir=str(tmp_path / "run"), use_cpu=True, report_to="none", weighting="tidpo",
                               tidpo_gamma=1.0, tidpo_margin=5.0, tidpo_anchor_max_new_tokens=6,
                               per_device_train_batch_size=2, per_device_eval_batch_size=2, save_strategy="no",
                               logging_steps=1, **settings)
    return TokenweightTrainer(make_model(len(tokenizer), seed=1, initializer_range=0.2),
                              make_model(len(tokenizer), seed=2, initializer_range=0.2), config,
                              train_dataset=dataset, eval_dataset=dataset, processing_class=tokenizer)


def test_eval_loss_is_the_same_at_every_evaluation(tokenizer, tmp_path):
    """Issue 10 item 11: the same model and rows evaluated three times give one eval loss (a fresh random anchor
    per evaluation gave 2.99, 5.57, 4.10 before)."""
    trainer = tidpo_trainer(tokenizer, tmp_path)
    results = [trainer.evaluate() for _ in range(3)]
    losses = [r["eval_loss"] for r in results]
    assert losses[0] == losses[1] == losses[2]
    assert all(r["eval_tidpo/triplet_loss"] > 0 for r in results)  # the anchor term is in the loss


def test_training_anchors_are_seeded_by_run_seed_global_step_and_row(tokenizer, tmp_path, monkeypatch):
    """Every training batch's anchors are drawn from (args.seed, trainer global step, dataset row) only, so a
    resumed run draws what an uninterrupted one draws; an evaluation in between uses the evaluation seeds."""
    calls = []
    seeds_of = tidpo_scheme.anchor_seeds

    def spy(seed, rows, step):
        calls.append((seed, tuple(rows), step))
        return seeds_of(seed, rows, step)

    monkeypatch.setattr(tidpo_scheme, "anchor_seeds", spy)
    trainer = tidpo_trainer(tokenizer, tmp_path, seed=7, max_steps=4, eval_strategy="steps", eval_steps=2)
    trainer.train()
    train_calls = [c for c in calls if c[2] is not None]
    assert [c[2] for c in train_calls] == [0, 1, 2, 3] and all(c[0] == 7 for c in calls)
    assert sorted(r for c in train_calls[:2] for r in c[1]) == [0, 1, 2, 3]  # one epoch of 2 batches of 2 pairs
    eval_calls = [c for c in calls if c[2] is None]
    assert len(eval_calls) == 4 and sorted(r for c in eval_calls for r in c[1]) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_ipo_with_the_kl_term_is_refused_when_the_trainer_is_built(tokenizer, tmp_path):
    """Issue 10 item 12, as a run meets it: the scheme is built by the trainer, before any step."""
    with pytest.raises(UserError, match="loss_type=ipo.*tidpo_kl_alpha"):
        tidpo_trainer(tokenizer, tmp_path, loss_type="ipo")
    trainer = tidpo_trainer(tokenizer, tmp_path, loss_type="ipo", tidpo_kl_alpha=0.0)
    assert trainer.evaluate()["eval_loss"] > 0
