"""``sampo``: the equal-count samples (counts, independence of the policy's and the reference's draws, determinism
given (seed, step, row), expectation m/T) and the trainer's loss against a naive full-logits SamPO loss."""

from __future__ import annotations

import datasets
import pytest
import torch
import torch.nn.functional as F
from conftest import make_model, standard_rows

from tokenweight.config import TokenweightConfig
from tokenweight.data import PreferenceCollator, tokenize_preference_dataset
from tokenweight.logps import naive_token_logps
from tokenweight.trainer import TokenweightTrainer
from tokenweight.weights import SchemeContext, batch_inputs
from tokenweight.weights.sampo import SamPOScheme


def hand_batch(lengths: list[tuple[int, int]], rows: list[int], width: int = 12) -> dict:
    """A collated-looking batch whose pair ``b`` has completions of ``lengths[b]`` tokens (after a 1-token prompt)
    and dataset row ``rows[b]``."""
    counts = [c for c, _ in lengths] + [r for _, r in lengths]
    loss_mask = torch.zeros(len(counts), width, dtype=torch.bool)
    for i, n in enumerate(counts):
        loss_mask[i, 1:1 + n] = True
    return {"input_ids": torch.zeros(len(counts), width + 1, dtype=torch.long),
            "attention_mask": torch.ones(len(counts), width + 1, dtype=torch.long),
            "completion_mask": F.pad(loss_mask, (1, 0)), "loss_mask": loss_mask,
            "row_index": torch.tensor(rows)}


def draw(batch: dict, step: int | None, seed: int = 0):
    out = SamPOScheme(None, SchemeContext(seed=seed)).compute(batch_inputs(batch, None, step=step))
    return out.weights, out.ref_weights


def test_each_side_keeps_exactly_the_shorter_length_and_the_shorter_side_keeps_all():
    lengths = [(3, 9), (10, 4), (6, 6), (1, 11), (7, 2)]
    batch = hand_batch(lengths, rows=[5, 6, 7, 8, 9])
    mask = batch["loss_mask"].float()
    pairs = len(lengths)
    for weights in draw(batch, step=3):
        assert set(weights.unique().tolist()) <= {0.0, 1.0}
        assert (weights <= mask).all()  # only completion tokens
        for b, (chosen, rejected) in enumerate(lengths):
            m = min(chosen, rejected)
            assert weights[b].sum() == weights[pairs + b].sum() == m
            shorter = b if chosen <= rejected else pairs + b
            assert torch.equal(weights[shorter], mask[shorter])


def test_policy_and_reference_samples_are_independent():
    """400 pairs (T = 10, m = 5): the two subsets of a response overlap by m²/T = 2.5 tokens on average, as two
    independent uniform draws do (hypergeometric, sd of the mean 0.042; tolerance 0.2), not by m = 5."""
    batch = hand_batch([(5, 10)] * 400, rows=list(range(400)))
    policy, reference = draw(batch, step=0)
    overlap = (policy[400:] * reference[400:]).sum(dim=1)
    assert overlap.mean().item() == pytest.approx(2.5, abs=0.2)
    assert (overlap < 5).float().mean() > 0.9  # most rows differ
    # the two draws' indicators of the same completion token are uncorrelated
    correlation = torch.corrcoef(torch.stack([policy[400:, 1:11].flatten(), reference[400:, 1:11].flatten()]))[0, 1]
    assert abs(correlation.item()) < 0.05


def test_the_draw_depends_on_seed_step_and_row_only():
    batch = hand_batch([(3, 9), (10, 4)], rows=[11, 12])
    first = draw(batch, step=4)
    again = draw(batch, step=4)
    assert all(torch.equal(a, b) for a, b in zip(first, again))  # a resumed run repeats the step's draw
    # row 12 alone, in a batch of other rows, at another place: the same subsets for it
    other = hand_batch([(8, 8), (10, 4), (2, 7)], rows=[3, 12, 40])
    moved = draw(other, step=4)
    for a, b in zip(first, moved):
        assert torch.equal(a[1], b[1]) and torch.equal(a[2 + 1], b[3 + 1])
    # the rows are drawn apart from each other and from other steps, seeds and from evaluation
    same_rows = hand_batch([(3, 9), (3, 9)], rows=[11, 12])
    policy, _ = draw(same_rows, step=4)
    assert not torch.equal(policy[2], policy[3])
    for changed in (draw(batch, step=5), draw(batch, step=4, seed=1), draw(batch, step=None)):
        assert not torch.equal(changed[0][2], first[0][2])
    assert all(torch.equal(a, b) for a, b in zip(draw(batch, step=None), draw(batch, step=None)))  # evaluation


def test_each_token_of_the_longer_response_is_kept_with_probability_m_over_t():
    """One pair (T = 8, m = 3) over 4000 steps: every position's mean weight is 3/8 (sd 0.0077; tolerance 0.04),
    for the policy's draw and for the reference's."""
    batch = hand_batch([(8, 3)], rows=[0], width=9)
    totals = [torch.zeros(8), torch.zeros(8)]
    for step in range(4000):
        for total, weights in zip(totals, draw(batch, step=step)):
            total += weights[0, 1:]
    for total in totals:
        assert torch.allclose(total / 4000, torch.full((8,), 3 / 8), atol=0.04), total / 4000


def test_trainer_loss_is_the_naive_sampo_loss_with_independent_samples(tokenizer):
    """−log σ(β [Σ_{S_θ,c} ℓ_θ − Σ_{S_ref,c} ℓ_ref − (Σ_{S_θ,r} ℓ_θ − Σ_{S_ref,r} ℓ_ref)]) from full logits, with
    the subsets of training step 7 drawn for each pair's dataset row."""
    beta = 0.1
    dataset, _ = tokenize_preference_dataset(datasets.Dataset.from_list(standard_rows(4)), tokenizer)
    config = TokenweightConfig(output_dir="/tmp/tw-test", use_cpu=True, report_to="none", beta=beta,
                               weighting="sampo", seed=3)
    policy, reference = make_model(len(tokenizer), seed=1), make_model(len(tokenizer), seed=2)
    trainer = TokenweightTrainer(policy, reference, config, processing_class=tokenizer)
    batch = PreferenceCollator(tokenizer.pad_token_id)(list(dataset))
    trainer.model.train()
    trainer.state.global_step = 7
    loss = trainer.compute_loss(trainer.model, batch)

    policy_sample, ref_sample = draw(batch, step=7, seed=3)
    assert not torch.equal(policy_sample, ref_sample)  # the batch's longer responses were subsampled apart
    with torch.no_grad():
        ids, attention = batch["input_ids"], batch["attention_mask"]
        policy_logps = naive_token_logps(policy(input_ids=ids, attention_mask=attention).logits, ids)
        ref_logps = naive_token_logps(reference(input_ids=ids, attention_mask=attention).logits, ids)
    sums = [policy_logps[i][policy_sample[i].bool()].sum() - ref_logps[i][ref_sample[i].bool()].sum()
            for i in range(ids.shape[0])]
    pairs = ids.shape[0] // 2
    expected = torch.stack([-F.logsigmoid(beta * (sums[b] - sums[pairs + b])) for b in range(pairs)]).mean()
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    same_sample = [(policy_logps[i] - ref_logps[i])[policy_sample[i].bool()].sum() for i in range(ids.shape[0])]
    shared = torch.stack([-F.logsigmoid(beta * (same_sample[b] - same_sample[pairs + b])) for b in range(pairs)])
    assert abs(shared.mean().item() - expected.item()) > 1e-5  # one shared sample would give another loss


def test_a_batch_without_dataset_rows_is_an_error():
    batch = hand_batch([(3, 9)], rows=[0])
    del batch["row_index"]
    with pytest.raises(ValueError, match="SamPO seeds each pair's draw from its dataset row"):
        draw(batch, step=0)
