"""`tokenweight eval` against naive per-pair recomputations on a tiny fixture (model, reference, reward model)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForSequenceClassification

from conftest import make_model, standard_rows
from tokenweight.cli import main
from tokenweight.evaluate import distinct_n

BETA = 0.1
MAX_NEW = 5
N_GEN = 4


@pytest.fixture
def fixture_dirs(tmp_path, tokenizer):
    """Policy, reference and reward-model folders, and a JSONL preference file with per-token weight columns."""
    dirs = {}
    for name, seed in (("policy", 0), ("reference", 1)):
        dirs[name] = tmp_path / name
        make_model(len(tokenizer), seed=seed).save_pretrained(dirs[name])
        tokenizer.save_pretrained(dirs[name])
    torch.manual_seed(2)
    reward = LlamaForSequenceClassification(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, num_labels=1, pad_token_id=tokenizer.pad_token_id))
    dirs["reward"] = tmp_path / "reward"
    reward.save_pretrained(dirs["reward"])
    tokenizer.save_pretrained(dirs["reward"])
    rows = standard_rows(6)
    for i, row in enumerate(rows):
        for side in ("chosen", "rejected"):
            n = len(tokenizer(row["prompt"] + row[side] + tokenizer.eos_token)["input_ids"]) - \
                len(tokenizer(row["prompt"])["input_ids"])
            row[f"{side}_weights"] = [0.5 + ((i + k) % 3) for k in range(n)]
    dirs["data"] = tmp_path / "pairs.jsonl"
    dirs["data"].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return dirs, rows


def naive_logps(model, tokenizer, prompt: str, completion: str) -> tuple[torch.Tensor, list[int]]:
    """Per-token log-probs of the completion tokens (EOS included) and their ids, one pair at a time."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    ids = tokenizer(prompt + completion + tokenizer.eos_token)["input_ids"]
    with torch.no_grad():
        logps = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
    targets = ids[len(prompt_ids):]
    return torch.stack([logps[len(prompt_ids) - 1 + k, t] for k, t in enumerate(targets)]), targets


def naive_greedy(model, tokenizer, prompt: str) -> list[int]:
    ids = tokenizer(prompt)["input_ids"]
    out = []
    with torch.no_grad():
        for _ in range(MAX_NEW):
            token = int(model(torch.tensor([ids + out])).logits[0, -1].argmax())
            if token == tokenizer.eos_token_id:
                break
            out.append(token)
    return out


def test_eval_matches_naive_recomputation(fixture_dirs, tokenizer, tmp_path):
    dirs, rows = fixture_dirs
    out = tmp_path / "eval.json"
    assert main(["eval", "--model_name_or_path", str(dirs["policy"]), "--ref_model_name_or_path",
                 str(dirs["reference"]), "--dataset_name", str(dirs["data"]), "--weighting", "column",
                 "--reward_model", str(dirs["reward"]), "--num_generations", str(N_GEN), "--max_new_tokens",
                 str(MAX_NEW), "--batch_size", "3", "--export_dir", str(tmp_path / "exports"),
                 "--output", str(out)]) == 0
    results = json.loads(out.read_text())
    policy = AutoModelForCausalLM.from_pretrained(dirs["policy"]).eval()
    reference = AutoModelForCausalLM.from_pretrained(dirs["reference"]).eval()

    # implicit reward, unweighted and weighted by the dataset's columns
    won = won_weighted = 0.0
    margins, margins_weighted, logp_won = [], [], 0
    for row in rows:
        ratios, weights, policy_sums = {}, {}, {}
        for side in ("chosen", "rejected"):
            lp, _ = naive_logps(policy, tokenizer, row["prompt"], row[side])
            lr, _ = naive_logps(reference, tokenizer, row["prompt"], row[side])
            ratios[side], weights[side], policy_sums[side] = lp - lr, torch.tensor(row[f"{side}_weights"]), lp.sum()
        margin = BETA * (ratios["chosen"].sum() - ratios["rejected"].sum())
        weighted = BETA * ((weights["chosen"] * ratios["chosen"]).sum() - (weights["rejected"] * ratios["rejected"]).sum())
        margins.append(margin)
        margins_weighted.append(weighted)
        won += float(margin > 0) + 0.5 * float(margin == 0)
        won_weighted += float(weighted > 0) + 0.5 * float(weighted == 0)
        logp_won += int(policy_sums["chosen"] > policy_sums["rejected"])
    assert results["pairs"] == len(rows)
    assert results["preference"]["pref_acc"] == pytest.approx(won / len(rows))
    assert results["preference"]["logp_acc"] == pytest.approx(logp_won / len(rows))
    assert results["preference"]["margin"] == pytest.approx(torch.stack(margins).mean().item(), abs=1e-5)
    assert results["weighted"]["weighted_pref_acc"] == pytest.approx(won_weighted / len(rows))
    assert results["weighted"]["weighted_margin"] == pytest.approx(torch.stack(margins_weighted).mean().item(),
                                                                   abs=1e-5)
    assert won_weighted != won or results["weighted"]["weighted_margin"] != pytest.approx(results["preference"]["margin"])

    # greedy generations: length and distinct-n by hand
    prompts = [row["prompt"] for row in rows[:N_GEN]]
    generations = [naive_greedy(policy, tokenizer, p) for p in prompts]
    generation = results["generation"]
    assert generation["gen_len"] == pytest.approx(sum(map(len, generations)) / N_GEN)
    for n in (1, 2):
        grams = [tuple(g[i:i + n]) for g in generations for i in range(len(g) - n + 1)]
        assert generation[f"distinct_{n}"] == pytest.approx(len(set(grams)) / len(grams))
        assert distinct_n(generations, n) == pytest.approx(len(set(grams)) / len(grams))

    # win rate against the reference's greedy generations under the reward model, one text at a time
    reward = LlamaForSequenceClassification.from_pretrained(dirs["reward"]).eval()

    def score(prompt: str, ids: list[int]) -> float:
        text = prompt + " " + tokenizer.decode(ids, skip_special_tokens=True).strip()
        with torch.no_grad():
            return reward(torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])).logits[0, 0].item()

    baseline = [naive_greedy(reference, tokenizer, p) for p in prompts]
    wins = [float(score(p, g) > score(p, b)) + 0.5 * float(score(p, g) == score(p, b))
            for p, g, b in zip(prompts, generations, baseline)]
    assert results["win_rate"]["against"] == "reference generations"
    assert results["win_rate"]["win_rate"] == pytest.approx(sum(wins) / N_GEN)
    assert results["win_rate"]["reward_policy"] == pytest.approx(
        sum(score(p, g) for p, g in zip(prompts, generations)) / N_GEN, abs=1e-5)

    # exports
    texts = [tokenizer.decode(g, skip_special_tokens=True).strip() for g in generations]
    alpaca = json.loads((tmp_path / "exports" / "alpaca_eval.json").read_text())
    assert alpaca == [{"instruction": p, "output": t, "generator": "policy"} for p, t in zip(prompts, texts)]
    arena = [json.loads(line) for line in (tmp_path / "exports" / "arena_hard.jsonl").read_text().splitlines()]
    assert [a["question_id"] for a in arena] == [str(i) for i in range(N_GEN)]
    assert all(a["model_id"] == a["model"] == "policy" for a in arena)
    assert [a["choices"] for a in arena] == [[{"index": 0, "turns": [{"content": t}]}] for t in texts]


def test_eval_without_reference_uses_chosen_answers(fixture_dirs, tokenizer, tmp_path, capsys):
    dirs, rows = fixture_dirs
    out = tmp_path / "eval.json"
    main(["eval", "--model_name_or_path", str(dirs["policy"]), "--dataset_name", str(dirs["data"]),
          "--reward_model", str(dirs["reward"]), "--num_generations", "2", "--max_new_tokens", "3",
          "--output", str(out)])
    results = json.loads(out.read_text())
    assert set(results["preference"]) == {"logp_acc"}  # no reference: no implicit reward
    assert results["win_rate"]["against"] == "dataset chosen answers"
    capsys.readouterr()
    assert main(["eval", "--model_name_or_path", str(dirs["policy"]), "--dataset_name", str(dirs["data"]),
                 "--weighting", "uniform", "--num_generations", "0", "--output", str(out), "--overwrite"]) == 2
    assert "tokenweight: error: --weighting needs a reference" in capsys.readouterr().err
