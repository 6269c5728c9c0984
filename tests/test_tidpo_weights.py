"""TI-DPO weights: λ/prior mixing, mean 1 over the span, spans, zero attribution, padding independence."""

import pytest
import torch

from conftest import make_model
from tidpo_oracles import VOCAB, attribution_one_row, gaussian_prior_list, make_batch
from tokenweight.metrics import Count
from tokenweight.weights.tidpo.attribution import tidpo_weights

PROMPTS, COMPLETIONS = [3, 5, 2, 4], [4, 2, 7, 1]


@pytest.fixture(scope="module")
def model():
    return make_model(VOCAB, seed=1, initializer_range=0.2)


@pytest.fixture(scope="module")
def batch():
    return make_batch(PROMPTS, COMPLETIONS)


def span_of(attention, completion, span):
    return (completion if span == "response" else attention).bool()


@pytest.mark.parametrize("span", ["response", "full"])
@pytest.mark.parametrize("lam", [0.0, 0.7, 1.0])
def test_mixture_equals_independent_oracle(model, batch, lam, span):
    """w = T·(λ·I/ΣI + (1−λ)·prior) on the span, 0 elsewhere; the attribution oracle runs each row alone."""
    ids, attention, completion = batch
    weights, metrics = tidpo_weights(model, ids, attention, completion, lam=lam, sigma_div=4.0, span=span,
                                     log=True)
    spans = span_of(attention, completion, span)
    for r in range(ids.shape[0]):
        n = int(attention[r].sum())
        attribution = attribution_one_row(model, ids[r, :n]).double()[spans[r, :n]]
        length = len(attribution)
        prior = torch.tensor(gaussian_prior_list(length, 4.0), dtype=torch.float64)
        expected = length * (lam * attribution / attribution.sum() + (1 - lam) * prior)
        torch.testing.assert_close(weights[r][spans[r]].double(), expected, rtol=1e-5, atol=1e-6)
        assert abs(weights[r][spans[r]].mean().item() - 1.0) < 1e-6
        assert (weights[r][~spans[r]] == 0).all()
    last = [int(completion[r].nonzero().max()) for r in range(ids.shape[0])]
    assert metrics["tidpo/weight_on_last_token"] == pytest.approx(
        sum(weights[r, t].item() for r, t in enumerate(last)) / len(last), rel=1e-6)
    assert metrics["tidpo/weight_max"] == pytest.approx(weights.max().item())
    assert metrics["tidpo/zero_attribution_rows"] == Count(0.0)


def test_full_span_spreads_over_prompt_and_response(model, batch):
    ids, attention, completion = batch
    weights = tidpo_weights(model, ids, attention, completion, lam=0.2, sigma_div=8.0, span="full")
    prompt = attention.bool() & ~completion.bool()
    assert (weights[prompt] > 0).all()
    torch.testing.assert_close(weights.sum(1), attention.sum(1).float())


def test_prior_sigma_floor_and_shape():
    """σ = max(1, T/div): for T = 3, div = 4 the prior is exp(−½ (t−1)²) normalised."""
    values = [torch.exp(torch.tensor(-0.5 * (t - 1) ** 2)).item() for t in range(3)]
    assert gaussian_prior_list(3, 4.0) == pytest.approx([v / sum(values) for v in values])
    model = make_model(VOCAB, seed=1)
    ids, attention, completion = make_batch([2], [3])
    weights = tidpo_weights(model, ids, attention, completion, lam=0.0)
    torch.testing.assert_close(weights[0, 2:5], 3 * torch.tensor(gaussian_prior_list(3, 4.0)))


def test_row_alone_equals_row_in_padded_batch(model, batch):
    ids, attention, completion = batch
    weights = tidpo_weights(model, ids, attention, completion)
    for r in range(ids.shape[0]):
        n = int(attention[r].sum())
        alone = tidpo_weights(model, ids[r:r + 1, :n], attention[r:r + 1, :n], completion[r:r + 1, :n])
        torch.testing.assert_close(alone[0], weights[r, :n], rtol=1e-5, atol=1e-6)


def test_zero_attribution_rows_use_prior_and_are_counted(batch):
    """A zero output head makes every logit 0: the attribution is exactly 0, the prior alone is used, counted."""
    model = make_model(VOCAB, seed=1)
    with torch.no_grad():
        model.lm_head.weight.zero_()
    ids, attention, completion = batch
    weights, metrics = tidpo_weights(model, ids, attention, completion, lam=0.7, log=True)
    prior_only = tidpo_weights(model, ids, attention, completion, lam=0.0)
    torch.testing.assert_close(weights, prior_only)
    assert metrics["tidpo/zero_attribution_rows"] == Count(4.0)


def test_errors_name_the_problem(model, batch):
    ids, attention, completion = batch
    completion = completion.clone()
    completion[1] = 0
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        tidpo_weights(model, ids, attention, completion)
    with pytest.raises(ValueError, match="tidpo_lambda"):
        tidpo_weights(model, *batch, lam=1.5)
    with pytest.raises(ValueError, match="tidpo_span"):
        tidpo_weights(model, *batch, span="prompt")
