"""``d2po``: γ^t weights (t counted from 1) in closed form, and the trainer's loss and gradients against an oracle
written from the authors' code (github.com/LotuSrc/D2PO, ``trainer_utils.get_batch_logps`` + the DPO sigmoid loss)."""

from __future__ import annotations

import datasets
import pytest
import torch
import torch.nn.functional as F
from conftest import make_model, standard_rows

from tokenweight.config import TokenweightConfig
from tokenweight.data import PreferenceCollator, tokenize_preference_dataset
from tokenweight.errors import UserError
from tokenweight.trainer import TokenweightTrainer
from tokenweight.weights import batch_inputs, build_scheme
from tokenweight.weights.d2po import D2POScheme, D2POSettings, temporal_decay_weights


def test_weights_decay_from_gamma_at_each_completions_first_token():
    mask = torch.tensor([[0, 1, 1, 1, 0],
                         [0, 0, 0, 1, 1],
                         [1, 1, 1, 1, 1],
                         [0, 0, 1, 0, 0]], dtype=torch.bool)
    g = 0.5
    expected = torch.tensor([[0, g, g ** 2, g ** 3, 0],
                             [0, 0, 0, g, g ** 2],
                             [g, g ** 2, g ** 3, g ** 4, g ** 5],
                             [0, 0, g, 0, 0]])
    assert torch.equal(temporal_decay_weights(mask, g), expected)
    batch = {"input_ids": torch.zeros(4, 6, dtype=torch.long), "attention_mask": torch.ones(4, 6),
             "completion_mask": F.pad(mask, (1, 0)), "loss_mask": mask}
    assert torch.equal(D2POScheme(D2POSettings(d2po_gamma=g)).compute(batch_inputs(batch, None)).weights, expected)


def test_gamma_defaults_and_is_checked():
    assert build_scheme("d2po").settings.d2po_gamma == 0.98
    assert torch.equal(temporal_decay_weights(torch.ones(1, 4, dtype=torch.bool), 1.0), torch.ones(1, 4))
    for bad in (0.0, -0.5, 1.01):
        with pytest.raises(UserError, match="`d2po_gamma` must be in \\(0, 1\\]"):
            D2POSettings(d2po_gamma=bad)


def upstream_d2po_logps(logits: torch.Tensor, labels: torch.Tensor, gamma: float) -> torch.Tensor:
    """LotuSrc/D2PO ``src/llamafactory/train/trainer_utils.py::get_batch_logps``, re-typed: labels shifted by one,
    ``Σ_t log p_t · gamma ** cumsum(loss_mask) · loss_mask`` per row → ``[R]``."""
    labels = labels[:, 1:].clone()
    logits = logits[:, :-1, :]
    loss_mask = labels != -100
    labels[labels == -100] = 0
    per_token_logps = torch.gather(logits.log_softmax(-1), dim=2, index=labels.unsqueeze(2)).squeeze(2)
    return (per_token_logps * torch.pow(gamma, torch.cumsum(loss_mask, dim=1)) * loss_mask).sum(-1)


def test_trainer_loss_and_gradients_are_the_authors_d2po(tokenizer):
    """Oracle: LotuSrc/D2PO ``trainer_utils.get_batch_logps`` (γ^cumsum(mask) on policy and reference) and its DPO
    trainer's sigmoid loss −log σ(β[(π_c − π_r) − (ref_c − ref_r)]), mean over pairs; gradients by autograd."""
    gamma, beta = 0.8, 0.1
    dataset, _ = tokenize_preference_dataset(datasets.Dataset.from_list(standard_rows(4)), tokenizer)
    config = TokenweightConfig(output_dir="/tmp/tw-test", use_cpu=True, report_to="none", beta=beta,
                               weighting="d2po", d2po_gamma=gamma)
    policy, reference = make_model(len(tokenizer), seed=1), make_model(len(tokenizer), seed=2)
    trainer = TokenweightTrainer(policy, reference, config, processing_class=tokenizer)
    batch = PreferenceCollator(tokenizer.pad_token_id)(list(dataset))
    loss = trainer.compute_loss(trainer.model, batch)

    oracle = make_model(len(tokenizer), seed=1)
    ids, attention = batch["input_ids"], batch["attention_mask"]
    labels = torch.where(batch["completion_mask"].bool(), ids, -100)
    logps = upstream_d2po_logps(oracle(input_ids=ids, attention_mask=attention).logits, labels, gamma)
    with torch.no_grad():
        ref_logps = upstream_d2po_logps(reference(input_ids=ids, attention_mask=attention).logits, labels, gamma)
    (chosen, rejected), (ref_chosen, ref_rejected) = logps.chunk(2), ref_logps.chunk(2)
    expected = -F.logsigmoid(beta * ((chosen - rejected) - (ref_chosen - ref_rejected))).mean()
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    loss.backward()
    expected.backward()
    for (name, p_oracle), p_ours in zip(oracle.named_parameters(), trainer.model.parameters()):
        assert torch.allclose(p_oracle.grad, p_ours.grad, atol=1e-7, rtol=1e-4), name
    # the origin matters: γ^t counted from 0 (this library's earlier form) is β/γ, another loss
    zero_based = -F.logsigmoid(beta / gamma * ((chosen - rejected) - (ref_chosen - ref_rejected))).mean()
    assert abs(zero_based.item() - expected.item()) > 1e-5
