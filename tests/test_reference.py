"""precompute_ref_log_probs: the reference scored once equals scoring it every step, for the loss and for eval."""

from __future__ import annotations

import json

import datasets
import pytest
import torch
from conftest import make_model, standard_rows

from tokenweight.cli import main
from tokenweight.config import TokenweightConfig
from tokenweight.data import PreferenceCollator, tokenize_preference_dataset
from tokenweight.logps import naive_token_logps
from tokenweight.reference import precompute_reference_logps
from tokenweight.trainer import TokenweightTrainer


@pytest.fixture
def pairs(tokenizer):
    return tokenize_preference_dataset(datasets.Dataset.from_list(standard_rows(5)), tokenizer)[0]


def test_precomputed_values_are_the_reference_log_probs_of_each_completion_token(tokenizer, pairs):
    ref = make_model(len(tokenizer), seed=2)
    scored = precompute_reference_logps(ref, pairs, tokenizer.pad_token_id, batch_size=2, progress=False)
    for row in scored:
        for side in ("chosen", "rejected"):
            ids = torch.tensor([row["prompt_ids"] + row[f"{side}_ids"]])
            expected = naive_token_logps(ref(ids).logits, ids)[0, len(row["prompt_ids"]) - 1:]
            assert torch.allclose(torch.tensor(row[f"{side}_ref_logps"]), expected, atol=1e-5)


def test_precomputed_columns_collate_to_the_live_reference_scores_also_after_an_empty_prompt(tokenizer):
    rows = standard_rows(3)
    rows[1]["prompt"] = ""
    pairs = tokenize_preference_dataset(datasets.Dataset.from_list(rows), tokenizer)[0]
    assert pairs[1]["prompt_ids"] == []
    ref = make_model(len(tokenizer), seed=2)
    scored = precompute_reference_logps(ref, pairs, tokenizer.pad_token_id, batch_size=2, progress=False)
    for side in ("chosen", "rejected"):  # one value per completion token; no position predicts token 0: 0.0
        ids = torch.tensor([pairs[1][f"{side}_ids"]])
        values = scored[1][f"{side}_ref_logps"]
        assert len(values) == ids.shape[1] and values[0] == 0.0
        assert torch.allclose(torch.tensor(values[1:]), naive_token_logps(ref(ids).logits, ids)[0], atol=1e-5)
    batch = PreferenceCollator(tokenizer.pad_token_id)(list(scored))
    live = ref(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], score_tokens=True).token_logps
    assert batch["ref_token_logps"].shape == live.shape
    torch.testing.assert_close(batch["ref_token_logps"], live * batch["loss_mask"], atol=1e-5, rtol=0)
    assert batch["loss_mask"].sum() == sum(len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in pairs) - 2


def _loss(tokenizer, pairs, precompute: bool, weighting: str = "uniform", **settings):
    config = TokenweightConfig(output_dir="/tmp/tw-ref", use_cpu=True, report_to="none", beta=0.1,
                               weighting=weighting, precompute_ref_log_probs=precompute, **settings)
    trainer = TokenweightTrainer(make_model(len(tokenizer), seed=1), make_model(len(tokenizer), seed=2), config,
                                 train_dataset=pairs, processing_class=tokenizer)
    batch = PreferenceCollator(tokenizer.pad_token_id)(list(trainer.train_dataset))
    return trainer, trainer.compute_loss(trainer.model, batch)


@pytest.mark.parametrize("weighting", ["uniform", "otpo"])
def test_training_loss_with_precomputed_reference_equals_live_reference(tokenizer, pairs, weighting):
    live_trainer, live = _loss(tokenizer, pairs, False, weighting)
    cached_trainer, cached = _loss(tokenizer, pairs, True, weighting)
    assert cached.item() == pytest.approx(live.item(), abs=1e-6)
    assert cached_trainer.ref_model is None and live_trainer.ref_model is not None  # the reference was freed


def test_tidpo_kl_term_needs_the_live_reference(tokenizer, pairs):
    with pytest.raises(ValueError, match="cannot serve weighting='tidpo'"):
        _loss(tokenizer, pairs, True, "tidpo")
    _, cached = _loss(tokenizer, pairs, True, "tidpo", tidpo_kl_alpha=0.0, tidpo_gamma=0.0)
    _, live = _loss(tokenizer, pairs, False, "tidpo", tidpo_kl_alpha=0.0, tidpo_gamma=0.0)
    assert cached.item() == pytest.approx(live.item(), abs=1e-6)


def test_tokenweight_train_with_precomputed_reference(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENWEIGHT_CACHE", str(tmp_path.parent / "keyfact-cache"))
    out = tmp_path / "run"
    assert main(["train", "--keyfact_model_size", "small", "--keyfact_train_size", "16", "--keyfact_eval_size", "8",
                 "--per_device_train_batch_size", "4", "--num_train_epochs", "1", "--precompute_ref_log_probs",
                 "true", "--output_dir", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert abs(results["before"]["margin"]) < 1e-4      # the policy starts as the (precomputed) reference
    assert abs(results["after"]["margin"]) > 1e-4       # and moved away from it
