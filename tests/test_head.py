"""The output head equals the model's own forward on architectures with a final-logit transform (Granite's
``logits_scaling``, Falcon-H1's ``lm_head_multiplier``), values and gradients; a transform tokenweight does not know
is refused in one line at load time; a model that cannot keep packed rows apart is refused for ``padding_free``."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model

from tokenweight.errors import UserError
from tokenweight.head import output_head
from tokenweight.logps import enable_token_scoring, naive_token_logps, verify_padding_free
from tokenweight.tiled_head import Tiling

VOCAB = 64


def tiny_granite():
    from transformers import GraniteConfig, GraniteForCausalLM
    torch.manual_seed(0)
    return GraniteForCausalLM(GraniteConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, logits_scaling=8.0, embedding_multiplier=3.0, residual_multiplier=0.5,
        attention_multiplier=0.3)).eval()


def tiny_falcon_h1():
    from transformers import FalconH1Config, FalconH1ForCausalLM
    torch.manual_seed(0)
    return FalconH1ForCausalLM(FalconH1Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, mamba_d_ssm=32, mamba_n_heads=4, mamba_d_head=8, mamba_n_groups=1,
        mamba_d_state=8, mamba_d_conv=4, mamba_expand=1, mamba_chunk_size=8, lm_head_multiplier=0.3,
        embedding_multiplier=2.0)).eval()


def trained_like(model):
    """A head with logits far from uniform (a trained model's), so a missed scale changes the log-probs a lot."""
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(40.0)
    return model


@pytest.mark.parametrize("build,scale", [(tiny_granite, 1 / 8.0), (tiny_falcon_h1, 0.3)], ids=["granite", "falcon_h1"])
def test_head_equals_the_models_own_logits_values_and_gradients(build, scale):
    model, twin = trained_like(build()), trained_like(build())
    assert output_head(model).logit_scale == pytest.approx(scale)
    enable_token_scoring(model, Tiling(5, 9))
    input_ids = torch.randint(1, VOCAB, (3, 10), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(3, 9, dtype=torch.bool)
    mask[:, :3] = False  # a prompt of 4 tokens
    scores = model(input_ids=input_ids, score_tokens=True, score_mask=mask, return_stats=True)
    naive = naive_token_logps(twin(input_ids=input_ids).logits, input_ids)
    torch.testing.assert_close(scores.token_logps[mask], naive[mask], rtol=1e-5, atol=1e-5)
    without_transform = naive_token_logps(twin(input_ids=input_ids).logits.detach() / scale, input_ids)
    assert (without_transform - naive.detach())[mask].abs().max() > 0.3  # the transform matters at this head
    scores.token_logps.sum().backward()
    naive[mask].sum().backward()
    for (name, ours), theirs in zip(model.named_parameters(), twin.parameters()):
        if theirs.grad is not None:
            torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_an_unknown_final_logit_transform_is_refused_naming_the_model_type():
    """A Llama model whose config carries ``logits_scaling`` (its forward ignores it): the head would scale, the model
    does not, so the load-time check refuses it."""
    model = make_model(VOCAB)
    model.config.logits_scaling = 4.0
    with pytest.raises(UserError, match=r"model type 'llama': tokenweight's output head differs .* refusing"):
        enable_token_scoring(model)
    assert not getattr(model, "_tokenweight_scoring", False)


def test_padding_free_refuses_a_model_that_mixes_packed_rows():
    """Falcon-H1's Mamba layers carry state from one packed row into the next."""
    with pytest.raises(UserError, match=r"--padding_free: model type 'falcon_h1' .* does not keep packed rows apart"):
        verify_padding_free(tiny_falcon_h1())
    verify_padding_free(tiny_granite())
