"""``d2po``: γ^t weights in closed form, and the trainer's loss against a naive full-logits D²PO loss."""

from __future__ import annotations

import datasets
import pytest
import torch
import torch.nn.functional as F
from conftest import make_model, standard_rows

from tokenweight.config import TokenweightConfig
from tokenweight.data import PreferenceCollator, tokenize_preference_dataset
from tokenweight.errors import UserError
from tokenweight.logps import naive_token_logps
from tokenweight.trainer import TokenweightTrainer
from tokenweight.weights import batch_inputs, build_scheme
from tokenweight.weights.d2po import D2POScheme, D2POSettings, temporal_decay_weights


def test_weights_decay_from_one_at_each_completions_first_token():
    mask = torch.tensor([[0, 1, 1, 1, 0],
                         [0, 0, 0, 1, 1],
                         [1, 1, 1, 1, 1],
                         [0, 0, 1, 0, 0]], dtype=torch.bool)
    g = 0.5
    expected = torch.tensor([[0, 1, g, g ** 2, 0],
                             [0, 0, 0, 1, g],
                             [1, g, g ** 2, g ** 3, g ** 4],
                             [0, 0, 1, 0, 0]])
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


def test_trainer_loss_is_the_naive_d2po_loss(tokenizer):
    """−log σ(β [Σ_t γ^t ρ_c,t − Σ_t γ^t ρ_r,t]) with ρ from full logits and t counted per response by hand."""
    gamma, beta = 0.8, 0.1
    dataset, _ = tokenize_preference_dataset(datasets.Dataset.from_list(standard_rows(4)), tokenizer)
    config = TokenweightConfig(output_dir="/tmp/tw-test", use_cpu=True, report_to="none", beta=beta,
                               weighting="d2po", d2po_gamma=gamma)
    policy, reference = make_model(len(tokenizer), seed=1), make_model(len(tokenizer), seed=2)
    trainer = TokenweightTrainer(policy, reference, config, processing_class=tokenizer)
    batch = PreferenceCollator(tokenizer.pad_token_id)(list(dataset))
    loss = trainer.compute_loss(trainer.model, batch)

    with torch.no_grad():
        ids, attention = batch["input_ids"], batch["attention_mask"]
        rho = (naive_token_logps(policy(input_ids=ids, attention_mask=attention).logits, ids)
               - naive_token_logps(reference(input_ids=ids, attention_mask=attention).logits, ids))
    sums = []
    for row in range(ids.shape[0]):
        completion = [j for j in range(1, ids.shape[1]) if batch["completion_mask"][row, j]]
        sums.append(sum(gamma ** t * rho[row, j - 1] for t, j in enumerate(completion)))
    pairs = ids.shape[0] // 2
    expected = torch.stack([-F.logsigmoid(beta * (sums[b] - sums[pairs + b])) for b in range(pairs)]).mean()
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    uniform = torch.stack([-F.logsigmoid(beta * (rho[b] * batch["loss_mask"][b] - rho[pairs + b]
                                                  * batch["loss_mask"][pairs + b]).sum()) for b in range(pairs)])
    assert abs(uniform.mean().item() - expected.item()) > 1e-4  # the decay changed the loss
