"""KeyFact v2 metrics against naive, unbatched computations on the small base model, and the bench rows' weights."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tokenweight.keyfact.bench.rows import ORACLE_ROWS, bench_row, oracle_weights
from tokenweight.keyfact.bench.runs import with_oracle_weights
from tokenweight.keyfact import (build_keyfact, greedy_outcomes, key_slot, key_weight_rank, key_weight_stats,
                                 keyfact_base_model, keyfact_item_metrics, nonkey_kl, resolve_facts)
from tokenweight.keyfact.facts import fill, find_row


@pytest.fixture(scope="module")
def small():
    path = keyfact_base_model(size="small", progress=False)
    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_pretrained(path)
    with torch.no_grad():  # a policy that differs from its reference
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return policy, AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def _ids(tokenizer, messages, generation_prompt=False):
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_item_metrics_match_naive_forwards(small):
    policy, reference, tokenizer = small
    rows = list(build_keyfact(n_train=1, n_eval=9, seed=3)["eval"])
    facts = resolve_facts(None)
    items = keyfact_item_metrics(policy, reference, tokenizer, rows, max_new_tokens=6, batch_size=4)
    for k, row in enumerate(rows):
        family = next(f for f in facts["families"] if f["name"] == row["family"])
        facts_row = find_row(facts, row["family"], row["subject"])
        # the clean answer template, one unpadded forward, read at the key slot
        clean = {**row, "chosen": [{"role": "assistant", "content": fill(family["answer"], row["subject"], row["key"])}],
                 "noisy": False}
        prompt_ids = _ids(tokenizer, row["prompt"], generation_prompt=True)
        full = _ids(tokenizer, row["prompt"] + clean["chosen"])
        slot = len(prompt_ids) + key_slot(tokenizer, clean)[0]
        with torch.no_grad():
            logps = torch.log_softmax(policy(torch.tensor([full])).logits[0, slot - 1].double(), dim=-1)
        words = [facts_row["key"], *facts_row["distractors"]]
        scores = torch.stack([logps[tokenizer.convert_tokens_to_ids(w)] for w in words])
        assert items["forced_acc"][k] == float(scores[0] > scores[1:].max())
        assert items["key_margin"][k] == pytest.approx((scores[0] - scores[1:].max()).item(), abs=1e-4)
        assert items["lure_margin"][k] == pytest.approx((scores[0] - scores[1]).item(), abs=1e-4)
        assert items["answer_mass"][k] == pytest.approx(scores.exp().sum().item(), abs=1e-5)
        # KL on the chosen answer's non-key tokens, position by position
        full = _ids(tokenizer, row["prompt"] + row["chosen"])
        key, length = key_slot(tokenizer, row)
        with torch.no_grad():
            p = torch.log_softmax(policy(torch.tensor([full])).logits[0].double(), dim=-1)
            q = torch.log_softmax(reference(torch.tensor([full])).logits[0].double(), dim=-1)
        kls = [(p[t].exp() * (p[t] - q[t])).sum() for t in range(len(prompt_ids) - 1, len(full) - 1)
               if t - (len(prompt_ids) - 1) != key]
        assert len(kls) == length - 1
        assert items["kl_nonkey"][k] == pytest.approx(torch.stack(kls).mean().item(), rel=1e-4)
    assert min(items["kl_nonkey"]) > 0
    # every greedy miss falls in exactly one bucket
    for k in range(len(rows)):
        buckets = [items[m][k] for m in ("key_acc", "greedy_lure", "greedy_other", "greedy_outside", "format_fail")]
        assert sorted(buckets) == [0.0] * 4 + [1.0]
    assert nonkey_kl(reference, reference, tokenizer, rows[:3]).abs().max() < 1e-6


def test_greedy_outcomes_by_hand():
    rows = [r for r in build_keyfact(n_train=1, n_eval=40, seed=0)["eval"] if r["family"] == "capitals"][:5]
    facts = resolve_facts(None)
    distractors = [find_row(facts, r["family"], r["subject"])["distractors"] for r in rows]
    keys = [rows[0]["key"], distractors[1][0], distractors[2][1], "banana", None]
    assert greedy_outcomes(rows, keys) == ["correct", "lure", "other_answer", "outside", "format"]


def test_key_weight_rank_by_hand():
    weights = [[1.0, 1.0, 1.0, 1.0], [0.0, 4.0, 0.0], [0.7, 1.3, 0.9, 1.1, 0.0], [2.0, 1.0, 1.0]]
    # uniform: (n + 1)/2; the heaviest: 1; third heaviest of five: 3; tied for 2nd and 3rd: 2.5
    assert key_weight_rank(weights, [2, 1, 2, 1]) == [2.5, 1.0, 3.0, 2.5]


def test_key_weight_stats_by_hand():
    shares, relative = key_weight_stats([[1.0, 1.0, 1.0, 1.0], [0.0, 4.0, 0.0], [2.0, 1.0, 1.0]], [1, 1, 0])
    assert shares == pytest.approx([1 / 3, 1.0, 0.5])
    assert relative == pytest.approx([1.0, 3.0, 1.5])
    with pytest.raises(ValueError, match="row 0"):
        key_weight_stats([[1.0, 0.0]], [1])


def test_oracle_rows_put_the_uniform_total_or_one_on_each_key(small):
    _, _, tokenizer = small
    assert bench_row("oracle").scheme == bench_row("oracle-unit").scheme == "column"
    for row in build_keyfact(n_train=6, n_eval=1, seed=1, label_noise=0.5)["train"]:
        for mode, value in (("total", None), ("unit", 1.0)):
            columns = oracle_weights(tokenizer, row, None, mode)
            for side in ("chosen", "rejected"):
                weights = columns[f"{side}_weights"]
                completion = _ids(tokenizer, row["prompt"] + row[side])[len(_ids(tokenizer, row["prompt"], True)):]
                assert len(weights) == len(completion)
                key = max(range(len(weights)), key=weights.__getitem__)
                assert weights[key] == (len(weights) if value is None else value) and sum(weights) == weights[key]
                word = row["key"] if (side == "chosen") != row["noisy"] else row["wrong_key"]
                assert tokenizer.decode([completion[key]]).strip() == word


def test_the_runs_add_each_rows_oracle_columns_to_a_whole_split(small):
    """``with_oracle_weights`` (the key slots of every row at once) gives each row :func:`oracle_weights`."""
    _, _, tokenizer = small
    rows = build_keyfact(n_train=6, n_eval=1, seed=2, label_noise=0.5)["train"]
    for label, mode in ORACLE_ROWS.items():
        added = with_oracle_weights(rows, bench_row(label), tokenizer, None)
        assert [{side: r[side] for side in ("chosen_weights", "rejected_weights")} for r in added] == [
            oracle_weights(tokenizer, row, None, mode) for row in rows]
    assert with_oracle_weights(rows, bench_row("uniform"), tokenizer, None) is rows


def test_tidpo_kl_ablation_has_uniform_weights(small):
    from tokenweight.config import TokenweightConfig
    from tokenweight.data import PreferenceCollator, tokenize_preference_dataset
    from tokenweight.weights import batch_inputs, build_scheme

    policy, _, tokenizer = small
    row = bench_row("tidpo:kl")
    config = TokenweightConfig(output_dir="/tmp/unused", weighting=row.scheme, **row.overrides)
    scheme = build_scheme(row.scheme, config)
    assert scheme.settings.kl_alpha > 0 and scheme.settings.gamma == 0
    pairs, _ = tokenize_preference_dataset(build_keyfact(n_train=4, n_eval=1)["train"], tokenizer, max_length=128)
    batch = PreferenceCollator(pad_token_id=tokenizer.pad_token_id)([pairs[i] for i in range(4)])
    weights = scheme.compute(batch_inputs(batch, policy)).weights
    assert torch.allclose(weights, batch["loss_mask"].float(), atol=1e-6)
    weights_only = bench_row("tidpo:weights")
    assert weights_only.overrides == {"tidpo_kl_alpha": 0.0, "tidpo_gamma": 0.0}


def test_metrics_of_the_prompt_are_computed_once_per_distinct_prompt(small):
    # the evaluation set repeats prompts (one question, several filler/distractor draws); what depends on the prompt
    # only is the same on every row of a prompt and equals the metrics of the distinct prompts measured alone
    policy, reference, tokenizer = small
    rows = list(build_keyfact(n_train=1, n_eval=64, seed=3)["eval"])
    prompts = [str(row["prompt"]) for row in rows]
    assert len(set(prompts)) < len(rows)  # repeats exist
    distinct = [rows[prompts.index(p)] for p in dict.fromkeys(prompts)]
    items = keyfact_item_metrics(policy, reference, tokenizer, rows, max_new_tokens=6, batch_size=8)
    alone = keyfact_item_metrics(policy, reference, tokenizer, distinct, max_new_tokens=6, batch_size=8)
    index = {p: k for k, p in enumerate(dict.fromkeys(prompts))}
    for metric in ("forced_acc", "key_margin", "lure_margin", "answer_mass", "gen_len", "key_acc", "format_fail"):
        assert [items[metric][k] for k in range(len(rows))] == [alone[metric][index[p]] for p in prompts], metric
    # the KL reads each row's own chosen answer (its filler): it differs between rows of one prompt
    repeated = next(p for p in prompts if prompts.count(p) > 1)
    kls = {items["kl_nonkey"][k] for k, p in enumerate(prompts) if p == repeated}
    assert len(kls) > 1
