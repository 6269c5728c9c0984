"""TDPO2 sequence KL vs a naive full-softmax computation: values, gradients, softcapping, NaN; and the KL computed in
the policy's own log-prob tiles (the trainer's path) against the naive formulas for both, with both gradients at once."""

import pytest
import torch
from torch import nn

from conftest import make_model
from tidpo_oracles import UNIQUE_TOKEN, VOCAB, make_batch, naive_kl
from tokenweight.head import OutputHead, output_head
from tokenweight.logps import backbone, scores_from_hidden
from tokenweight.tiled_head import Tiling
from tokenweight.weights.kl import tdpo_kl


def random_inputs(dtype, seed=0):
    torch.manual_seed(seed)
    policy_head, ref_head = nn.Linear(16, 50, bias=False).to(dtype), nn.Linear(16, 50, bias=False).to(dtype)
    policy_hidden = torch.randn(4, 9, 16, dtype=dtype, requires_grad=True)
    ref_hidden = torch.randn(4, 9, 16, dtype=dtype, requires_grad=True)
    mask = torch.rand(4, 9) < 0.6
    mask[:, 0] = True
    return policy_head, ref_head, policy_hidden, ref_hidden, mask


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-5), (torch.float32, 1e-5)])
@pytest.mark.parametrize("softcap", [None, 3.0])
def test_matches_naive_value_and_gradient(dtype, tol, softcap):
    policy_head, ref_head, policy_hidden, ref_hidden, mask = random_inputs(dtype)
    heads = OutputHead(policy_head, softcap=softcap), OutputHead(ref_head, softcap=softcap)
    kl = tdpo_kl(policy_hidden, ref_hidden, *heads, mask, Tiling(5, 7))  # neither divides the token count / vocabulary
    naive = naive_kl(heads[0].logits(policy_hidden), heads[1].logits(ref_hidden).detach(), mask)
    torch.testing.assert_close(kl.double(), naive.detach(), rtol=tol, atol=tol)
    assert (kl > 0).all()

    probe = torch.randn(4, dtype=torch.float64)
    grads = torch.autograd.grad((kl.double() * probe).sum(), [policy_hidden, policy_head.weight])
    naive_grads = torch.autograd.grad((naive * probe).sum(), [policy_hidden, policy_head.weight])
    for got, want in zip(grads, naive_grads):
        torch.testing.assert_close(got.double(), want.double(), rtol=tol, atol=tol)
    assert ref_hidden.grad is None and ref_head.weight.grad is None  # nothing flows into the reference


@pytest.mark.parametrize("softcap", [None, 3.0])
def test_kl_from_the_policy_scoring_tiles_matches_naive_log_probs_and_kl_with_both_gradients(softcap):
    policy_head, ref_head, policy_hidden, ref_hidden, mask = random_inputs(torch.float64)
    heads = OutputHead(policy_head, softcap=softcap), OutputHead(ref_head, softcap=softcap)
    labels = torch.randint(0, 50, (4, 9))
    logps, stats, token_kl = scores_from_hidden(policy_hidden, labels, heads[0], Tiling(5, 7), with_stats=True,
                                                mask=mask, kl_reference=(ref_hidden, heads[1]))
    policy_logits = heads[0].logits(policy_hidden)
    naive_logps = torch.log_softmax(policy_logits, -1).gather(-1, labels[..., None]).squeeze(-1) * mask
    naive = naive_kl(policy_logits, heads[1].logits(ref_hidden).detach(), mask)
    torch.testing.assert_close(logps, naive_logps.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close((token_kl * mask).sum(1).double(), naive.detach(), rtol=1e-5, atol=1e-5)
    assert (token_kl[~mask] == 0).all() and stats.entropy.shape == (4, 9)

    probe_logps, probe_kl = torch.randn(4, 9, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    loss = (logps.double() * probe_logps).sum() + ((token_kl * mask).sum(1).double() * probe_kl).sum()
    naive_loss = (naive_logps * probe_logps).sum() + (naive * probe_kl).sum()
    grads = torch.autograd.grad(loss, [policy_hidden, policy_head.weight])
    naive_grads = torch.autograd.grad(naive_loss, [policy_hidden, policy_head.weight])
    for got, want in zip(grads, naive_grads):
        torch.testing.assert_close(got.double(), want.double(), rtol=1e-5, atol=1e-5)
    assert ref_hidden.grad is None and ref_head.weight.grad is None  # nothing flows into the reference


def test_equal_models_give_zero_and_tiny_models_match_full_logits():
    ids, attention, completion = make_batch([3, 5, 2, 4], [4, 2, 7, 1])
    loss_mask = completion[:, 1:].bool()
    policy, ref = make_model(VOCAB, seed=1), make_model(VOCAB, seed=2)
    hidden = {}
    for name, model in (("policy", policy), ("ref", ref)):
        hidden[name] = backbone(model)(ids, attention_mask=attention).last_hidden_state[:, :-1]
    kl = tdpo_kl(hidden["policy"], hidden["ref"], output_head(policy), output_head(ref), loss_mask, Tiling(4, 9))
    naive = naive_kl(policy(ids, attention_mask=attention).logits[:, :-1],
                     ref(ids, attention_mask=attention).logits[:, :-1], loss_mask)
    torch.testing.assert_close(kl.double(), naive.detach(), rtol=1e-5, atol=1e-6)
    same = tdpo_kl(hidden["policy"], hidden["policy"], output_head(policy), output_head(policy), loss_mask)
    assert same.abs().max() < 1e-6


def test_nan_embedding_raises_naming_the_row():
    ids, attention, completion = make_batch([3, 5, 2, 4], [4, 2, 7, 1])
    ids[1, 2] = UNIQUE_TOKEN
    policy = make_model(VOCAB, seed=1)
    with torch.no_grad():
        policy.get_input_embeddings().weight[UNIQUE_TOKEN, 3] = float("nan")
    hidden = backbone(policy)(ids, attention_mask=attention).last_hidden_state[:, :-1]
    with pytest.raises(FloatingPointError, match=r"rows \[1\]"):
        tdpo_kl(hidden, hidden.detach().nan_to_num(), output_head(policy), output_head(policy),
                completion[:, 1:].bool())
