"""``tgdpo``: the cached token rewards against a naive full-softmax log π_r − log π_ref; the loss and its gradients
against the authors' ``dpo_loss`` (dvlab-research/TGDPO ``train/tgdpo/trainer.py``, ``pref_loss: sigmoid``) re-typed
on a naive per-row forward of policy, reference and guidance model; negative weights (α·β·r > 1) kept, as upstream;
the cache; the whole pipeline through the CLI."""

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
from tokenweight.weights.tgdpo import CONTRAST
from tokenweight.weights.tisdpo import cache as reward_cache

BETA, ALPHA = 0.1, 0.5  # examples/llama3_8b_instruct_tgdpo.yaml


@pytest.fixture
def models(tmp_path, tokenizer):
    """Saved guidance model, reference and a third (other) tiny model."""
    return save_tiny_models(tmp_path, tokenizer, {"guide": 31, "reference": 32, "other": 33})


def token_logps(model, batch, row: int) -> torch.Tensor:
    """Per completion token log-probs of one unpadded row (full log_softmax)."""
    length = int(batch["attention_mask"][row].sum())
    ids = batch["input_ids"][row, :length]
    logps = torch.log_softmax(model(input_ids=ids[None]).logits[0, :-1].float(), -1).gather(1, ids[1:, None])[:, 0]
    return logps[batch["completion_mask"][row, 1:length].bool()]


def upstream_tgdpo_loss(policy, reference, guide, batch, beta: float, alpha: float) -> torch.Tensor:
    """``dpo_loss`` (sigmoid): −logsigmoid((β(1 + αβ r_w) ρ_w).sum − (β(1 − αβ r_l) ρ_l).sum), r = log π_r − log π_ref
    per token (no gradient), the batch mean."""
    pairs = batch["input_ids"].shape[0] // 2
    losses = []
    for b in range(pairs):
        terms = []
        for row in (b, pairs + b):
            with torch.no_grad():
                ref, reward = token_logps(reference, batch, row), token_logps(guide, batch, row)
            rho, r = token_logps(policy, batch, row) - ref, reward - ref
            sign = 1 if row < pairs else -1
            terms.append((beta * (1 + sign * alpha * beta * r) * rho).sum())
        losses.append(-F.logsigmoid(terms[0] - terms[1]))
    return torch.stack(losses).mean()


def tgdpo_config(tmp_path, models, **settings):
    return TokenweightConfig(output_dir=str(tmp_path / "run"), weighting="tgdpo", use_cpu=True, report_to="none",
                             tgdpo_reward_model=models["guide"], **settings)


@pytest.mark.parametrize("alpha", [ALPHA, 4000.0])
def test_rewards_loss_and_gradients_equal_the_authors(tmp_path, tokenizer, models, alpha):
    """α 0.5 (released) and α 4000, where αβ|r| > 1 makes some weights negative: kept, as upstream."""
    config = tgdpo_config(tmp_path, models, tgdpo_alpha=alpha)
    assert config.effective_beta == BETA and TokenweightConfig(output_dir="/tmp/x").tgdpo_alpha == ALPHA
    raw = datasets.Dataset.from_list(standard_rows(4))
    summary = {}
    train = prepare_split(config, models["reference"], tokenizer, raw, "train", summary)  # reference = run's model

    guide, reference = make_model(len(tokenizer), seed=31), make_model(len(tokenizer), seed=32)
    full, _ = tokenize_preference_dataset(raw, tokenizer)
    folder = tmp_path / "run" / "tgdpo-rewards"
    cached = reward_cache.read_rewards(folder, reward_cache.read_manifest(folder, CONTRAST), CONTRAST)
    for side, got in zip(("chosen", "rejected"), cached):
        for got_row, row in zip(got, full):
            ids = torch.tensor([row["prompt_ids"] + row[f"{side}_ids"]])
            with torch.no_grad():
                logps = [torch.log_softmax(m(input_ids=ids).logits[0].double(), -1) for m in (guide, reference)]
            start = len(row["prompt_ids"])
            want = [(logps[0] - logps[1])[start + k - 1, token].item() for k, token in enumerate(row[f"{side}_ids"])]
            assert got_row == pytest.approx(want, abs=1e-5)
    assert summary["train"]["tgdpo"]["pairs"] == 4

    batch = PreferenceCollator(tokenizer.pad_token_id)(list(train))
    trainer = TokenweightTrainer(make_model(len(tokenizer), seed=3), make_model(len(tokenizer), seed=32), config,
                                 processing_class=tokenizer)
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    policy = make_model(len(tokenizer), seed=3).train()
    expected = upstream_tgdpo_loss(policy, reference, guide, batch, BETA, alpha)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    metrics = {name: values[-1] for name, values in trainer._metrics["train"].items()}
    negative = metrics["tgdpo/negative_weights"].item()
    assert negative == 0 if alpha == ALPHA else negative > 0
    loss.backward()
    expected.backward()
    for (name, p_oracle), p_ours in zip(policy.named_parameters(), trainer.model.parameters()):
        assert torch.allclose(p_oracle.grad, p_ours.grad, atol=1e-6, rtol=1e-4), name
    # the guidance matters: plain DPO gives another loss
    dpo = TokenweightTrainer(make_model(len(tokenizer), seed=3), make_model(len(tokenizer), seed=32),
                             TokenweightConfig(output_dir=str(tmp_path / "dpo"), use_cpu=True, report_to="none"),
                             processing_class=tokenizer)
    assert abs(dpo.compute_loss(dpo.model, batch).item() - loss.item()) > 1e-5


def test_a_stale_cache_a_missing_model_and_a_bad_alpha_are_user_errors(tmp_path, tokenizer, models):
    raw = datasets.Dataset.from_list(standard_rows(4))
    config = tgdpo_config(tmp_path, models)
    context = PrepareContext(config=config, model_path=models["reference"], tokenizer=tokenizer,
                             output_dir=config.output_dir)
    scheme = build_scheme("tgdpo", config)
    first = scheme.prepare(raw, "train", context)
    assert scheme.prepare(raw, "train", context)["chosen_weights"] == first["chosen_weights"]  # read back
    manifest = tmp_path / "run" / "tgdpo-rewards" / "manifest.json"
    other = PrepareContext(config=config, model_path=models["other"], tokenizer=tokenizer,
                           output_dir=config.output_dir)
    with pytest.raises(UserError, match=f"TGDPO token reward cache {manifest} is stale: computed for a different "
                                        "reference"):
        scheme.prepare(raw, "train", other)
    missing = TokenweightConfig(output_dir=str(tmp_path / "x"), weighting="tgdpo", use_cpu=True, report_to="none")
    with pytest.raises(UserError, match="--tgdpo_reward_model PATH"):
        build_scheme("tgdpo", missing).prepare(raw, "train", PrepareContext(
            config=missing, model_path=models["reference"], tokenizer=tokenizer))
    with pytest.raises(UserError, match="tgdpo_alpha"):
        TokenweightConfig(output_dir="/tmp/tw", weighting="tgdpo", tgdpo_alpha=-1.0)


def test_the_whole_pipeline_through_the_cli(tmp_path, monkeypatch):
    """guidance model = DPO from the base model, precompute, train with --weighting tgdpo (small KeyFact, 1 step)."""
    monkeypatch.setenv("TOKENWEIGHT_CACHE", str(tmp_path.parent / "keyfact-cache"))
    monkeypatch.chdir(tmp_path)
    tiny, steps = TINY_KEYFACT_ARGS, ONE_STEP_ARGS
    assert main(["train", *tiny, *steps, "--output_dir", "guide"]) == 0
    assert main(["precompute", "--output", "rewards", "tgdpo", "--tgdpo_reward_model", "guide", *tiny]) == 0
    written = reward_cache.read_manifest(tmp_path / "rewards", CONTRAST)
    assert written["num_rows"] == 8 and set(written["fingerprint"]) == set(CONTRAST.parts)
    assert main(["train", *tiny, *steps, "--weighting", "tgdpo", "--tgdpo_reward_model", "guide", "--tgdpo_rewards",
                 "rewards", "--output_dir", "tgdpo"]) == 0
    results = json.loads((tmp_path / "tgdpo/results.json").read_text())
    assert results["data"]["train"]["tgdpo"]["pairs"] == 8 and results["data"]["eval"]["tgdpo"]["pairs"] == 4
    log = next(e for e in json.loads((tmp_path / "tgdpo/trainer_state.json").read_text())["log_history"]
               if "loss" in e)
    assert log["tgdpo/negative_weights"] == 0 and log["weights/min"] < 1 < log["weights/max"]


def test_the_bench_trains_the_guidance_model_inside_a_tgdpo_row():
    from tokenweight.keyfact.bench import default_schemes
    from tokenweight.keyfact.bench.rows import bench_row
    from tokenweight.keyfact.bench.trained_models import trained_model_rows

    assert "tgdpo" in default_schemes()
    rows = trained_model_rows(bench_row("tgdpo"))
    assert {key: (r.scheme, r.overrides) for key, r in rows.items()} == {"tgdpo_reward_model": ("uniform", {})}
