"""WPO pair weighting (``use_weighting``, TRL's name): TRL's ``DPOTrainer(use_weighting=True)`` is the oracle of the
loss and gradients on one batch, alone and combined with a token-weighting scheme (LD-DPO, TRL's ``ld_alpha``)."""

from __future__ import annotations

import pytest
import torch
from conftest import standard_rows
from test_trl_parity import build_trainers


def one_batch_losses(trl, ours):
    """Both trainers' loss of the same 4 pairs, in training mode, and our logged metrics."""
    trl.model.train()
    ours.model.train()
    trl_batch = trl.data_collator([trl.train_dataset[i] for i in range(4)])
    our_batch = ours.data_collator([ours.train_dataset[i] for i in range(4)])
    assert torch.equal(trl_batch["input_ids"], our_batch["input_ids"])
    return trl.compute_loss(trl.model, trl_batch), ours.compute_loss(ours.model, our_batch)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
def test_wpo_loss_and_gradients_match_trl(tokenizer, tmp_path, loss_type):
    trl, ours = build_trainers(tokenizer, standard_rows(4), loss_type, tmp_path, use_weighting=True)
    trl_loss, our_loss = one_batch_losses(trl, ours)
    assert abs(trl_loss.item() - our_loss.item()) < 1e-5
    if loss_type != "hinge":  # TRL 1.16 scales the hinge's ReLU output in place: its backward raises
        trl_loss.backward()
        our_loss.backward()
        for (name, p_trl), p_ours in zip(trl.model.named_parameters(), ours.model.parameters()):
            assert torch.allclose(p_trl.grad, p_ours.grad, atol=1e-6, rtol=1e-4), name
    # the pair weights are not 1 (a random tiny model is nearly uniform: w ≈ 0.98), so this is not plain DPO again
    weight = ours._metrics["train"]["wpo/pair_weight"][-1].item()
    assert 0 < weight < 0.99
    _, unweighted = build_trainers(tokenizer, standard_rows(4), loss_type, tmp_path / "plain")
    _, plain_loss = one_batch_losses(trl, unweighted)
    assert abs(plain_loss.item() - our_loss.item()) > 1e-3


def test_wpo_with_a_token_weighting_scheme_matches_trl(tokenizer, tmp_path):
    trl, ours = build_trainers(tokenizer, standard_rows(4), "sigmoid", tmp_path, ours_only={"weighting": "lddpo"},
                               use_weighting=True, ld_alpha=0.3)
    trl_loss, our_loss = one_batch_losses(trl, ours)
    assert abs(trl_loss.item() - our_loss.item()) < 1e-5
