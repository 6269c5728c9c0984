"""Attention → weights (spec §3 eqs. 7–9, 3; §8.3, §8.5, §8.6) against a naive eager-attention oracle."""

import pytest
import torch
from attention_fixtures import CONVERSATIONAL_ROWS, STANDARD_ROWS, make_bpe_tokenizer, make_judge, tokenized

from tokenweight.masks import to_shifted
from tokenweight.weights.attention import WeightStats, attention_weights
from tokenweight.weights.attention.judge import default_template, judge_pair_for_row, template_pieces
from tokenweight.weights.attention.normalize import response_weights, sink_fix
from tokenweight.weights import attention as _attention_scheme  # noqa: F401  (registers "attention")
from tokenweight.weights.base import SCHEMES, WeightingInputs, build_scheme


@pytest.fixture(scope="module")
def setup():
    tokenizer = make_bpe_tokenizer()
    return tokenizer, make_judge(len(tokenizer)), tokenized(STANDARD_ROWS + CONVERSATIONAL_ROWS, tokenizer)


def _eager_row(model, ids, layers):
    """Head-mean attention of the last token, eager ``output_attentions``, one unpadded sequence."""
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            attentions = model(input_ids=torch.tensor([ids]), output_attentions=True).attentions
    finally:
        model.set_attn_implementation("sdpa")
    return [sum(attentions[i][0, :, -1, :].mean(0)[j].item() for i in layers) / len(layers) for j in range(len(ids))]


def _naive_weights(a_cr, a_rc):
    """Eqs. (7), (8), (9), (3) written out with Python floats."""
    n = len(a_cr)
    averaged = [(x / sum(a_cr) + y / sum(a_rc)) / 2 for x, y in zip(a_cr, a_rc)]
    if n >= 5:
        rest = sum(averaged[1:])
        averaged = [1 / n] + [w * (1 - 1 / n) / rest for w in averaged[1:]]
    return [n * w for w in averaged]


def test_weights_match_naive_eager_oracle(setup):
    tokenizer, model, rows = setup
    got = attention_weights(model, tokenizer, rows, layers=[0, -1], batch_size=3)
    pieces = template_pieces(tokenizer, default_template())
    for index, row in enumerate(rows):
        pair = judge_pair_for_row(row, index, tokenizer, pieces, None)
        eager = [_eager_row(model, pair.inputs[o], [0, 1]) for o in (0, 1)]
        for k, column in enumerate(("chosen_weights", "rejected_weights")):
            spans = [pair.spans[o][k] for o in (0, 1)]
            want = _naive_weights(*(eager[o][s:e] for o, (s, e) in enumerate(spans))) + [0.0] * pair.trailing[k]
            assert len(got[index][column]) == len(row[column.replace("weights", "ids")])
            assert got[index][column] == pytest.approx(want, abs=1e-4)


def test_mean_one_and_eos_rule(setup):
    tokenizer, model, rows = setup
    for eos_weight in (0.0, 1.0):
        for row, weights in zip(rows, attention_weights(model, tokenizer, rows, eos_weight=eos_weight)):
            for column in ("chosen", "rejected"):
                values = weights[f"{column}_weights"]
                trailing = 2 if isinstance(row["prompt"], list) else 1  # <|im_end|> "\n" vs EOS
                answer = values[:len(values) - trailing]
                assert sum(answer) / len(answer) == pytest.approx(1.0, abs=1e-9)
                assert values[len(answer):] == [eos_weight] * trailing
                assert len(answer) < 5 or answer[0] == pytest.approx(1.0)  # sink fix: w̃_0 = 1/n → w_0 = 1


def test_swapping_chosen_and_rejected_swaps_weights(setup):
    tokenizer, model, rows = setup
    swapped = [{**row, "chosen_ids": row["rejected_ids"], "rejected_ids": row["chosen_ids"]} for row in rows]
    for a, b in zip(attention_weights(model, tokenizer, rows), attention_weights(model, tokenizer, swapped)):
        assert a["chosen_weights"] == pytest.approx(b["rejected_weights"], abs=1e-5)
        assert a["rejected_weights"] == pytest.approx(b["chosen_weights"], abs=1e-5)


def test_single_pair_call_and_cap_counts_unjudged(setup):
    tokenizer, model, rows = setup
    full = attention_weights(model, tokenizer, rows[2])
    assert set(full) == {"chosen_weights", "rejected_weights"}
    pieces = template_pieces(tokenizer, default_template())
    cap = sum(len(p) for p in pieces) + 12  # room for 4 question + 4 + 4 answer tokens
    capped, stats = attention_weights(model, tokenizer, rows[2], max_length=cap, log=True)
    chosen = capped["chosen_weights"]
    assert len(chosen) == len(full["chosen_weights"])
    assert sum(chosen[:4]) == pytest.approx(4.0) and chosen[4:-1] == [1.0] * (len(chosen) - 5)
    assert stats.truncated_pairs == 1
    assert stats.unjudged_tokens == (len(chosen) - 1 - 4) + (len(capped["rejected_weights"]) - 1 - 4)


def test_sink_fix_formula():
    stats = WeightStats()
    w = torch.tensor([0.5, 0.1, 0.2, 0.1, 0.1], dtype=torch.float64)
    fixed = sink_fix(w, stats)
    assert fixed.tolist() == pytest.approx([0.2, 0.1 * 0.8 / 0.5, 0.2 * 0.8 / 0.5, 0.1 * 0.8 / 0.5, 0.1 * 0.8 / 0.5])
    short = torch.tensor([0.7, 0.1, 0.1, 0.1], dtype=torch.float64)
    assert sink_fix(short, stats) is short  # n < 5: unchanged
    assert stats.zero_attention_sums == 0


def test_zero_attention_sum_is_counted():
    stats = WeightStats()
    weights = response_weights((torch.zeros(3), torch.tensor([0.0, 1.0, 1.0])), answer_length=3, trailing=1,
                               eos_weight=0.0, stats=stats)
    assert stats.zero_attention_sums == 1
    assert weights == pytest.approx([0.5, 1.25, 1.25, 0.0])  # uniform (1/3 each) averaged with (0, 1/2, 1/2), ×3


def test_attention_scheme_masks_the_collated_token_weights():
    assert "attention" in SCHEMES and not SCHEMES["attention"].needs_hidden_states
    token_weights = torch.tensor([[0.0, 0.0, 1.5, 0.5, 0.0], [0.0, 2.0, 0.0, 0.0, 0.0]])
    completion_mask = torch.tensor([[0, 0, 1, 1, 0], [0, 1, 1, 0, 0]])
    inputs = WeightingInputs(input_ids=torch.zeros(2, 5, dtype=torch.long), attention_mask=torch.ones(2, 5),
                             completion_mask=completion_mask, loss_mask=completion_mask[:, 1:].bool(),
                             batch={"token_weights": to_shifted(token_weights)})  # as the collator gives it
    out = build_scheme("attention").compute(inputs)
    assert out.weights.tolist() == [[0.0, 1.5, 0.5, 0.0], [2.0, 0.0, 0.0, 0.0]]
