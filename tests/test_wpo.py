"""WPO pair weighting (``use_weighting``, TRL's name): by default the pair weight is clamped at 1 as the authors'
code (github.com/wzhouad/WPO ``scripts/run_wpo.py``), the oracle of the loss and gradients on policy-like completions
where the clamp acts; with ``wpo_clamp false`` TRL's ``DPOTrainer(use_weighting=True)`` (1.16, unclamped) is the
oracle, alone and combined with a token-weighting scheme (LD-DPO, TRL's ``ld_alpha``)."""

from __future__ import annotations

import pytest
import torch
import datasets
import torch.nn.functional as F
from conftest import make_model, standard_rows
from test_trl_parity import build_trainers

from tokenweight.config import TokenweightConfig
from tokenweight.data import PreferenceCollator, tokenize_preference_dataset
from tokenweight.trainer import TokenweightTrainer


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
    trl, ours = build_trainers(tokenizer, standard_rows(4), loss_type, tmp_path, use_weighting=True,
                               ours_only={"wpo_clamp": False})
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
    trl, ours = build_trainers(tokenizer, standard_rows(4), "sigmoid", tmp_path,
                               ours_only={"weighting": "lddpo", "wpo_clamp": False}, use_weighting=True, ld_alpha=0.3)
    trl_loss, our_loss = one_batch_losses(trl, ours)
    assert abs(trl_loss.item() - our_loss.item()) < 1e-5


def upstream_wpo_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """wzhouad/WPO ``scripts/run_wpo.py::WPOTrainer.get_batch_logps``, re-typed: ``(Σ log p per row [2B], pair weight
    clamp(exp(avg_c + avg_r), max=1) [B])``, avg the mean over the row's labels of log p − log Σ_v p_v²."""
    labels = labels[:, 1:].clone()
    logits = logits[:, :-1, :]
    loss_mask = labels != -100
    labels[labels == -100] = 0
    per_token_logps = torch.gather(F.log_softmax(logits, dim=-1), dim=2, index=labels.unsqueeze(2)).squeeze(2)
    logps = (per_token_logps * loss_mask).sum(-1)
    aligned = per_token_logps - torch.log((F.softmax(logits, dim=-1) ** 2).sum(-1))
    avg = (aligned * loss_mask).sum(-1) / loss_mask.sum(-1)
    chosen, rejected = avg[:avg.size(0) // 2], avg[avg.size(0) // 2:]
    return logps, torch.exp(chosen + rejected).detach()


def greedy_completions(model, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``batch`` with every completion token of all pairs but the last replaced by ``model``'s greedy choice given
    the tokens before it (the rejected rows' first completion token is the second most likely instead, so the two
    responses differ); the last pair keeps the data's tokens."""
    ids = batch["input_ids"].clone()
    pairs = ids.shape[0] // 2
    with torch.no_grad():
        for row in [r for r in range(ids.shape[0]) if r % pairs != pairs - 1]:
            positions = batch["completion_mask"][row].nonzero()[:, 0].tolist()
            for k, j in enumerate(positions):
                ranked = model(input_ids=ids[row:row + 1, :j]).logits[0, -1].argsort(descending=True)
                ids[row, j] = ranked[1 if row >= pairs and k == 0 else 0]
    return {**batch, "input_ids": ids}


def sharpened_model(vocab: int):
    """The tiny Llama with its output layer ×4: a peaked policy, so that its own completions weigh more than 1."""
    model = make_model(vocab, seed=0)
    with torch.no_grad():
        model.lm_head.weight.mul_(4.0)
    return model


@pytest.mark.parametrize("clamp", [True, False])
def test_wpo_pair_weight_is_clamped_at_one_as_the_authors_code(tokenizer, clamp):
    """Oracle: wzhouad/WPO ``scripts/run_wpo.py`` — ``WPOTrainer.get_batch_logps`` (the clamped pair weight) and
    ``WPOTrainer.dpo_loss`` (−log σ(βΔ)·w, mean over pairs), re-typed; gradients by autograd. On the policy's own
    greedy completions the unclamped weights exceed 1, so the clamp acts; ``wpo_clamp false`` is the unclamped
    (TRL 1.16) weight."""
    beta = 0.1
    dataset, _ = tokenize_preference_dataset(datasets.Dataset.from_list(standard_rows(4)), tokenizer)
    vocab = len(tokenizer)
    batch = greedy_completions(sharpened_model(vocab), PreferenceCollator(tokenizer.pad_token_id)(list(dataset)))
    config = TokenweightConfig(output_dir="/tmp/tw-test", use_cpu=True, report_to="none", beta=beta,
                               use_weighting=True, **({} if clamp else {"wpo_clamp": False}))
    assert config.wpo_clamp is clamp  # clamped unless asked
    reference = make_model(vocab, seed=1)
    trainer = TokenweightTrainer(sharpened_model(vocab), reference, config, processing_class=tokenizer)
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)

    oracle = sharpened_model(vocab).train()
    ids, attention = batch["input_ids"], batch["attention_mask"]
    labels = torch.where(batch["completion_mask"].bool(), ids, -100)
    logps, unclamped = upstream_wpo_logps(oracle(input_ids=ids, attention_mask=attention).logits, labels)
    with torch.no_grad():
        ref_logps, _ = upstream_wpo_logps(reference(input_ids=ids, attention_mask=attention).logits, labels)
    assert unclamped.max().item() > 1.5 and unclamped.min().item() < 1  # the clamp acts on some pairs, not all
    weights = torch.clamp(unclamped, max=1) if clamp else unclamped
    (chosen, rejected), (ref_chosen, ref_rejected) = logps.chunk(2), ref_logps.chunk(2)
    expected = (-F.logsigmoid(beta * ((chosen - rejected) - (ref_chosen - ref_rejected))) * weights).mean()
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    logged = trainer._metrics["train"]["wpo/pair_weight"][-1].item()
    assert logged == pytest.approx(weights.mean().item(), abs=1e-6)
    loss.backward()
    expected.backward()
    for (name, p_oracle), p_ours in zip(oracle.named_parameters(), trainer.model.parameters()):
        assert torch.allclose(p_oracle.grad, p_ours.grad, atol=1e-7, rtol=1e-4), name
