"""The ``tidpo`` scheme: shifted weights, the TDPO2 margin offset and the γ·triplet term against oracles."""

import copy
from types import SimpleNamespace

import pytest
import torch

from conftest import make_model
from tidpo_oracles import EOS, PAD, UNIQUE_TOKEN, VOCAB, make_batch, naive_kl, naive_triplet
import tokenweight.weights.tidpo.scheme as tidpo_scheme
from tokenweight.errors import UserError
from tokenweight.logps import backbone, logps_from_hidden, output_head
from tokenweight.metrics import Count
from tokenweight.weights.base import SCHEMES, LossContext, WeightingInputs, build_scheme, check_weights
from tokenweight.weights.tidpo.anchor import anchor_seeds, sample_anchors
from tokenweight.weights.tidpo.attribution import tidpo_weights
from tokenweight.weights.tidpo.presets import CONFIG_FIELDS
from tokenweight.weights.tidpo.scheme import TIDPOScheme

PROMPTS, COMPLETIONS = [3, 5, 2, 4], [4, 2, 6, 3]  # pairs (0, 2) and (1, 3)


def config(**fields):
    return SimpleNamespace(**{"tidpo_preset": "paper", "max_length": None,
                              **{key: None for key in CONFIG_FIELDS.values()}, "loss_type": "sigmoid", "seed": 0,
                              **fields})


def weighting_inputs(model, ids=None, rows=(0, 1)):
    batch = make_batch(PROMPTS, COMPLETIONS)
    ids = batch[0] if ids is None else ids
    return WeightingInputs(input_ids=ids, attention_mask=batch[1], completion_mask=batch[2],
                           loss_mask=batch[2][:, 1:].bool(), batch={"row_index": torch.tensor(rows)}, model=model)


def scored(model, inputs, grad):
    with torch.set_grad_enabled(grad):
        hidden = backbone(model)(inputs.input_ids, attention_mask=inputs.attention_mask).last_hidden_state[:, :-1]
        return logps_from_hidden(hidden, inputs.input_ids[:, 1:], output_head(model)), hidden


def loss_context(policy, ref, inputs, step=None):
    policy_logps, policy_hidden = scored(policy, inputs, grad=True)
    ref_logps, ref_hidden = scored(ref, inputs, grad=False)
    return LossContext(model=policy, ref_model=ref, inputs=inputs, policy_logps=policy_logps, ref_logps=ref_logps,
                       weights=inputs.loss_mask.float(), policy_hidden=policy_hidden, ref_hidden=ref_hidden, step=step)


@pytest.fixture(scope="module")
def models():
    return make_model(VOCAB, seed=1, initializer_range=0.2), make_model(VOCAB, seed=2, initializer_range=0.2)


def test_registered_and_flags():
    assert SCHEMES["tidpo"] is TIDPOScheme
    scheme = build_scheme("tidpo", config())
    assert not scheme.needs_hidden_states and scheme.needs_hidden_for_loss
    assert not build_scheme("tidpo", config(tidpo_kl_alpha=0.0)).needs_hidden_for_loss


def test_compute_returns_shifted_weights(models):
    inputs = weighting_inputs(models[0])
    result = build_scheme("tidpo", config()).compute(inputs)
    unshifted = tidpo_weights(models[0], inputs.input_ids, inputs.attention_mask, inputs.completion_mask)
    torch.testing.assert_close(result.weights, unshifted[:, 1:] * inputs.loss_mask)
    check_weights(result.weights, inputs.loss_mask, "tidpo")
    torch.testing.assert_close(result.weights.sum(1), inputs.loss_mask.sum(1).float())  # mean 1, response span
    assert result.metrics["tidpo/attribution_failures"] == Count(0.0)
    assert "tidpo/weight_on_last_token" in result.metrics


def test_margin_offset_is_alpha_kl_difference_with_stopgrad_on_chosen(models):
    policy, ref = models
    inputs = weighting_inputs(policy)
    ctx = loss_context(policy, ref, inputs)
    offset, metrics = build_scheme("tidpo", config(tidpo_kl_alpha=0.3)).margin_offset(ctx)
    with torch.no_grad():
        kl = naive_kl(policy(inputs.input_ids, attention_mask=inputs.attention_mask).logits[:, :-1],
                      ref(inputs.input_ids, attention_mask=inputs.attention_mask).logits[:, :-1], inputs.loss_mask)
    torch.testing.assert_close(offset.double(), 0.3 * (kl[2:] - kl[:2]), rtol=1e-5, atol=1e-6)
    assert metrics["tidpo/kl_term"] == pytest.approx(offset.mean().item())
    (grad,) = torch.autograd.grad(offset.sum(), ctx.policy_hidden)
    assert (grad[:2] == 0).all() and (grad[2:].abs().sum(-1)[inputs.loss_mask[2:]] > 0).all()
    assert build_scheme("tidpo", config(tidpo_kl_alpha=0.0)).margin_offset(ctx) is None


def test_triplet_term_equals_independent_recomputation(models):
    policy, ref = models
    inputs = weighting_inputs(policy, rows=(7, 3))
    ctx = loss_context(policy, ref, inputs, step=5)
    scheme = build_scheme("tidpo", config(tidpo_gamma=0.5, tidpo_margin=0.2, seed=9))
    loss, metrics = scheme.extra_loss(ctx)

    anchor = sample_anchors(policy, inputs.input_ids[:2], inputs.attention_mask[:2], inputs.completion_mask[:2],
                            seeds=anchor_seeds(9, [7, 3], step=5), pad_token_id=PAD, eos_token_id=EOS)

    def row_ratios(ids, completion):
        """Log-ratios of one unpadded row's completion tokens, full-logit forwards."""
        logps = [torch.log_softmax(m(ids[None]).logits[0, :-1].float(), -1).gather(-1, ids[1:, None])[:, 0]
                 for m in (policy, ref)]
        return (logps[0] - logps[1].detach())[completion[1:].bool()]

    legs = []
    for source, rows in ((anchor, range(2)), (inputs, range(2)), (inputs, range(2, 4))):
        legs.append([row_ratios(source.input_ids[r][source.attention_mask[r].bool()],
                                source.completion_mask[r][source.attention_mask[r].bool()]) for r in rows])
    expected = 0.5 * naive_triplet(*legs, margin=0.2)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert metrics["tidpo/anchor_len"] == anchor.anchor_lengths.float().mean().item()
    grads = torch.autograd.grad(loss, [p for p in policy.parameters()], allow_unused=True)
    naive_grads = torch.autograd.grad(expected, [p for p in policy.parameters()], allow_unused=True)
    for got, want in zip(grads, naive_grads):  # fp32 sums of squared distances (loss ≈ 4 with this anchor):
        # rounding reaches ~8e-7 of each gradient tensor's largest entry, so the bound is relative to that scale
        torch.testing.assert_close(got, want, rtol=1e-4, atol=2e-6 * want.abs().max().item())
    assert build_scheme("tidpo", config(tidpo_gamma=0.0)).extra_loss(ctx) is None


def test_policy_equal_reference_triplet_is_gamma_margin_with_zero_gradient(models):
    policy = models[0]
    ref = copy.deepcopy(policy)
    ctx = loss_context(policy, ref, weighting_inputs(policy))
    loss, metrics = build_scheme("tidpo", config()).extra_loss(ctx)  # paper: γ 0.1, margin 0.01
    assert loss.item() == pytest.approx(0.1 * 0.01) and metrics["tidpo/triplet_loss"] == pytest.approx(0.01)
    for grad in torch.autograd.grad(loss, list(policy.parameters()), allow_unused=True):
        assert grad is None or torch.equal(grad, torch.zeros_like(grad))


def test_nan_attribution_raises_or_is_counted():
    model = make_model(VOCAB, seed=1)
    ids = make_batch(PROMPTS, COMPLETIONS)[0]
    ids[3, 1] = UNIQUE_TOKEN
    with torch.no_grad():
        model.get_input_embeddings().weight[UNIQUE_TOKEN] = float("nan")
    inputs = weighting_inputs(model, ids)
    with pytest.raises(FloatingPointError, match=r"rows \[3\]"):
        build_scheme("tidpo", config()).compute(inputs)
    counted = build_scheme("tidpo", config(tidpo_on_failure="count")).compute(inputs)
    prior = tidpo_weights(model, ids, inputs.attention_mask, inputs.completion_mask, lam=0.0)
    torch.testing.assert_close(counted.weights, prior[:, 1:] * inputs.loss_mask)
    assert counted.metrics["tidpo/attribution_failures"] == Count(1.0)


def test_triplet_anchors_are_seeded_by_seed_step_and_row(models, monkeypatch):
    """Issue 10 item 11: the anchor generators come from (seed, step, row); evaluation (step None) repeats exactly,
    whatever the global RNG does; a training step and another step draw other anchors."""
    policy, ref = models
    seen = []

    def spy(*args, seeds, **kwargs):
        seen.append(seeds)
        return sample_anchors(*args, seeds=seeds, **kwargs)

    monkeypatch.setattr(tidpo_scheme, "sample_anchors", spy)
    scheme = build_scheme("tidpo", config(tidpo_margin=5.0, seed=3, tidpo_anchor_max_new_tokens=6))
    inputs = weighting_inputs(policy, rows=(4, 8))
    evaluations = []
    for global_seed in (0, 1, 2):
        torch.manual_seed(global_seed)
        evaluations.append(scheme.extra_loss(loss_context(policy, ref, inputs))[0].item())
    assert evaluations[0] == evaluations[1] == evaluations[2]
    assert seen == [anchor_seeds(3, [4, 8], step=None)] * 3
    step_3 = scheme.extra_loss(loss_context(policy, ref, inputs, step=3))[0].item()
    assert seen[-1] == anchor_seeds(3, [4, 8], step=3)
    assert scheme.extra_loss(loss_context(policy, ref, inputs, step=3))[0].item() == step_3
    assert scheme.extra_loss(loss_context(policy, ref, inputs, step=4))[0].item() != step_3
    with pytest.raises(ValueError, match="row_index"):
        scheme.extra_loss(loss_context(policy, ref, weighting_inputs(policy, rows=(-1, -1))))


def test_ipo_with_the_tdpo2_kl_is_refused_naming_both_settings():
    """Issue 10 item 12: IPO's length-normalised margin and the sequence-summed KL offset do not mix."""
    with pytest.raises(UserError, match=r"loss_type=ipo.*tidpo_kl_alpha=0 \(got 0.5\)"):
        build_scheme("tidpo", config(loss_type="ipo"))
    with pytest.raises(UserError, match="tidpo_kl_alpha"):
        build_scheme("tidpo", config(loss_type="ipo", tidpo_preset="upstream", tidpo_kl_alpha=0.1))
    assert build_scheme("tidpo", config(loss_type="ipo", tidpo_kl_alpha=0.0)).margin_offset(None) is None
    for loss_type in ("sigmoid", "hinge"):
        assert build_scheme("tidpo", config(loss_type=loss_type)).settings.kl_alpha == 0.5
