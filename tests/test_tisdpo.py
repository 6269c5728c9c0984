"""``tisdpo``: transforms in closed form and against oracles re-typed from the authors' code (github.com/exlaw/TIS-DPO
``preference_datasets.py``: the transforms, the chosen side's negation, EOS weight 0; ``token_weight_estimation.py``:
scores rounded to 2 decimals); the weights precompute writes and training reads vs a naive per-row computation from
the two contrastive models; stale caches; ``--swap_pairs``; the whole pipeline through the CLI."""

from __future__ import annotations

import json

import datasets
import pytest
import torch
from conftest import ONE_STEP_ARGS, TINY_KEYFACT_ARGS, make_model, save_tiny_models, standard_rows

from tokenweight.cli import main
from tokenweight.config import TokenweightConfig
from tokenweight.data import PreferenceCollator, tokenize_preference_dataset
from tokenweight.errors import UserError
from tokenweight.pipeline import prepare_split
from tokenweight.sources import swap_pairs
from tokenweight.weights import PrepareContext, batch_inputs, build_scheme
from tokenweight.weights.tisdpo import Transform, response_weights, stable_ranks
from tokenweight.weights.tisdpo import cache as reward_cache


def test_threshold_and_scale_presets_in_closed_form():
    scores = torch.tensor([-3.0, -1.5, -0.75, 0.0, 0.6, 1.5, 2.0, 9.0])
    default = Transform(name="threshold_and_scale")
    torch.testing.assert_close(default(scores), torch.tensor([0.7, 0.7, 0.85, 1.0, 1.12, 1.3, 1.3, 1.3]))
    aggressive = Transform(name="threshold_and_scale", score_min=-2, score_max=2, weight_min=0.5, weight_max=1.5)
    torch.testing.assert_close(aggressive(scores), torch.tensor([0.5, 0.625, 0.8125, 1.0, 1.15, 1.375, 1.5, 1.5]))


def test_binary_and_rank_based_in_closed_form():
    scores = torch.tensor([0.3, -0.2, 0.0, 0.3, 1.0])
    assert stable_ranks(scores).tolist() == [2.0, 0.0, 1.0, 3.0, 4.0]  # the tie keeps its order in the response
    ranked = Transform(name="rank_based", weight_min=0.5, weight_max=1.5)
    torch.testing.assert_close(ranked(scores), torch.tensor([1.0, 0.5, 0.75, 1.25, 1.5]))
    torch.testing.assert_close(ranked(torch.tensor([7.0])), torch.tensor([1.0]))
    # k = int(5 · 60 / 100) = 3: 1.0 and the tied 0.3s are the top 3; with k = 2 the tie straddles the cut: both 0
    torch.testing.assert_close(Transform(name="binary", top_percent=60)(scores), torch.tensor([1., 0, 0, 1, 1]))
    torch.testing.assert_close(Transform(name="binary", top_percent=40)(scores), torch.tensor([0., 0, 0, 0, 1]))
    torch.testing.assert_close(Transform(name="binary", top_percent=100)(scores), torch.ones(5))
    assert Transform().name == "rank_based" and Transform().top_percent == 100  # upstream's README command


# ---- oracles re-typed from exlaw/TIS-DPO preference_datasets.py (list in, list out, as upstream)

def upstream_binary(nums, top_percent=100):
    """``binary_weight_transform``."""
    sorted_nums = sorted(nums, reverse=True)
    threshold_index = int(len(nums) * top_percent / 100)
    num_to_value = {num: 1 if i < threshold_index else 0 for i, num in enumerate(sorted_nums)}
    return [num_to_value[num] for num in nums]


def upstream_threshold_and_scale(nums, min_val=-1.5, max_val=1.5, min_scale=0.7, max_scale=1.3):
    """``threshold_and_scale_transform``."""
    return [min_scale + (max(min_val, min(max_val, n)) - min_val) * (max_scale - min_scale) / (max_val - min_val)
            for n in nums]


def upstream_rank_based(nums, min_scale=0.7, max_scale=1.3):
    """``rank_based_transform``."""
    sorted_indices = sorted(range(len(nums)), key=lambda k: nums[k])
    result = [1.0 if len(nums) == 1 else min_scale + (i / (len(nums) - 1)) * (max_scale - min_scale)
              for i, _ in enumerate(sorted_indices)]
    return [result[sorted_indices.index(i)] for i in range(len(nums))]


def upstream_response_weights(rewards, chosen: bool, transform):
    """One response as upstream weighs it: raw = round(log π₋ − log π₊, 2) per response token
    (``token_weight_estimation.py``), negated for chosen, transformed (``get_dataset``), EOS appended with weight 0
    (``tokenize_batch_element``). ``rewards``: r̂ = log π₊ − log π₋ of the tokens before EOS."""
    raw = [round(float(-r), 2) for r in rewards]
    return transform([-x for x in raw] if chosen else raw) + [0]


UPSTREAM = {"rank_based": upstream_rank_based, "threshold_and_scale": upstream_threshold_and_scale,
            "binary": upstream_binary, "binary60": lambda nums: upstream_binary(nums, 60),
            "aggressive": lambda nums: upstream_threshold_and_scale(nums, -2.0, 2.0, 0.5, 1.5)}
OURS = {"rank_based": Transform(), "threshold_and_scale": Transform(name="threshold_and_scale"),
        "binary": Transform(name="binary"), "binary60": Transform(name="binary", top_percent=60),
        "aggressive": Transform(name="threshold_and_scale", score_min=-2, score_max=2, weight_min=0.5, weight_max=1.5)}


@pytest.mark.parametrize("name", sorted(UPSTREAM))
def test_response_weights_equal_the_authors_transforms(name):
    """Responses with tied rounded scores (0.304 and 0.296 both round to 0.3), a one-token response, the EOS."""
    generator = torch.Generator().manual_seed(0)
    responses = [[0.304, -0.2, 0.0, 0.296, 1.0, 0.3, -2.5, 1.7], [0.42],
                 *(torch.randn(n, generator=generator).mul(1.5).tolist() for n in (3, 7, 12, 30))]
    for rewards in responses:
        for chosen in (True, False):
            got = response_weights(rewards + [5.0], chosen, OURS[name], [False] * len(rewards) + [True])
            want = upstream_response_weights(rewards, chosen, UPSTREAM[name])
            assert got == pytest.approx(want, abs=1e-6), (rewards, chosen)
    tied = response_weights([0.304, -0.2, 0.296, 0.0], True, Transform())  # ranks 2, 0, 3, 1: ties in order
    assert tied == pytest.approx([0.7 + 2 / 3 * 0.6, 0.7, 1.3, 0.7 + 1 / 3 * 0.6])


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
    return save_tiny_models(tmp_path, tokenizer, {"positive": 11, "negative": 12, "other": 13})


def tisdpo_config(tmp_path, contrastive, **settings):
    values = {"tisdpo_positive_model": contrastive["positive"], "tisdpo_negative_model": contrastive["negative"],
              **settings}
    return TokenweightConfig(output_dir=str(tmp_path / "run"), weighting="tisdpo", use_cpu=True, report_to="none",
                             **values)


SETTINGS = {"rank_based": {}, "threshold_and_scale": {"tisdpo_transform": "threshold_and_scale"},
            "aggressive": {"tisdpo_transform": "threshold_and_scale", "tisdpo_preset": "aggressive"},
            "binary60": {"tisdpo_transform": "binary", "tisdpo_top_percent": 60}}


@pytest.mark.parametrize("transform", sorted(SETTINGS))
def test_written_and_read_weights_equal_the_naive_computation(tmp_path, tokenizer, contrastive, transform):
    """The rewards against a naive full-softmax computation; the weights training reads against the authors'
    pipeline (:func:`upstream_response_weights`) applied to the cached rewards, EOS last with weight 0."""
    settings = SETTINGS[transform]
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

    eos = tokenizer.eos_token_id
    assert all(row[f"{side}_ids"][-1] == eos and eos not in row[f"{side}_ids"][:-1] for row in full
               for side in ("chosen", "rejected"))
    want = {side: [upstream_response_weights(row[:-1], side == "chosen", UPSTREAM[transform]) for row in got]
            for side, got in zip(("chosen", "rejected"), cached)}
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
    tiny, steps = TINY_KEYFACT_ARGS, ONE_STEP_ARGS
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
    assert log["weights/min"] == 0.0 and 0.7 < log["weights/max"] <= 1.3  # EOS weighs 0, the rest rank onto [0.7, 1.3]
    assert log["weights/last_token"] == 0.0  # every completion ends with EOS
