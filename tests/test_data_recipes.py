"""Every recipe's dataset shape, as a tiny stand-in file of the same columns and types as on the hub, loads and
tokenizes exactly as TRL 1.16 does — ``trl.data_utils.maybe_extract_prompt`` then DPOTrainer's tokenization (TRL
is the oracle only; its DPOTrainer alone fails on a string prompt beside conversational pairs) — and every
recipe's splits exist.

Shapes (hub dataset cards): ``HuggingFaceH4/ultrafeedback_binarized`` has a string ``prompt`` beside
conversational ``chosen``/``rejected`` that repeat the user turn (TRL's implicit-prompt rule), plus ``prompt_id``,
``messages``, ``score_chosen``, ``score_rejected``; ``princeton-nlp/llama3-ultrafeedback`` (SimPO's on-policy data)
has ``prompt_id``, ``prompt``, ``all_generated_responses``, ``all_rm_scores`` and the same conversational pairs; the
OTPO ``mimasss/*`` on-policy sets were generated with SimPO's pipeline and are given its shape (assumed: not
checked against the hub here, which the tests cannot reach); ``trl-lib/ultrafeedback_binarized`` has conversational
pairs without ``prompt``; ``Anthropic/hh-rlhf`` has ``chosen``/``rejected`` strings with the dialogue as an implicit
prompt.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
import yaml
from conftest import make_model, standard_rows
from trl import DPOConfig, DPOTrainer
from trl.data_utils import maybe_extract_prompt

from tokenweight.data import tokenize_preference_dataset
from tokenweight.sources import load_preference_split

RECIPES = sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml"))


def _turns(row: dict) -> tuple[list, list, list]:
    user = [{"role": "user", "content": row["prompt"]}]
    return (user, user + [{"role": "assistant", "content": row["chosen"].strip()}],
            user + [{"role": "assistant", "content": row["rejected"].strip()}])


def h4_ultrafeedback(row: dict, i: int) -> dict:
    user, chosen, rejected = _turns(row)
    return {"prompt": row["prompt"], "prompt_id": f"{i:064x}", "chosen": chosen, "rejected": rejected,
            "messages": chosen, "score_chosen": 8.5, "score_rejected": 4.0}


def simpo_on_policy(row: dict, i: int) -> dict:
    user, chosen, rejected = _turns(row)
    return {"prompt_id": f"{i:064x}", "prompt": row["prompt"],
            "all_generated_responses": [row["chosen"].strip(), row["rejected"].strip()],
            "all_rm_scores": [0.9, 0.1], "chosen": chosen, "rejected": rejected}


def trl_ultrafeedback(row: dict, i: int) -> dict:
    _, chosen, rejected = _turns(row)
    return {"chosen": chosen, "rejected": rejected, "score_chosen": 8.0, "score_rejected": 3.0}


def hh_rlhf(row: dict, i: int) -> dict:
    dialogue = f"\n\nHuman: {row['prompt']}\n\nAssistant:"
    return {"chosen": dialogue + row["chosen"], "rejected": dialogue + row["rejected"]}


#: dataset id -> (row shape, the splits it has on the hub)
SHAPES = {
    "HuggingFaceH4/ultrafeedback_binarized": (h4_ultrafeedback, ("train_prefs", "test_prefs", "train_sft",
                                                                 "test_sft", "train_gen", "test_gen")),
    "princeton-nlp/llama3-ultrafeedback": (simpo_on_policy, ("train", "test")),
    "mimasss/llama3-8b-instruct-uf": (simpo_on_policy, ("train",)),
    "mimasss/llama3-8b-instruct-helpsteer2": (simpo_on_policy, ("train",)),
    "mimasss/llama3.2-3b-instruct-uf": (simpo_on_policy, ("train",)),
    "mimasss/llama3.2-3b-instruct-helpsteer2": (simpo_on_policy, ("train",)),
    "trl-lib/ultrafeedback_binarized": (trl_ultrafeedback, ("train", "test")),
    "Anthropic/hh-rlhf": (hh_rlhf, ("train", "test")),
}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_names_a_known_dataset_shape_and_existing_splits(recipe):
    values = yaml.safe_load(recipe.read_text())
    assert values["dataset_name"] in SHAPES, f"{recipe.name}: add a stand-in shape for {values['dataset_name']}"
    splits = SHAPES[values["dataset_name"]][1]
    assert values.get("dataset_split", "train") in splits
    assert values.get("eval_split") is None or values["eval_split"] in splits


@pytest.mark.parametrize("shape", sorted({fn.__name__: fn for fn, _ in SHAPES.values()}.items()), ids=lambda s: s[0])
def test_recipe_shapes_tokenize_as_trl(shape, tokenizer, tmp_path):
    _, make_row = shape
    rows = [make_row(row, i) for i, row in enumerate(standard_rows(4))]
    path = tmp_path / "stand-in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    loaded = load_preference_split(str(path), "train")
    ours, stats = tokenize_preference_dataset(loaded, tokenizer, max_length=None)
    assert stats.rows == 4 and not stats.dropped_too_long
    vocab = len(tokenizer)
    trl = DPOTrainer(model=make_model(vocab, seed=0), ref_model=make_model(vocab, seed=1),
                     train_dataset=datasets.Dataset.from_list([maybe_extract_prompt(r) for r in rows]),
                     processing_class=tokenizer,
                     args=DPOConfig(output_dir=str(tmp_path / "trl"), max_length=None, report_to=[], use_cpu=True,
                                    dataset_num_proc=None, save_strategy="no"))
    assert len(trl.train_dataset) == len(ours) == 4
    for i in range(4):
        for column in ("prompt_ids", "chosen_ids", "rejected_ids"):
            assert ours[i][column] == trl.train_dataset[i][column], (i, column)
    if make_row is not hh_rlhf:  # conversational: the prompt is the user turn, the completion the assistant's
        assert all(p == [{"role": "user", "content": r["prompt"]}] for p, r in zip(ours["prompt"],
                                                                                     standard_rows(4)))
        assert all(c[0]["role"] == "assistant" and len(c) == 1 for c in ours["chosen"])


def test_train_runs_on_the_ultrafeedback_binarized_shape(tiny_model_dir, tmp_path):
    from tokenweight.cli import main

    path = tmp_path / "train_prefs.jsonl"
    path.write_text("".join(json.dumps(h4_ultrafeedback(r, i)) + "\n" for i, r in enumerate(standard_rows(4))))
    assert main(["train", "--model_name_or_path", str(tiny_model_dir), "--dataset_name", str(path), "--output_dir",
                 str(tmp_path / "run"), "--max_steps", "1", "--per_device_train_batch_size", "2", "--max_length",
                 "64", "--report_to", "none", "--save_strategy", "no", "--eval_fraction", "0.5"]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["data"]["train"]["rows"] == results["data"]["eval"]["rows"] == 2
