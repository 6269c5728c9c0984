"""``benchmarks/keyfact_shortcut.py``: its per-token log-ratios against the trainer's scoring path, and a run on the
small base model."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from keyfact_shortcut import completion_logratios, main, sentence_span, side_parts  # noqa: E402

from tokenweight.data import tokenize_preference_dataset  # noqa: E402
from tokenweight.evaluate import score_pairs  # noqa: E402
from tokenweight.keyfact import build_keyfact, key_slot, keyfact_base_model  # noqa: E402
from tokenweight.keyfact.facts import load_facts  # noqa: E402


def test_completion_log_ratios_sum_to_the_trainers_pair_scores():
    path = keyfact_base_model(size="small", progress=False)
    tokenizer, reference = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)
    policy = AutoModelForCausalLM.from_pretrained(path)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    pairs, _ = tokenize_preference_dataset(build_keyfact(n_train=6, n_eval=1, shortcut=0.5)["train"], tokenizer)
    scores = score_pairs(policy, reference, pairs, tokenizer.pad_token_id, batch_size=4, progress=False)
    for side, policy_sum, ref_sum in (("chosen", scores.policy_chosen, scores.ref_chosen),
                                      ("rejected", scores.policy_rejected, scores.ref_rejected)):
        ratios = completion_logratios(policy, reference, list(pairs["prompt_ids"]), list(pairs[f"{side}_ids"]),
                                      tokenizer.pad_token_id, batch_size=4)
        assert [len(r) for r in ratios] == [len(ids) for ids in pairs[f"{side}_ids"]]
        torch.testing.assert_close(torch.stack([r.sum() for r in ratios]), policy_sum - ref_sum, atol=1e-4, rtol=0)


def test_sentence_span_finds_the_sentence_or_nothing():
    assert sentence_span([5, 1, 2, 3, 9], [1, 2, 3]) == range(1, 4)
    assert sentence_span([5, 1, 2, 9], [1, 2, 3]) == range(0)


def test_the_benchmark_splits_the_margin_by_where_the_sentence_is(capsys):
    table = main(["--size", "small", "--train_size", "20", "--variants", "base,shortcut-rejected"])
    groups = {(variant, group): (int(pairs), float(shortcut)) for variant, group, pairs, _, _, shortcut, *_ in table}
    assert set(groups) == {("base", "none"), ("shortcut-rejected", "chosen"), ("shortcut-rejected", "rejected")}
    assert groups[("base", "none")] == (20, 0.0)  # no sentence, no shortcut part
    assert groups[("shortcut-rejected", "chosen")][0] == 2 and groups[("shortcut-rejected", "rejected")][0] == 18
    # DPO pushes the sentence down: it widens the margin where rejected holds it and narrows it where chosen does
    assert groups[("shortcut-rejected", "rejected")][1] > 0.5 and groups[("shortcut-rejected", "chosen")][1] < -0.5
    assert "| variant | sentence on |" in capsys.readouterr().out


def test_side_parts_refuse_a_key_slot_or_sentence_that_is_not_where_the_row_says():
    path = keyfact_base_model(size="small", progress=False)
    tokenizer = AutoTokenizer.from_pretrained(path)
    facts = load_facts()
    sentence = tokenizer(" " + facts["shortcut"], add_special_tokens=False)["input_ids"]
    raw = build_keyfact(n_train=4, n_eval=1, shortcut=1.0)["train"]
    pairs, _ = tokenize_preference_dataset(raw, tokenizer)
    row, ids = raw[0], list(pairs[0]["chosen_ids"])
    slot = key_slot(tokenizer, row, facts, "chosen")
    ratio = torch.arange(len(ids), dtype=torch.float32)
    total, key, shortcut = side_parts(row, ids, ratio, slot, "chosen", sentence, tokenizer)
    span = sentence_span(ids, sentence)
    assert (total, key, shortcut) == (ratio.sum().item(), float(slot[0]), float(sum(span)))
    with pytest.raises(ValueError, match="key slot"):
        side_parts(row, ids, ratio, (slot[0] + 1, slot[1]), "chosen", sentence, tokenizer)
    with pytest.raises(ValueError, match="shortcut sentence is not where the row says"):
        side_parts({**row, "shortcut": "rejected"}, ids, ratio, slot, "chosen", sentence, tokenizer)
