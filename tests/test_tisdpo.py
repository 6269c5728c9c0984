"""``tisdpo``: transforms in closed form; the weights precompute writes and training reads vs a naive per-row
computation from the two contrastive models; stale caches; ``--swap_pairs``; the whole pipeline through the CLI."""

from __future__ import annotations

import json

import datasets
import pytest
import torch
from conftest import make_model, standard_rows

from tokenweight.cli import main
from tokenweight.config import TokenweightConfig
from tokenweight.data import PreferenceCollator, tokenize_preference_dataset
from tokenweight.errors import UserError
from tokenweight.run import prepare_split
from tokenweight.sources import swap_pairs
from tokenweight.weights import PrepareContext, batch_inputs, build_scheme
from tokenweight.weights.tisdpo import Transform, mean_ranks
from tokenweight.weights.tisdpo import cache as reward_cache


def test_threshold_and_scale_presets_in_closed_form():
    scores = torch.tensor([-3.0, -1.5, -0.75, 0.0, 0.6, 1.5, 2.0, 9.0])
    default = Transform()
    torch.testing.assert_close(default(scores), torch.tensor([0.7, 0.7, 0.85, 1.0, 1.12, 1.3, 1.3, 1.3]))
    aggressive = Transform(score_min=-2, score_max=2, weight_min=0.5, weight_max=1.5)
    torch.testing.assert_close(aggressive(scores), torch.tensor([0.5, 0.625, 0.8125, 1.0, 1.15, 1.375, 1.5, 1.5]))


def test_binary_and_rank_based():
    scores = torch.tensor([0.3, -0.2, 0.0, 0.3, 1.0])
    binary = Transform(name="binary", threshold=0.0)
    torch.testing.assert_close(binary(scores), torch.tensor([1.3, 0.7, 0.7, 1.3, 1.3]))
    torch.testing.assert_close(mean_ranks(scores), torch.tensor([2.5, 0.0, 1.0, 2.5, 4.0]))
    ranked = Transform(name="rank_based", weight_min=0.5, weight_max=1.5)
    torch.testing.assert_close(ranked(scores), torch.tensor([1.125, 0.5, 0.75, 1.125, 1.5]))
    torch.testing.assert_close(ranked(torch.tensor([7.0])), torch.tensor([1.0]))


def naive_transform(score: float, name: str) -> float:
    if name == "threshold_and_scale":
        return 0.7 + (min(max(score, -1.5), 1.5) + 1.5) / 3.0 * 0.6
    if name == "aggressive":
        return 0.5 + (min(max(score, -2.0), 2.0) + 2.0) / 4.0 * 1.0
    return 1.3 if score > 0 else 0.7  # binary


def naive_rewards(positive, negative, prompt_ids: list[int], completion_ids: list[int]) -> list[float]:
    """r̂ of each completion token: full log_softmax of both models over one unpadded row."""
    ids = torch.tensor([prompt_ids + completion_ids])
    rewards = []
    for model in (positive, negative):
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
        rewards.append([logp[len(prompt_ids) + k - 1, token].item() for k, token in enumerate(completion_ids)])
    return [p - n for p, n in zip(*rewards)]


@pytest.fixture
def contrastive(tmp_path, tokenizer):
    """Saved positive, negative and a third (other) tiny model."""
    paths = {}
    for name, seed in (("positive", 11), ("negative", 12), ("other", 13)):
        paths[name] = str(tmp_path / name)
        make_model(len(tokenizer), seed=seed).save_pretrained(paths[name])
        tokenizer.save_pretrained(paths[name])
    return paths


def tisdpo_config(tmp_path, contrastive, **settings):
    values = {"tisdpo_positive_model": contrastive["positive"], "tisdpo_negative_model": contrastive["negative"],
              **settings}
    return TokenweightConfig(output_dir=str(tmp_path / "run"), weighting="tisdpo", use_cpu=True, report_to="none",
                             **values)


@pytest.mark.parametrize("transform", ["threshold_and_scale", "aggressive", "binary"])
def test_written_and_read_weights_equal_the_naive_computation(tmp_path, tokenizer, contrastive, transform):
    settings = ({"tisdpo_preset": "aggressive"} if transform == "aggressive" else
                {"tisdpo_transform": transform} if transform == "binary" else {})
    config = tisdpo_config(tmp_path, contrastive, **settings)
    raw = datasets.Dataset.from_list(standard_rows(4))
    summary = {}
    train = prepare_split(config, contrastive["positive"], tokenizer, raw, "train", summary)

    positive, negative = make_model(len(tokenizer), seed=11), make_model(len(tokenizer), seed=12)
    full, _ = tokenize_preference_dataset(raw, tokenizer)
    want_rewards = {side: [naive_rewards(positive, negative, row["prompt_ids"], row[f"{side}_ids"]) for row in full]
                    for side in ("chosen", "rejected")}
    folder = tmp_path / "run" / "tisdpo-weights"
    cached = reward_cache.read_rewards(folder, reward_cache.read_manifest(folder))  # what precompute writes
    for side, got in zip(("chosen", "rejected"), cached):
        for got_row, want_row in zip(got, want_rewards[side]):
            assert got_row == pytest.approx(want_row, abs=1e-5)
    assert max(abs(r) for row in want_rewards["chosen"] for r in row) > 0.05  # the two models really differ

    sign = {"chosen": 1.0, "rejected": -1.0}
    want = {side: [[naive_transform(sign[side] * r, transform) for r in row] for row in want_rewards[side]]
            for side in sign}
    batch = PreferenceCollator(tokenizer.pad_token_id)(list(train))  # what training reads
    weights = build_scheme("tisdpo", config).compute(batch_inputs(batch, None)).weights
    for r, side_row in enumerate([*want["chosen"], *want["rejected"]]):
        assert weights[r][batch["loss_mask"][r]].tolist() == pytest.approx(side_row, abs=1e-5)
    assert summary["train"]["tisdpo"]["pairs"] == 4
    assert summary["train"]["tisdpo"]["tokens"] == sum(len(row) for side in want.values() for row in side)


def test_a_stale_cache_is_an_error_naming_the_file(tmp_path, tokenizer, contrastive):
    raw = datasets.Dataset.from_list(standard_rows(4))
    config = tisdpo_config(tmp_path, contrastive)
    context = PrepareContext(config=config, model_path=contrastive["positive"], tokenizer=tokenizer,
                             output_dir=config.output_dir)
    scheme = build_scheme("tisdpo", config)
    first = scheme.prepare(raw, "train", context)
    assert scheme.prepare(raw, "train", context)["chosen_weights"] == first["chosen_weights"]  # read back
    manifest = tmp_path / "run" / "tisdpo-weights" / "manifest.json"
    other_model = tisdpo_config(tmp_path, contrastive, tisdpo_negative_model=contrastive["other"])
    with pytest.raises(UserError, match=f"{manifest} is stale: computed for a different negative_model"):
        build_scheme("tisdpo", other_model).prepare(raw, "train", PrepareContext(
            config=other_model, model_path=contrastive["positive"], tokenizer=tokenizer,
            output_dir=config.output_dir))
    with pytest.raises(UserError, match="stale: computed for a different dataset"):
        scheme.prepare(datasets.Dataset.from_list(standard_rows(5)), "train", context)
    (manifest.parent / "rewards.safetensors").write_bytes(b"junk")
    with pytest.raises(UserError, match="rewards.safetensors is damaged"):
        scheme.prepare(raw, "train", context)


def test_missing_contrastive_model_is_a_user_error(tmp_path, tokenizer, contrastive):
    config = tisdpo_config(tmp_path, contrastive, tisdpo_negative_model=None)
    context = PrepareContext(config=config, model_path=contrastive["positive"], tokenizer=tokenizer)
    with pytest.raises(UserError, match="--negative_model PATH"):
        build_scheme("tisdpo", config).prepare(datasets.Dataset.from_list(standard_rows(2)), "train", context)
    with pytest.raises(UserError, match="tisdpo_transform"):
        tisdpo_config(tmp_path, contrastive, tisdpo_transform="softmax")


def test_swap_pairs_exchanges_chosen_rejected_and_their_weights():
    rows = datasets.Dataset.from_list([{"prompt": "p", "chosen": "a", "rejected": "b", "chosen_weights": [1.0],
                                        "rejected_weights": [2.0, 3.0]}])
    assert swap_pairs(rows)[0] == {"prompt": "p", "chosen": "b", "rejected": "a", "chosen_weights": [2.0, 3.0],
                                   "rejected_weights": [1.0]}


def test_the_whole_pipeline_through_the_cli(tmp_path, monkeypatch):
    """π₊ = DPO, π₋ = DPO on swapped pairs, precompute, train with --weighting tisdpo (small KeyFact, 1 step each)."""
    monkeypatch.setenv("TOKENWEIGHT_CACHE", str(tmp_path.parent / "keyfact-cache"))
    monkeypatch.chdir(tmp_path)
    tiny = ["--keyfact_model_size", "small", "--keyfact_train_size", "8", "--keyfact_eval_size", "4"]
    steps = ["--max_steps", "1", "--per_device_train_batch_size", "8", "--logging_steps", "1"]
    assert main(["train", *tiny, *steps, "--output_dir", "pos"]) == 0
    assert main(["train", *tiny, *steps, "--swap_pairs", "true", "--output_dir", "neg"]) == 0
    assert json.loads((tmp_path / "neg/results.json").read_text())["data"]["train"]["swapped_pairs"] == 8
    models = ["--positive_model", "pos", "--negative_model", "neg"]
    assert main(["precompute", "--output", "rewards", "tisdpo", *models, *tiny]) == 0
    written = reward_cache.read_manifest(tmp_path / "rewards")
    assert written["num_rows"] == 8 and set(written["fingerprint"]) == set(reward_cache.PARTS)
    assert main(["train", *tiny, *steps, "--weighting", "tisdpo", *models, "--tisdpo_weights", "rewards",
                 "--output_dir", "tis"]) == 0
    results = json.loads((tmp_path / "tis/results.json").read_text())
    assert results["data"]["train"]["tisdpo"]["pairs"] == 8 and results["data"]["eval"]["tisdpo"]["pairs"] == 4
    log = next(e for e in json.loads((tmp_path / "tis/trainer_state.json").read_text())["log_history"] if "loss" in e)
    assert log["weights/max"] != log["weights/min"] and 0.7 <= log["weights/min"] <= log["weights/max"] <= 1.3
