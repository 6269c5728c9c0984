"""``padding_free``: the rows of a batch packed into one sequence give the padded path's loss (≤ 1e-5 relative),
gradients (≤ 1e-4 relative to each tensor's largest entry) and logged metrics for every scheme, with LoRA and with
precomputed reference log-probs; no row can see another (perturbing one row's tokens changes no other row's
log-probs)."""

from __future__ import annotations

import datasets
import pytest
import torch
from conftest import make_model, standard_rows

from tokenweight.config import TokenweightConfig
from tokenweight.data import PreferenceCollator, tokenize_preference_dataset
from tokenweight.logps import enable_token_scoring, pack_plan
from tokenweight.models import add_lora_adapters
from tokenweight.pipeline import prepare_raw
from tokenweight.trainer import TokenweightTrainer
from tokenweight.weights.base import scheme_class

#: (case id, weighting, settings): every scheme that trains without user-trained models, WPO, TI-DPO with its
#: triplet anchors, and the reference cache.
CASES = [("uniform", "uniform", {}), ("otpo", "otpo", {}), ("tidpo", "tidpo", {}),
         ("tidpo+triplet", "tidpo", {"tidpo_gamma": 0.1}), ("attention", "attention", {}), ("tdpo", "tdpo", {}),
         ("lddpo", "lddpo", {}), ("sampo", "sampo", {}), ("d2po", "d2po", {}), ("simpo", "simpo", {}),
         ("confpo", "confpo", {}), ("wpo", "uniform", {"use_weighting": True}),
         ("reference cache", "uniform", {"precompute_ref_log_probs": True})]


def one_step(tokenizer, weighting: str, padding_free: bool, lora: bool = False, **settings):
    """Loss, gradients ``{name: tensor}`` and logged metrics of one training micro-step on 4 pairs of different
    lengths (policy ≠ reference)."""
    config = TokenweightConfig(output_dir="/tmp/tw-padding-free", use_cpu=True, report_to="none", beta=0.1,
                               weighting=weighting, padding_free=padding_free, logging_steps=1, max_length=None,
                               **settings)
    reference = make_model(len(tokenizer), seed=2, max_position_embeddings=256)  # holds the judge template
    raw = prepare_raw(config, "reference (in memory)", tokenizer, datasets.Dataset.from_list(standard_rows(4)),
                      "train", model=reference)
    dataset, _ = tokenize_preference_dataset(raw, tokenizer)
    policy = make_model(len(tokenizer), seed=1, max_position_embeddings=256)
    if lora:
        policy = add_lora_adapters(policy, r=4, alpha=8)
        for name, parameter in policy.named_parameters():  # non-zero adapters: the LoRA path changes the logits
            if "lora_B" in name:
                torch.nn.init.normal_(parameter, std=0.05, generator=torch.Generator().manual_seed(len(name)))
    uses_reference = scheme_class(weighting).uses_reference
    trainer = TokenweightTrainer(policy, reference if uses_reference else None, config, train_dataset=dataset,
                                 processing_class=tokenizer)
    trainer.model.train()
    batch = trainer.data_collator(list(trainer.train_dataset))
    assert (batch["attention_mask"] == 0).any()  # really padded
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    logs = {}
    trainer.log(logs)
    return loss.detach(), grads, logs


@pytest.mark.parametrize("case,weighting,settings", CASES, ids=[c[0] for c in CASES])
def test_padding_free_equals_padded(tokenizer, case, weighting, settings):
    assert_same_step(one_step(tokenizer, weighting, False, **settings), one_step(tokenizer, weighting, True, **settings))


@pytest.mark.parametrize("weighting", ["uniform", "tidpo", "tdpo"])
def test_padding_free_equals_padded_with_lora(tokenizer, weighting):
    padded, packed = (one_step(tokenizer, weighting, flag, lora=True) for flag in (False, True))
    assert padded[1] and all("lora_" in name for name in padded[1])  # only the adapters train
    assert_same_step(padded, packed)


def assert_same_step(padded, packed) -> None:
    (loss, grads, logs), (packed_loss, packed_grads, packed_logs) = padded, packed
    assert abs(packed_loss.item() - loss.item()) <= 1e-5 * abs(loss.item()) + 1e-7
    assert grads.keys() == packed_grads.keys() and grads
    for name, grad in grads.items():
        scale = grad.abs().max().item()
        assert scale > 0, name
        assert (packed_grads[name] - grad).abs().max().item() <= 1e-4 * scale, name
    assert logs.keys() == packed_logs.keys() and "rewards/margins" in logs
    for name, value in logs.items():
        assert packed_logs[name] == pytest.approx(value, rel=1e-4, abs=1e-6), name


def test_pack_plan_fits_rows_first_fit_decreasing():
    assert pack_plan([12, 5, 6, 3, 12], capacity=12) == [[0], [4], [2, 1], [3]]
    assert pack_plan([4, 9], capacity=5) == [[1], [0]]  # a row longer than the capacity goes alone
    assert sorted(r for pack in pack_plan([7, 1, 3, 3, 2, 8], 8) for r in pack) == list(range(6))


def test_no_row_sees_another_when_packed(tokenizer):
    """Rows of lengths 12, 5 and 6: rows 2 and 1 share a pack. Perturbing row 1's tokens (its length kept) changes
    its log-probs and no other row's, up to fp32 round-off; every row's log-probs equal its padded forward."""
    model = enable_token_scoring(make_model(len(tokenizer), seed=3))
    lengths = [12, 5, 6]
    assert pack_plan(lengths, max(lengths)) == [[0], [2, 1]]
    ids = torch.randint(4, len(tokenizer), (3, 12), generator=torch.Generator().manual_seed(0))
    attention = (torch.arange(12)[None, :] < torch.tensor(lengths)[:, None]).long()
    ids = ids.masked_fill(attention == 0, tokenizer.pad_token_id)
    perturbed = ids.clone()
    perturbed[1, :5] = torch.roll(ids[1, :5], 1)  # row 1's tokens rotated: same length, other content
    with torch.no_grad():
        before, after, padded = (model(input_ids=x, attention_mask=attention, score_tokens=True,
                                       padding_free=free).token_logps for x, free in
                                 ((ids, True), (perturbed, True), (ids, False)))
    valid = attention[:, 1:].bool()
    others = torch.tensor([True, False, True])
    assert (after[1] - before[1])[valid[1]].abs().max() > 0.01  # measured 0.058
    assert (after[others] - before[others])[valid[others]].abs().max() <= 1e-6
    assert (before - padded)[valid].abs().max() <= 1e-5
