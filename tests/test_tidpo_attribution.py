"""TI-DPO gradient attribution vs independent oracles: per-row fresh-leaf backward and finite differences."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from conftest import make_model
from tidpo_oracles import EOS, UNIQUE_TOKEN, VOCAB, attribution_one_row, make_batch

from tokenweight.weights.tidpo.attribution import input_attribution

PROMPTS, COMPLETIONS = [3, 5, 2, 4], [4, 2, 6, 3]


@pytest.fixture(scope="module")
def model64():
    return make_model(VOCAB, seed=1, initializer_range=0.2).double()


def test_matches_per_row_backward_alone_vs_padded(model64):
    """Each row of the padded batch equals the row alone (no padding), one backward per row with a fresh leaf."""
    ids, attention, completion = make_batch(PROMPTS, COMPLETIONS)
    scores = input_attribution(model64, ids, attention)
    for r in range(ids.shape[0]):
        n = int(attention[r].sum())
        expected = attribution_one_row(model64, ids[r, :n])
        torch.testing.assert_close(scores[r, :n].double(), expected, rtol=1e-5, atol=1e-9)
        assert (scores[r, n:] == 0).all()
    assert scores.dtype == torch.float32 and scores[attention.bool()].min() > 0


def test_matches_finite_differences():
    """I_i = Σ_k |∂f/∂e_ik| by central differences on the embedding of every token of one short row.

    GPT-2 (LayerNorm) runs fully in float64; Llama's RMSNorm computes in float32 whatever the model dtype.
    """
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=32,
                                       bos_token_id=EOS, eos_token_id=EOS))
    model = model.double().eval()
    ids, attention, _ = make_batch([2], [3], seed=3)
    scores = input_attribution(model, ids, attention)[0].double()
    embeds = model.get_input_embeddings()(ids).detach()
    step = 1e-6

    def target(e):
        with torch.no_grad():
            return model(inputs_embeds=e).logits[0, -1].max()

    for i in range(ids.shape[1]):
        grad = torch.zeros(embeds.shape[-1], dtype=torch.float64)
        for k in range(embeds.shape[-1]):
            plus, minus = embeds.clone(), embeds.clone()
            plus[0, i, k] += step
            minus[0, i, k] -= step
            grad[k] = (target(plus) - target(minus)) / (2 * step)
        assert abs(grad.abs().sum() - scores[i]) < 1e-5 * max(1.0, scores[i].item())


def test_parameter_grads_untouched_and_modes_restored(model64):
    ids, attention, _ = make_batch(PROMPTS, COMPLETIONS)
    model64.train()
    model64.model.layers[0].eval()  # a mixed mode must be restored exactly
    modes = [m.training for m in model64.modules()]
    head = model64.lm_head.weight
    head.grad = torch.full_like(head, 0.5)
    input_attribution(model64, ids, attention)
    assert [m.training for m in model64.modules()] == modes
    assert torch.equal(head.grad, torch.full_like(head, 0.5))
    assert all(p.grad is None for name, p in model64.named_parameters() if name != "lm_head.weight")
    head.grad = None
    model64.eval()


def test_non_reentrant_gradient_checkpointing():
    model = make_model(VOCAB, seed=2)
    ids, attention, _ = make_batch(PROMPTS, COMPLETIONS)
    expected = input_attribution(model, ids, attention)
    model.activation_checkpointing_enable({"use_reentrant": False})
    model.train()
    calls = []
    for layer in model.model.layers:  # count the checkpointed layer calls: checkpointing stays active
        func = layer._gradient_checkpointing_func
        layer._gradient_checkpointing_func = lambda *a, _f=func, **k: calls.append(1) or _f(*a, **k)
        layer._gradient_checkpointing_func.keywords = func.keywords
    torch.testing.assert_close(input_attribution(model, ids, attention), expected, rtol=1e-5, atol=1e-7)
    assert len(calls) == len(model.model.layers)
    assert all(m.training for m in model.modules()) and all(p.grad is None for p in model.parameters())


def test_nan_embedding_raises_naming_the_row():
    model = make_model(VOCAB, seed=2)
    ids, attention, _ = make_batch(PROMPTS, COMPLETIONS)
    ids[2, 1] = UNIQUE_TOKEN
    with torch.no_grad():
        model.get_input_embeddings().weight[UNIQUE_TOKEN, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"rows \[2\]"):
        input_attribution(model, ids, attention)
