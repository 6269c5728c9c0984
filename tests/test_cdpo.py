"""``cdpo``: the scores against the authors' ``calculate_ce_score`` re-typed (softmax((1 + 1)·z₊ − 1·z₋) of the
token, over one unpadded prompt + response); the weights and the loss and its gradients against ``CDPOTrainer.dpo_loss``
(chosen 1 with ``only_neg``, or p; rejected 1 − p; the EOS 1) on a naive per-row forward; the cache; the CLI."""

from __future__ import annotations

import json

import datasets
import pytest
import torch
import torch.nn.functional as F
from conftest import ONE_STEP_ARGS, TINY_KEYFACT_ARGS, make_model, save_tiny_models, standard_rows

from tokenweight.cli import main
from tokenweight.config import TokenweightConfig
from tokenweight.data import PreferenceCollator, tokenize_preference_dataset
from tokenweight.errors import UserError
from tokenweight.pipeline import prepare_split
from tokenweight.trainer import TokenweightTrainer
from tokenweight.weights import PrepareContext, build_scheme
from tokenweight.weights.cdpo import CONTRAST
from tokenweight.weights.tisdpo import cache as score_cache

BETA = 0.1  # get_cdpo_config


@pytest.fixture
def models(tmp_path, tokenizer):
    return save_tiny_models(tmp_path, tokenizer, {"positive": 41, "negative": 42, "other": 43})


def upstream_ce_prob(positive, negative, prompt_ids: list[int], completion_ids: list[int]) -> list[float]:
    """``calculate_ce_score`` on one row: ``cd_logits = (1 + 1) * pos_logits - 1 * neg_logits``, softmax, the
    probability of each next token; the completion's part."""
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        cd_logits = (1 + 1) * positive(input_ids=ids).logits.double() - 1 * negative(input_ids=ids).logits.double()
    probs = cd_logits.softmax(dim=-1)[0, :-1].gather(1, ids[0, 1:, None])[:, 0]
    return probs[len(prompt_ids) - 1:].tolist()


def upstream_dpo_loss(policy, reference, batch, chosen_w, rejected_w, beta: float) -> torch.Tensor:
    """``CDPOTrainer.dpo_loss``: −logsigmoid(β(Σ w_c ρ_c − Σ w_r ρ_r)) per pair (per-token ρ), the mean."""
    pairs = batch["input_ids"].shape[0] // 2
    losses = []
    for b in range(pairs):
        terms = []
        for row, weights in ((b, chosen_w[b]), (pairs + b, rejected_w[b])):
            length = int(batch["attention_mask"][row].sum())
            ids = batch["input_ids"][row, :length]
            mask = batch["completion_mask"][row, 1:length].bool()
            with torch.no_grad():
                ref = torch.log_softmax(reference(input_ids=ids[None]).logits[0, :-1].float(), -1)
            pol = torch.log_softmax(policy(input_ids=ids[None]).logits[0, :-1].float(), -1)
            rho = (pol - ref).gather(1, ids[1:, None])[:, 0][mask]
            terms.append((torch.tensor(weights) * rho).sum())
        losses.append(-F.logsigmoid(beta * (terms[0] - terms[1])))
    return torch.stack(losses).mean()


@pytest.mark.parametrize("only_rejected", [True, False])
def test_scores_weights_loss_and_gradients_equal_the_authors(tmp_path, tokenizer, models, only_rejected):
    config = TokenweightConfig(output_dir=str(tmp_path / "run"), weighting="cdpo", use_cpu=True, report_to="none",
                               cdpo_positive_model=models["positive"], cdpo_negative_model=models["negative"],
                               cdpo_only_rejected=only_rejected)
    assert config.effective_beta == BETA and config.cdpo_contrast == 1.0
    raw = datasets.Dataset.from_list(standard_rows(4))
    train = prepare_split(config, models["positive"], tokenizer, raw, "train", {})

    full, _ = tokenize_preference_dataset(raw, tokenizer)
    positive, negative = make_model(len(tokenizer), seed=41), make_model(len(tokenizer), seed=42)
    folder = tmp_path / "run" / "cdpo-scores"
    cached = score_cache.read_rewards(folder, score_cache.read_manifest(folder, CONTRAST), CONTRAST)
    want = {}
    for side, got in zip(("chosen", "rejected"), cached):
        want[side] = [upstream_ce_prob(positive, negative, row["prompt_ids"], row[f"{side}_ids"]) for row in full]
        for got_row, want_row in zip(got, want[side]):
            assert got_row == pytest.approx(want_row, abs=1e-5)
    # dpo_loss: chosen ce_prob + [1] (only_neg: all 1), rejected 1 − (ce_prob + [0]); the EOS is the appended token
    eos = tokenizer.eos_token_id
    assert all(row["chosen_ids"][-1] == eos and row["rejected_ids"][-1] == eos for row in full)
    chosen_w = [[1.0] * len(p) if only_rejected else p[:-1] + [1.0] for p in want["chosen"]]
    rejected_w = [[1 - x for x in p[:-1]] + [1.0] for p in want["rejected"]]
    for got, want_rows in ((train["chosen_weights"], chosen_w), (train["rejected_weights"], rejected_w)):
        for got_row, want_row in zip(got, want_rows, strict=True):
            assert got_row == pytest.approx(want_row, abs=1e-6)
    assert min(min(row) for row in rejected_w) < 0.98  # some scores are well above 1/vocab (random tiny models)

    batch = PreferenceCollator(tokenizer.pad_token_id)(list(train))
    trainer = TokenweightTrainer(make_model(len(tokenizer), seed=3), make_model(len(tokenizer), seed=4), config,
                                 processing_class=tokenizer)
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    policy = make_model(len(tokenizer), seed=3).train()
    expected = upstream_dpo_loss(policy, make_model(len(tokenizer), seed=4), batch, chosen_w, rejected_w, BETA)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    loss.backward()
    expected.backward()
    for (name, p_oracle), p_ours in zip(policy.named_parameters(), trainer.model.parameters()):
        assert torch.allclose(p_oracle.grad, p_ours.grad, atol=1e-6, rtol=1e-4), name


def test_a_stale_cache_and_a_missing_model_are_user_errors(tmp_path, tokenizer, models):
    raw = datasets.Dataset.from_list(standard_rows(4))
    settings = {"cdpo_positive_model": models["positive"], "cdpo_negative_model": models["negative"]}
    config = TokenweightConfig(output_dir=str(tmp_path / "run"), weighting="cdpo", use_cpu=True, report_to="none",
                               **settings)
    context = PrepareContext(config=config, model_path=models["positive"], tokenizer=tokenizer,
                             output_dir=config.output_dir)
    first = build_scheme("cdpo", config).prepare(raw, "train", context)
    manifest = tmp_path / "run" / "cdpo-scores" / "manifest.json"
    sharper = TokenweightConfig(output_dir=str(tmp_path / "run"), weighting="cdpo", use_cpu=True, report_to="none",
                                cdpo_contrast=2.0, **settings)
    with pytest.raises(UserError, match=f"{manifest} is stale: computed for a different cdpo_contrast"):
        build_scheme("cdpo", sharper).prepare(raw, "train", PrepareContext(
            config=sharper, model_path=models["positive"], tokenizer=tokenizer, output_dir=config.output_dir))
    other = TokenweightConfig(output_dir=str(tmp_path / "run"), weighting="cdpo", use_cpu=True, report_to="none",
                              cdpo_positive_model=models["positive"], cdpo_negative_model=models["other"])
    with pytest.raises(UserError, match="stale: computed for a different negative_model"):
        build_scheme("cdpo", other).prepare(raw, "train", PrepareContext(
            config=other, model_path=models["positive"], tokenizer=tokenizer, output_dir=config.output_dir))
    assert build_scheme("cdpo", config).prepare(raw, "train", context)["rejected_weights"] == first["rejected_weights"]
    missing = TokenweightConfig(output_dir=str(tmp_path / "x"), weighting="cdpo", use_cpu=True, report_to="none",
                                cdpo_positive_model=models["positive"])
    with pytest.raises(UserError, match="--cdpo_negative_model PATH"):
        build_scheme("cdpo", missing).prepare(raw, "train", PrepareContext(
            config=missing, model_path=models["positive"], tokenizer=tokenizer))


def test_the_whole_pipeline_through_the_cli(tmp_path, monkeypatch):
    """π₊ = DPO, π₋ = DPO on swapped pairs, precompute, train with --weighting cdpo (small KeyFact, 1 step each)."""
    monkeypatch.setenv("TOKENWEIGHT_CACHE", str(tmp_path.parent / "keyfact-cache"))
    monkeypatch.chdir(tmp_path)
    tiny, steps = TINY_KEYFACT_ARGS, ONE_STEP_ARGS
    assert main(["train", *tiny, *steps, "--output_dir", "pos"]) == 0
    assert main(["train", *tiny, *steps, "--swap_pairs", "true", "--output_dir", "neg"]) == 0
    models = ["--cdpo_positive_model", "pos", "--cdpo_negative_model", "neg"]
    assert main(["precompute", "--output", "scores", "cdpo", *models, *tiny]) == 0
    assert score_cache.read_manifest(tmp_path / "scores", CONTRAST)["num_rows"] == 8
    assert main(["train", *tiny, *steps, "--weighting", "cdpo", *models, "--cdpo_scores", "scores",
                 "--output_dir", "cdpo"]) == 0
    results = json.loads((tmp_path / "cdpo/results.json").read_text())
    assert results["data"]["train"]["cdpo"]["pairs"] == 8 and results["data"]["train"]["cdpo"][
        "mean_weight_chosen"] == 1.0
    log = next(e for e in json.loads((tmp_path / "cdpo/trainer_state.json").read_text())["log_history"] if "loss" in e)
    assert 0 < log["weights/min"] < 1 and log["weights/max"] == 1.0


def test_the_bench_trains_both_models_inside_a_cdpo_row():
    from tokenweight.keyfact.bench import default_schemes
    from tokenweight.keyfact.bench.rows import bench_row
    from tokenweight.keyfact.bench.trained_models import trained_model_rows

    assert "cdpo" in default_schemes()
    rows = trained_model_rows(bench_row("cdpo"))
    assert {key: (r.scheme, r.overrides) for key, r in rows.items()} == {
        "cdpo_positive_model": ("uniform", {}), "cdpo_negative_model": ("uniform", {"swap_pairs": True})}
