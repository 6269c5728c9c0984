"""``simpo`` against TRL's CPO trainer with ``loss_type="simpo"``, ``cpo_alpha=0`` (``trl.experimental.cpo``, the
oracle only): the same tiny model and the same batch give the same loss, reward metrics and gradients; SimPO's hinge
against its formula on TRL's length-normalised log-probs; and the settings map as documented."""

from __future__ import annotations

import datasets
import pytest
import torch
from conftest import make_model, standard_rows
from trl.experimental.cpo import CPOConfig, CPOTrainer

from tokenweight.config import TokenweightConfig
from tokenweight.data import PreferenceCollator, tokenize_preference_dataset
from tokenweight.errors import UserError
from tokenweight.trainer import TokenweightTrainer
from tokenweight.weights import SchemeContext, batch_inputs, build_scheme
from tokenweight.weights.simpo import SimPOScheme

BETA, RATIO = 2.5, 0.55  # SimPO's Llama3-Instruct setting: γ = 1.375
#: metrics TRL's CPO logs under the same names and meaning (rewards = β · length-normalised policy log-probs)
CPO_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
               "logps/rejected")


def our_trainer(tokenizer, tmp_path, **settings) -> TokenweightTrainer:
    config = TokenweightConfig(output_dir=str(tmp_path / "ours"), use_cpu=True, report_to="none", weighting="simpo",
                               beta=BETA, simpo_gamma_beta_ratio=RATIO, **settings)
    return TokenweightTrainer(make_model(len(tokenizer), seed=0), None, config, processing_class=tokenizer)


def cpo_trainer(tokenizer, tmp_path, **settings) -> CPOTrainer:
    """TRL's CPO with SimPO's loss: ``simpo_gamma`` is the margin γ itself, β × γ/β."""
    return CPOTrainer(model=make_model(len(tokenizer), seed=0), processing_class=tokenizer,
                      train_dataset=datasets.Dataset.from_list(standard_rows(4)),
                      args=CPOConfig(output_dir=str(tmp_path / "cpo"), loss_type="simpo", cpo_alpha=0.0, beta=BETA,
                                     simpo_gamma=BETA * RATIO, report_to=[], use_cpu=True, save_strategy="no",
                                     **settings))


def our_batch(tokenizer) -> dict[str, torch.Tensor]:
    dataset, _ = tokenize_preference_dataset(datasets.Dataset.from_list(standard_rows(4)), tokenizer)
    return PreferenceCollator(tokenizer.pad_token_id)(list(dataset))


def cpo_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our collated batch in CPO's layout: chosen/rejected ids, masks and labels (−100 outside the completion)."""
    labels = torch.where(batch["completion_mask"].bool(), batch["input_ids"], -100)
    pairs = batch["input_ids"].shape[0] // 2
    out = {}
    for side, rows in (("chosen", slice(0, pairs)), ("rejected", slice(pairs, None))):
        out[f"{side}_input_ids"] = batch["input_ids"][rows]
        out[f"{side}_attention_mask"] = batch["attention_mask"][rows]
        out[f"{side}_labels"] = labels[rows]
    return out


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_simpo_loss_metrics_and_gradients_match_trl_cpo(tokenizer, tmp_path, label_smoothing):
    ours = our_trainer(tokenizer, tmp_path, label_smoothing=label_smoothing)
    cpo = cpo_trainer(tokenizer, tmp_path, label_smoothing=label_smoothing)
    assert ours.ref_model is None
    ours.model.train()
    cpo.model.train()
    batch = our_batch(tokenizer)
    our_loss = ours.compute_loss(ours.model, batch)
    cpo_loss, cpo_metrics = cpo.get_batch_loss_metrics(cpo.model, cpo_batch(batch))
    assert abs(our_loss.item() - cpo_loss.item()) < 1e-5
    assert our_loss.item() > 0.1  # not a saturated loss: the margin matters
    for name in CPO_METRICS:
        assert ours._metrics["train"][name][-1].item() == pytest.approx(cpo_metrics[name], abs=1e-5), name
    assert abs(cpo_metrics["rewards/margins"]) > 1e-4  # the two models are not trivially tied
    assert not any(name.startswith("rewards/weighted_") for name in ours._metrics["train"])  # no duplicates
    our_loss.backward()
    cpo_loss.backward()
    for (name, p_cpo), p_ours in zip(cpo.model.named_parameters(), ours.model.parameters()):
        assert torch.allclose(p_cpo.grad, p_ours.grad, atol=1e-6, rtol=1e-4), name


def test_simpo_hinge_is_simpos_hinge_on_trls_length_normalised_logps(tokenizer, tmp_path):
    """SimPO's hinge: max(0, 1 − β(Δ̄ − γ/β)), Δ̄ the difference of the length-normalised log-probs (TRL's CPO has
    no margin in its hinge, so only its log-probs serve as the oracle here)."""
    ours = our_trainer(tokenizer, tmp_path, loss_type="hinge")
    batch = our_batch(tokenizer)
    loss = ours.compute_loss(ours.model, batch)
    oracle = make_model(len(tokenizer), seed=0)
    logits = oracle(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = torch.where(batch["completion_mask"].bool(), batch["input_ids"], -100)
    average = CPOTrainer.get_batch_logps(logits, labels, average_log_prob=True)
    chosen, rejected = average.chunk(2)
    expected = torch.relu(1 - BETA * (chosen - rejected - RATIO)).mean()
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    assert 0 < expected.item()  # the hinge is active on this batch


def test_simpo_defaults_and_refusals():
    scheme = build_scheme("simpo")
    assert scheme.context.beta == 2.0 and scheme.settings.simpo_gamma_beta_ratio == 0.5  # SimPO's Llama3-Base
    assert TokenweightConfig(output_dir="/tmp/tw", weighting="simpo").effective_beta == 2.0
    with pytest.raises(UserError, match="weighting=simpo supports sigmoid, hinge, not ipo"):
        TokenweightConfig(output_dir="/tmp/tw", weighting="simpo", loss_type="ipo")
    with pytest.raises(UserError, match="weighting=simpo supports sigmoid, hinge, not ipo"):  # without a config too
        SimPOScheme(context=SchemeContext(beta=2.0, loss_type="ipo"))
    with pytest.raises(UserError, match="simpo_gamma_beta_ratio` must be >= 0"):
        TokenweightConfig(output_dir="/tmp/tw", weighting="simpo", simpo_gamma_beta_ratio=-0.1)


def test_simpo_weights_are_one_over_the_response_length(tokenizer):
    batch = our_batch(tokenizer)
    weights = build_scheme("simpo").compute(batch_inputs(batch, model=None)).weights
    lengths = batch["loss_mask"].sum(dim=1, keepdim=True).float()
    assert len(set(lengths.flatten().tolist())) > 1  # responses of different lengths
    assert torch.equal(weights, batch["loss_mask"].float() / lengths)
    assert torch.allclose(weights.sum(dim=1), torch.ones(len(weights)))
