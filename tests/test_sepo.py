"""``sepo``: the selection against an oracle re-typed from the authors' ``get_topK`` (SteveKGYang/SePO
``token_score.py``: repeated argmax / argmin, ``int(k · N)`` tokens, scores from the second completion token); the
scores against a naive full-softmax computation of log π_oracle − log π_ref; the loss and its gradients against the
authors' ``SelectiveRRHFLoss`` (its SimPO branch: −log σ(mean_{S_w} log π − mean_{S_l} log π), no β, no reference)
on a naive per-row forward; the cache; the whole pipeline through the CLI."""

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
from tokenweight.weights.sepo import CONTRAST, selected_tokens
from tokenweight.weights.tisdpo import cache as score_cache


def upstream_top_k(advantage: torch.Tensor, k: float) -> tuple[list[int], list[int]]:
    """``get_topK`` for one ratio: the positions picked by repeated argmax (selected) and argmin (unselected)."""
    n_token = advantage.shape[-1]
    top, bottom = [], []
    high, low = advantage.clone(), advantage.clone()
    while len(top) < int(k * n_token):
        arg = int(torch.argmax(high))
        top.append(arg)
        high[arg] = -100000
    while len(bottom) < int(k * n_token):
        arg = int(torch.argmin(low))
        bottom.append(arg)
        low[arg] = 100000
    return top, bottom


def test_selection_equals_the_authors_get_top_k():
    """Upstream scores response tokens 1 … T−1 (advantages[len(prompt):] of the shifted log-probs) and its position p
    is completion token p + 1; ties (rounded scores) go to the earlier token."""
    generator = torch.Generator().manual_seed(0)
    responses = [[0.5, 0.3, 0.3, -0.1, 0.3, 0.9, -0.1, 0.0], [1.0], [0.2, -0.4], [0.0] * 6,
                 *(torch.randn(n, generator=generator).round(decimals=1).tolist() for n in (5, 11, 20, 47))]
    for scores in responses:
        for k in (0.3, 0.5, 0.9, 1.0):
            top, bottom = upstream_top_k(torch.tensor(scores[1:]), k)
            want_top = [1.0 if i - 1 in top else 0.0 for i in range(len(scores))]
            want_bottom = [1.0 if i - 1 in bottom else 0.0 for i in range(len(scores))]
            assert selected_tokens(scores, k, highest=True) == want_top, (scores, k)
            assert selected_tokens(scores, k, highest=False) == want_bottom, (scores, k)
    # closed form: T = 8, N = 7, int(0.3 · 7) = 2; top: 0.9 (token 5) and the first 0.3 (token 1, ties to the earlier)
    assert selected_tokens([0.5, 0.3, 0.3, -0.1, 0.3, 0.9, -0.1, 0.0], 0.3, True) == [0, 1, 0, 0, 0, 1, 0, 0]
    assert selected_tokens([0.5, 0.3, 0.3, -0.1, 0.3, 0.9, -0.1, 0.0], 0.3, False) == [0, 0, 0, 1, 0, 0, 1, 0]
    assert selected_tokens([7.0, 1.0, 2.0], 0.3, True) == [0, 0, 0]  # int(0.3 · 2) = 0: nothing


@pytest.fixture
def oracle(tmp_path, tokenizer):
    """Saved oracle, oracle reference and a third (other) tiny model."""
    return save_tiny_models(tmp_path, tokenizer, {"oracle": 21, "reference": 22, "other": 23})


def naive_scores(oracle_model, reference, prompt_ids: list[int], completion_ids: list[int]) -> list[float]:
    """log π_oracle − log π_ref of each completion token: full log_softmax over one unpadded row."""
    ids = torch.tensor([prompt_ids + completion_ids])
    logps = []
    for model in (oracle_model, reference):
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
        logps.append([logp[len(prompt_ids) + k - 1, token].item() for k, token in enumerate(completion_ids)])
    return [a - b for a, b in zip(*logps)]


def upstream_selective_loss(model, batch, masks):
    """``SelectiveRRHFLoss.forward`` (``SimPO`` branch) on a naive per-row forward: the mean log-prob over each
    response's selected tokens, −log σ(chosen − rejected), the batch mean."""
    pairs = batch["input_ids"].shape[0] // 2
    rewards = []
    for row in range(2 * pairs):
        length = int(batch["attention_mask"][row].sum())
        ids = batch["input_ids"][row, :length]
        logps = torch.log_softmax(model(input_ids=ids[None]).logits[0, :-1].float(), -1).gather(1, ids[1:, None])[:, 0]
        completion = logps[batch["completion_mask"][row, 1:length].bool()]
        mask = torch.tensor(masks[row])
        rewards.append((completion * mask).sum() / mask.sum())
    chosen, rejected = torch.stack(rewards[:pairs]), torch.stack(rewards[pairs:])
    return (-F.logsigmoid(chosen - rejected)).mean()


def test_scores_selection_loss_and_gradients_equal_the_authors(tmp_path, tokenizer, oracle):
    config = TokenweightConfig(output_dir=str(tmp_path / "run"), weighting="sepo", use_cpu=True, report_to="none",
                               sepo_oracle_model=oracle["oracle"])
    assert config.effective_beta == 1.0 and config.sepo_chosen_ratio == config.sepo_rejected_ratio == 0.3
    raw = datasets.Dataset.from_list(standard_rows(4))
    summary = {}
    train = prepare_split(config, oracle["reference"], tokenizer, raw, "train", summary)  # reference = the run's model

    full, _ = tokenize_preference_dataset(raw, tokenizer)
    models = make_model(len(tokenizer), seed=21), make_model(len(tokenizer), seed=22)
    folder = tmp_path / "run" / "sepo-scores"
    cached = score_cache.read_rewards(folder, score_cache.read_manifest(folder, CONTRAST), CONTRAST)
    masks = {}
    for side, got in zip(("chosen", "rejected"), cached):
        want = [naive_scores(*models, row["prompt_ids"], row[f"{side}_ids"]) for row in full]
        for got_row, want_row in zip(got, want):
            assert got_row == pytest.approx(want_row, abs=1e-5)
        masks[side] = [[1.0 if i - 1 in upstream_top_k(torch.tensor(row[1:]), 0.3)[side == "rejected"] else 0.0
                        for i in range(len(row))] for row in want]
    assert train["chosen_weights"] == masks["chosen"] and train["rejected_weights"] == masks["rejected"]
    assert summary["train"]["sepo"]["selected_chosen"] == sum(map(sum, masks["chosen"])) > 0

    batch = PreferenceCollator(tokenizer.pad_token_id)(list(train))
    trainer = TokenweightTrainer(make_model(len(tokenizer), seed=3), None, config, processing_class=tokenizer)
    assert trainer.ref_model is None
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    policy = make_model(len(tokenizer), seed=3).train()
    expected = upstream_selective_loss(policy, batch, masks["chosen"] + masks["rejected"])
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    metrics = {name: values[-1] for name, values in trainer._metrics["train"].items()}
    assert metrics["sepo/zeroed_pairs"].value.item() == 0 and 0 < metrics["sepo/selected_chosen"].item() < 0.3
    loss.backward()
    expected.backward()
    for (name, p_oracle), p_ours in zip(policy.named_parameters(), trainer.model.parameters()):
        assert torch.allclose(p_oracle.grad, p_ours.grad, atol=1e-6, rtol=1e-4), name


def test_a_stale_cache_a_missing_oracle_and_bad_ratios_are_user_errors(tmp_path, tokenizer, oracle):
    raw = datasets.Dataset.from_list(standard_rows(4))
    config = TokenweightConfig(output_dir=str(tmp_path / "run"), weighting="sepo", use_cpu=True, report_to="none",
                               sepo_oracle_model=oracle["oracle"])
    context = PrepareContext(config=config, model_path=oracle["reference"], tokenizer=tokenizer,
                             output_dir=config.output_dir)
    scheme = build_scheme("sepo", config)
    first = scheme.prepare(raw, "train", context)
    assert scheme.prepare(raw, "train", context)["chosen_weights"] == first["chosen_weights"]  # read back
    manifest = tmp_path / "run" / "sepo-scores" / "manifest.json"
    other = PrepareContext(config=config, model_path=oracle["other"], tokenizer=tokenizer,
                           output_dir=config.output_dir)
    with pytest.raises(UserError, match=f"SePO oracle score cache {manifest} is stale: computed for a different "
                                        "oracle_reference"):
        scheme.prepare(raw, "train", other)
    missing = TokenweightConfig(output_dir=str(tmp_path / "x"), weighting="sepo", use_cpu=True, report_to="none")
    with pytest.raises(UserError, match="--oracle_model PATH"):
        build_scheme("sepo", missing).prepare(raw, "train", PrepareContext(
            config=missing, model_path=oracle["reference"], tokenizer=tokenizer))
    with pytest.raises(UserError, match="sepo_chosen_ratio"):
        TokenweightConfig(output_dir="/tmp/tw", weighting="sepo", sepo_chosen_ratio=0.0)


def test_the_whole_pipeline_through_the_cli(tmp_path, monkeypatch, capsys):
    """oracle = DPO from the base model, precompute, train with --weighting sepo (small KeyFact, 1 step each)."""
    monkeypatch.setenv("TOKENWEIGHT_CACHE", str(tmp_path.parent / "keyfact-cache"))
    monkeypatch.chdir(tmp_path)
    tiny, steps = TINY_KEYFACT_ARGS, ONE_STEP_ARGS
    assert main(["train", *tiny, *steps, "--output_dir", "oracle"]) == 0
    assert main(["precompute", "--output", "scores", "sepo", "--oracle_model", "oracle", *tiny]) == 0
    written = score_cache.read_manifest(tmp_path / "scores", CONTRAST)
    assert written["num_rows"] == 8 and set(written["fingerprint"]) == set(CONTRAST.parts)
    assert main(["train", *tiny, *steps, "--weighting", "sepo", "--oracle_model", "oracle", "--sepo_scores",
                 "scores", "--output_dir", "sepo"]) == 0
    results = json.loads((tmp_path / "sepo/results.json").read_text())
    assert results["data"]["train"]["sepo"]["pairs"] == 8 and results["data"]["eval"]["sepo"]["pairs"] == 4
    log = next(e for e in json.loads((tmp_path / "sepo/trainer_state.json").read_text())["log_history"] if "loss" in e)
    assert log["weights/min"] == 0.0 and 0 < log["sepo/selected_chosen"] < 0.3 and log["sepo/zeroed_pairs"] == 0
    # the weights command scores its pairs with the same oracle (in memory, as for TIS-DPO)
    capsys.readouterr()
    (tmp_path / "sepo.yaml").write_text("keyfact_model_size: small\nkeyfact_train_size: 8\nkeyfact_eval_size: 4\n"
                                        "sepo_oracle_model: oracle\nsepo_scores: scores\n")
    assert main(["weights", "--config", "sepo.yaml", "--weighting", "sepo", "--num_pairs", "2", "--output",
                 "sepo.html"]) == 0
    assert "sepo_chosen_ratio" in (tmp_path / "sepo.html").read_text()
    assert "SePO selected 10 chosen and 14 rejected of 93 tokens in 2 pairs" in capsys.readouterr().err


def test_the_bench_trains_the_oracle_inside_a_sepo_row():
    from tokenweight.keyfact.bench import default_schemes
    from tokenweight.keyfact.bench.rows import bench_row
    from tokenweight.keyfact.bench.trained_models import trained_model_rows

    assert "sepo" in default_schemes()
    rows = trained_model_rows(bench_row("sepo"))
    assert {key: (r.scheme, r.overrides) for key, r in rows.items()} == {"sepo_oracle_model": ("uniform", {})}
