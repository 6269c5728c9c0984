"""``lddpo``: the weights in closed form, and TRL's ``DPOTrainer(ld_alpha=…)`` as the oracle of a 20-step run."""

from __future__ import annotations

import pytest
import torch
from conftest import standard_rows
from test_trl_parity import TWENTY_STEPS, RecordingCollator, build_trainers, step_losses

from tokenweight.errors import UserError
from tokenweight.weights import batch_inputs, build_scheme
from tokenweight.weights.lddpo import LDDPOScheme, LDDPOSettings, shared_length_weights


def test_weights_are_one_on_the_shared_length_and_alpha_beyond():
    # pair 0: chosen 3 tokens (positions 2-4), rejected 5 (1-5); pair 1: both 2 tokens
    mask = torch.tensor([[0, 0, 1, 1, 1, 0, 0],
                         [0, 0, 0, 0, 0, 1, 1],
                         [0, 1, 1, 1, 1, 1, 0],
                         [0, 0, 0, 0, 1, 1, 0]], dtype=torch.bool)
    a = 0.3
    expected = torch.tensor([[0, 0, 1, 1, 1, 0, 0],
                             [0, 0, 0, 0, 0, 1, 1],
                             [0, 1, 1, 1, a, a, 0],
                             [0, 0, 0, 0, 1, 1, 0]])
    assert torch.equal(shared_length_weights(mask, a), expected)
    batch = {"input_ids": torch.zeros(4, 8, dtype=torch.long), "attention_mask": torch.ones(4, 8),
             "completion_mask": torch.nn.functional.pad(mask, (1, 0)), "loss_mask": mask}
    scheme = LDDPOScheme(LDDPOSettings(ld_alpha=a))
    assert torch.equal(scheme.compute(batch_inputs(batch, None)).weights, expected)


def test_ld_alpha_defaults_and_is_checked():
    assert build_scheme("lddpo").settings.ld_alpha == 0.5
    for bad in (-0.1, 1.5):
        with pytest.raises(UserError, match="`ld_alpha` must be in \\[0, 1\\]"):
            LDDPOSettings(ld_alpha=bad)


def test_twenty_training_steps_match_trl_ld_alpha(tokenizer, tmp_path):
    """TRL weighs the policy's and the reference's summed log-probs with α on the tail; our weighted ratio is the
    same linear form, so the 20 logged losses agree."""
    rows = standard_rows(8)
    trl, ours = build_trainers(tokenizer, rows, "sigmoid", tmp_path, ours_only={"weighting": "lddpo"}, ld_alpha=0.25,
                               **TWENTY_STEPS)
    assert ours.scheme.name == "lddpo" and trl.ld_alpha == ours.scheme.settings.ld_alpha == 0.25
    trl.data_collator = RecordingCollator(trl.data_collator)
    ours.data_collator = RecordingCollator(ours.data_collator)
    trl.train()
    ours.train()
    for step, (a, b) in enumerate(zip(trl.data_collator.input_ids, ours.data_collator.input_ids, strict=True)):
        assert torch.equal(a, b), f"step {step}: the two trainers saw different rows"
    trl_losses, our_losses = step_losses(trl), step_losses(ours)
    assert len(trl_losses) == len(our_losses) == 20
    differences = [abs(a - b) for a, b in zip(trl_losses, our_losses)]
    assert max(differences) < 1e-4, differences
    # the oracle is not plain DPO: the batches had tails, and weighting them by α changed the losses
    tails = [(shared_length_weights(batch["loss_mask"], 0.25) == 0.25).sum().item()
             for batch in ours.data_collator.batches]
    assert sum(tails) > 0
    assert [entry["weights/min"] for entry in ours.state.log_history if "loss" in entry].count(0.25) > 0
