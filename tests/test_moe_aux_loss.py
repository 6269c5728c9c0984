"""Mixture-of-experts models trained as TRL 1.16's DPOTrainer trains them: the router's load-balancing loss,
``router_aux_loss_coef × aux_loss``, added to the loss and logged as ``aux_loss``; ``router_aux_loss_coef=0`` turns
it off (issue 25). TRL is the oracle only."""

from __future__ import annotations

import datasets
import pytest
import torch
from architectures import MOE, tiny_config
from conftest import make_model, standard_rows
from test_trl_parity import COMMON_ARGS, REWARD_METRICS
from transformers import AutoModelForCausalLM
from trl import DPOConfig, DPOTrainer

from tokenweight.config import TokenweightConfig
from tokenweight.data import tokenize_preference_dataset
from tokenweight.errors import UserError
from tokenweight.trainer import TokenweightTrainer

COEF = 0.02  # the tiny configs' router_aux_loss_coef (architectures.py)


def _model(name: str, vocab: int, seed: int):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(name, 2, vocab_size=vocab, positions=128)).eval()


def dpo_trainers(name, tokenizer, tmp_path, **ours_only):
    """TRL's DPOTrainer and ours (``uniform``) on tiny ``name`` models (policy seed 0, reference seed 1), in training
    mode, with each one's collated batch of the same 4 pairs; ``ours_only`` goes to our configuration."""
    rows = datasets.Dataset.from_list(standard_rows(4))
    vocab = len(tokenizer)
    trl = DPOTrainer(model=_model(name, vocab, 0), ref_model=_model(name, vocab, 1), train_dataset=rows,
                     processing_class=tokenizer,
                     args=DPOConfig(output_dir=str(tmp_path / "trl"), beta=0.1, loss_type=["sigmoid"], max_length=None,
                                    dataset_num_proc=None, **COMMON_ARGS))
    ours_rows, _ = tokenize_preference_dataset(rows, tokenizer, max_length=None)
    ours = TokenweightTrainer(_model(name, vocab, 0), _model(name, vocab, 1), train_dataset=ours_rows,
                              processing_class=tokenizer,
                              args=TokenweightConfig(output_dir=str(tmp_path / "ours"), beta=0.1, max_length=None,
                                                     **COMMON_ARGS, **ours_only))
    for trainer in (trl, ours):
        trainer.model.train()
    batches = [trainer.data_collator([trainer.train_dataset[i] for i in range(4)]) for trainer in (trl, ours)]
    return trl, ours, batches


@pytest.mark.parametrize("name", MOE)
def test_uniform_loss_aux_loss_and_gradients_equal_trl(tokenizer, tmp_path, name):
    trl, ours, (trl_batch, our_batch) = dpo_trainers(name, tokenizer, tmp_path)
    assert trl.aux_loss_enabled and trl.router_aux_loss_coef == ours.router_aux_loss_coef == COEF
    trl_loss, our_loss = trl.compute_loss(trl.model, trl_batch), ours.compute_loss(ours.model, our_batch)
    aux = ours._metrics["train"]["aux_loss"][-1].item()
    assert aux > 0.5  # the load-balancing loss is ~1 for a balanced router: the term is not vanishingly small
    assert our_loss.item() == pytest.approx(trl_loss.item(), abs=1e-6)
    assert aux == pytest.approx(trl._metrics["train"]["aux_loss"][-1], abs=1e-6)
    for metric in REWARD_METRICS:
        assert ours._metrics["train"][metric][-1].item() == pytest.approx(trl._metrics["train"][metric][-1], abs=1e-6)
    trl_loss.backward()
    our_loss.backward()
    router_grads = 0
    for (key, p_trl), p_ours in zip(trl.model.named_parameters(), ours.model.parameters()):
        torch.testing.assert_close(p_ours.grad, p_trl.grad, atol=1e-6, rtol=1e-4, msg=key)
        router_grads += "gate" in key and p_ours.grad.abs().sum().item() > 0
    assert router_grads  # the routers learn from the aux loss
    ours.log({})
    assert ours.state.log_history[-1]["aux_loss"] == pytest.approx(aux)


@pytest.mark.parametrize("name", MOE[:1])
def test_router_aux_loss_coef_zero_turns_the_term_off(tokenizer, tmp_path, name):
    trl, ours, (trl_batch, our_batch) = dpo_trainers(name, tokenizer, tmp_path, router_aux_loss_coef=0.0)
    trl_loss, our_loss = trl.compute_loss(trl.model, trl_batch), ours.compute_loss(ours.model, our_batch)
    aux = trl._metrics["train"]["aux_loss"][-1]
    assert our_loss.item() == pytest.approx(trl_loss.item() - COEF * aux, abs=1e-6)
    assert "aux_loss" not in ours._metrics["train"]


def test_a_coefficient_for_a_dense_model_is_a_user_error(tokenizer, tmp_path):
    rows, _ = tokenize_preference_dataset(datasets.Dataset.from_list(standard_rows(2)), tokenizer, max_length=None)
    vocab = len(tokenizer)
    with pytest.raises(UserError, match="`router_aux_loss_coef`: 0.1 given, but LlamaForCausalLM is not a "
                                        "mixture-of-experts model"):
        TokenweightTrainer(make_model(vocab), make_model(vocab, seed=1), train_dataset=rows, processing_class=tokenizer,
                           args=TokenweightConfig(output_dir=str(tmp_path), router_aux_loss_coef=0.1, **COMMON_ARGS))
