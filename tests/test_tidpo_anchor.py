"""TI-DPO anchors: layout (left-padded prompts → right-padded prompt + anchor), EOS handling, position ids."""

import pytest
import torch

from conftest import make_model
from tidpo_oracles import EOS, PAD, VOCAB, make_batch
from tokenweight.tidpo.anchor import (anchor_token_logps, assemble_anchor_batch, left_padded_prompts,
                                      sample_anchors)

PROMPTS, COMPLETIONS = [3, 6, 1, 4], [4, 2, 5, 3]


@pytest.fixture(scope="module")
def model():
    return make_model(VOCAB, seed=4, initializer_range=0.3)


def test_left_padded_prompts():
    ids, attention, completion = make_batch(PROMPTS, COMPLETIONS)
    prompt_ids, prompt_mask = left_padded_prompts(ids, attention, completion, PAD)
    assert prompt_ids.shape == (4, 6)
    for r, p in enumerate(PROMPTS):
        assert prompt_ids[r, 6 - p:].tolist() == ids[r, :p].tolist()
        assert prompt_ids[r, : 6 - p].tolist() == [PAD] * (6 - p)
        assert prompt_mask[r].tolist() == [0] * (6 - p) + [1] * p


def test_assemble_keeps_tokens_up_to_first_eos():
    prompt_ids = torch.tensor([[0, 0, 5, 6], [7, 8, 9, 10], [0, 0, 0, 11]])
    prompt_mask = (prompt_ids != 0).long()
    new = torch.tensor([[12, EOS, 17, EOS], [13, 14, 15, 16], [EOS, PAD, PAD, PAD]])
    anchor = assemble_anchor_batch(prompt_ids, prompt_mask, new, [EOS], PAD)
    assert anchor.input_ids.tolist() == [[5, 6, 12, EOS, 0, 0, 0, 0], [7, 8, 9, 10, 13, 14, 15, 16],
                                         [11, EOS, 0, 0, 0, 0, 0, 0]]
    assert anchor.attention_mask.tolist() == [[1] * 4 + [0] * 4, [1] * 8, [1] * 2 + [0] * 6]
    assert anchor.completion_mask.tolist() == [[0, 0, 1, 1, 0, 0, 0, 0], [0] * 4 + [1] * 4, [0, 1] + [0] * 6]
    assert anchor.anchor_lengths.tolist() == [2, 4, 1]


def test_greedy_anchor_equals_unpadded_generation(model):
    """top_k = 1 makes sampling greedy: each row equals generating from its prompt alone (no padding)."""
    ids, attention, completion = make_batch(PROMPTS, COMPLETIONS)
    model.train()
    anchor = sample_anchors(model, ids, attention, completion, pad_token_id=PAD, eos_token_id=EOS, top_k=1,
                            max_new_tokens=5)
    assert model.training and all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    model.eval()
    for r, p in enumerate(PROMPTS):
        alone = model.generate(ids[r:r + 1, :p], attention_mask=attention[r:r + 1, :p], do_sample=False,
                               max_new_tokens=5, pad_token_id=PAD, eos_token_id=EOS)[0, p:].tolist()
        if EOS in alone:
            alone = alone[: alone.index(EOS) + 1]
        n = int(anchor.attention_mask[r].sum())
        assert anchor.input_ids[r, :p].tolist() == ids[r, :p].tolist()
        assert anchor.input_ids[r, p:n].tolist() == alone
        assert anchor.completion_mask[r].tolist() == [0] * p + [1] * len(alone) + [0] * (anchor.input_ids.shape[1] - n)
        assert anchor.anchor_lengths[r] == len(alone)


def test_scoring_the_batch_equals_each_row_alone(model):
    """Right-padded anchor rows of different prompt lengths: batched log-probs equal a full forward per row."""
    ids, attention, completion = make_batch(PROMPTS, COMPLETIONS)
    torch.manual_seed(0)
    anchor = sample_anchors(model, ids, attention, completion, pad_token_id=PAD, eos_token_id=EOS)
    scores = anchor_token_logps(model, anchor)
    mask = anchor.completion_mask[:, 1:].bool()
    for r in range(4):
        n = int(anchor.attention_mask[r].sum())
        row = anchor.input_ids[r:r + 1, :n]
        expected = torch.log_softmax(model(row).logits[0, :-1].float(), -1).gather(-1, row[0, 1:, None])[:, 0]
        torch.testing.assert_close(scores[r, : n - 1][mask[r, : n - 1]], expected[mask[r, : n - 1]],
                                   rtol=1e-5, atol=1e-5)


def test_max_length_caps_anchor_and_no_room_raises(model):
    ids, attention, completion = make_batch(PROMPTS, COMPLETIONS)
    anchor = sample_anchors(model, ids, attention, completion, pad_token_id=PAD, eos_token_id=EOS, max_length=8)
    assert anchor.anchor_lengths.max() <= 2 and anchor.attention_mask.sum(1).max() <= 8
    with pytest.raises(ValueError, match="max_length"):
        sample_anchors(model, ids, attention, completion, pad_token_id=PAD, eos_token_id=EOS, max_length=6)
