"""``benchmarks/keyfact_shortcut.py``: its per-token log-ratios against the trainer's scoring path, and a run on the
small base model."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from keyfact_shortcut import completion_logratios, main, sentence_span  # noqa: E402

from tokenweight.data import tokenize_preference_dataset  # noqa: E402
from tokenweight.evaluate import score_pairs  # noqa: E402
from tokenweight.keyfact import build_keyfact, keyfact_base_model  # noqa: E402


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
    assert groups[("shortcut-rejected", "rejected")][1] != 0.0
    assert all(0 < float(row[-1]) < 1 for row in table)  # σ(−βΔ)
    assert "| variant | sentence on |" in capsys.readouterr().out
