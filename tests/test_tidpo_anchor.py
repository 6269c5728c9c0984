"""TI-DPO anchors: layout (left-padded prompts → right-padded prompt + anchor), EOS handling, position ids;
sampling from the ``tidpo_anchor_*`` settings alone, one seeded generator per row."""

import copy
import math

import pytest
import torch

from conftest import make_model
from tidpo_oracles import EOS, PAD, VOCAB, make_batch
from tokenweight.errors import UserError
from tokenweight.weights.tidpo.anchor import (RowSeededSampler, anchor_seeds, anchor_token_logps,
                                              assemble_anchor_batch, left_padded_prompts, sample_anchors)

PROMPTS, COMPLETIONS = [3, 6, 1, 4], [4, 2, 5, 3]
SEEDS = [11, 12, 13, 14]


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
    anchor = sample_anchors(model, ids, attention, completion, seeds=SEEDS, pad_token_id=PAD, eos_token_id=EOS,
                            top_k=1, max_new_tokens=5)
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
    anchor = sample_anchors(model, ids, attention, completion, seeds=SEEDS, pad_token_id=PAD, eos_token_id=EOS)
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
    anchor = sample_anchors(model, ids, attention, completion, seeds=SEEDS, pad_token_id=PAD, eos_token_id=EOS,
                            max_length=8)
    assert anchor.anchor_lengths.max() <= 2 and anchor.attention_mask.sum(1).max() <= 8
    with pytest.raises(UserError, match="max_length"):
        sample_anchors(model, ids, attention, completion, seeds=SEEDS, pad_token_id=PAD, eos_token_id=EOS,
                       max_length=6)


def rows_of(anchor):
    """Each anchor row's real tokens, as lists."""
    return [anchor.input_ids[r][anchor.attention_mask[r].bool()].tolist() for r in range(anchor.input_ids.shape[0])]


def test_checkpoint_generation_config_does_not_change_the_anchors(model):
    """Issue 10 item 10: a checkpoint's generation_config (repetition penalty, minimum length, n-gram ban, a
    different temperature) is not inherited: the anchors equal those of the same weights without it."""
    ids, attention, completion = make_batch(PROMPTS, COMPLETIONS)
    dressed = copy.deepcopy(model)
    config = dressed.generation_config
    config.repetition_penalty, config.min_new_tokens, config.no_repeat_ngram_size = 5.0, 12, 1
    config.temperature, config.top_k, config.do_sample = 3.0, 2, True
    kwargs = dict(seeds=SEEDS, pad_token_id=PAD, eos_token_id=EOS, max_new_tokens=12)
    plain = sample_anchors(model, ids, attention, completion, **kwargs)
    assert rows_of(sample_anchors(dressed, ids, attention, completion, **kwargs)) == rows_of(plain)
    assert dressed.generation_config is config and config.repetition_penalty == 5.0  # restored untouched
    lengths = plain.anchor_lengths.tolist()
    assert min(lengths) < 12 and max(lengths) > 1  # min_new_tokens=12 and the n-gram ban would have shown


def test_each_row_depends_on_its_seed_and_prompt_only(model):
    """Issue 10 item 11: a row's anchor is a function of (seed, prompt): the same alone, in another batch order,
    under any global RNG state (which sampling leaves untouched); another seed gives another anchor."""
    ids, attention, completion = make_batch(PROMPTS, COMPLETIONS)
    kwargs = dict(pad_token_id=PAD, eos_token_id=EOS, max_new_tokens=8)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    batched = rows_of(sample_anchors(model, ids, attention, completion, seeds=SEEDS, **kwargs))
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(123)
    order = [2, 0, 3, 1]
    permuted = rows_of(sample_anchors(model, ids[order], attention[order], completion[order],
                                      seeds=[SEEDS[r] for r in order], **kwargs))
    assert permuted == [batched[r] for r in order]
    for r, p in enumerate(PROMPTS):
        n = p + COMPLETIONS[r]
        alone = sample_anchors(model, ids[r:r + 1, :n], attention[r:r + 1, :n], completion[r:r + 1, :n],
                               seeds=[SEEDS[r]], **kwargs)
        assert rows_of(alone) == [batched[r]]
    reseeded = rows_of(sample_anchors(model, ids, attention, completion, seeds=[s + 100 for s in SEEDS], **kwargs))
    assert reseeded != batched
    with pytest.raises(ValueError, match="3 seeds for 4 rows"):
        sample_anchors(model, ids, attention, completion, seeds=SEEDS[:3], **kwargs)


def naive_sampling_probs(logits: list[float], temperature: float, top_k: int, top_p: float) -> list[float]:
    """Temperature, then the ``top_k`` largest, then the smallest top set with ``top_p`` of the mass (plain Python)."""
    scaled = [x / temperature for x in logits]
    ranked = sorted(range(len(scaled)), key=lambda v: -scaled[v])[:top_k]
    total = sum(math.exp(scaled[v]) for v in ranked)
    kept, mass = [], 0.0
    for v in ranked:
        kept.append(v)
        mass += math.exp(scaled[v]) / total
        if mass >= top_p:
            break
    norm = sum(math.exp(scaled[v]) for v in kept)
    return [math.exp(scaled[v]) / norm if v in kept else 0.0 for v in range(len(logits))]


def test_row_seeded_sampler_draws_from_the_warped_distribution():
    """20 000 rows of the same scores, one seed each: token frequencies match a naive temperature / top-k / top-p
    computation (4.5 standard errors), filtered tokens never appear, and the output is one finite score per row."""
    logits = [2.0, 1.5, 1.2, 0.3, 0.0, -0.5, -1.0, 2.2]
    draws = 20_000
    sampler = RowSeededSampler(list(range(draws)), temperature=0.8, top_k=6, top_p=0.9)
    scores = sampler(torch.zeros(draws, 1, dtype=torch.long), torch.tensor([logits]).repeat(draws, 1))
    assert torch.equal(torch.isfinite(scores).sum(1), torch.ones(draws, dtype=torch.long))
    counts = torch.bincount(scores.argmax(1), minlength=len(logits)).tolist()
    expected = naive_sampling_probs(logits, 0.8, 6, 0.9)
    assert [c > 0 for c in counts] == [p > 0 for p in expected] and sum(p > 0 for p in expected) == 4
    for count, p in zip(counts, expected):
        assert abs(count / draws - p) <= 4.5 * math.sqrt(p * (1 - p) / draws) + 1e-12


def test_anchor_seeds_separate_steps_rows_and_evaluation():
    train = anchor_seeds(42, [0, 1, 2], step=7)
    assert train == anchor_seeds(42, [0, 1, 2], step=7) and len(set(train)) == 3
    assert anchor_seeds(42, [1], step=7) == train[1:2]  # a row's seed does not depend on its batch companions
    assert anchor_seeds(42, [0], step=8) != train[:1] and anchor_seeds(43, [0], step=7) != train[:1]
    assert anchor_seeds(42, [0, 1], step=None) == anchor_seeds(42, [0, 1], step=None) != train[:2]
    assert all(0 <= s < 2 ** 63 for s in train)


def test_a_lora_policy_ignores_its_base_models_generation_config_too(model):
    """PEFT's generate reads the wrapped model's generation_config: it is blanked there as well (LoRA's B starts
    at 0, so the LoRA policy samples what the plain model samples)."""
    from tokenweight.models import add_lora_adapters

    ids, attention, completion = make_batch(PROMPTS, COMPLETIONS)
    lora = add_lora_adapters(copy.deepcopy(model), r=4, alpha=8)
    base_config = lora.get_base_model().generation_config
    base_config.repetition_penalty, base_config.min_new_tokens = 5.0, 12
    kwargs = dict(seeds=SEEDS, pad_token_id=PAD, eos_token_id=EOS, max_new_tokens=12)
    assert rows_of(sample_anchors(lora, ids, attention, completion, **kwargs)) == rows_of(
        sample_anchors(model, ids, attention, completion, **kwargs))
    assert lora.get_base_model().generation_config is base_config
