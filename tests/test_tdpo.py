"""``tdpo``: TDPO1 / TDPO2 loss and gradients in the trainer vs a naive full-logits formula, settings, CLI."""

from __future__ import annotations

import json

import datasets
import pytest
import torch
import torch.nn.functional as F
from conftest import make_model, standard_rows

from tokenweight.cli import main
from tokenweight.config import TokenweightConfig
from tokenweight.data import PreferenceCollator, tokenize_preference_dataset
from tokenweight.errors import UserError
from tokenweight.trainer import TokenweightTrainer
from tokenweight.weights import build_scheme

BETA = 0.1


def naive_tdpo_loss(policy, ref, batch: dict, variant: int, alpha: float, detach_chosen_kl: bool) -> torch.Tensor:
    """Mean TDPO loss from full ``log_softmax`` over the vocabulary, one unpadded row at a time (fp64)."""
    rows = batch["input_ids"].shape[0]
    rho, kl = [], []
    for r in range(rows):
        n = int(batch["attention_mask"][r].sum())
        ids = batch["input_ids"][r, :n]
        mask = batch["completion_mask"][r, 1:n].bool()
        policy_logp = torch.log_softmax(policy(input_ids=ids[None]).logits[0, :-1].double(), -1)
        with torch.no_grad():
            ref_logp = torch.log_softmax(ref(input_ids=ids[None]).logits[0, :-1].double(), -1)
        picked = (policy_logp - ref_logp).gather(-1, ids[1:, None]).squeeze(-1)
        rho.append(picked[mask].sum())
        kl.append((ref_logp.exp() * (ref_logp - policy_logp)).sum(-1)[mask].sum())
    pairs = rows // 2
    losses = []
    for b in range(pairs):
        u = rho[b] - rho[pairs + b]
        kl_chosen = kl[b].detach() if detach_chosen_kl else kl[b]
        offset = kl[pairs + b] - kl_chosen if variant == 1 else alpha * (kl[pairs + b] - kl_chosen)
        losses.append(-F.logsigmoid(BETA * (u - offset)))
    return torch.stack(losses).mean()


def trainer_and_batch(tokenizer, **settings):
    dataset, _ = tokenize_preference_dataset(datasets.Dataset.from_list(standard_rows(4)), tokenizer)
    config = TokenweightConfig(output_dir="/tmp/tw-test-tdpo", use_cpu=True, report_to="none", beta=BETA,
                               weighting="tdpo", **settings)
    trainer = TokenweightTrainer(make_model(len(tokenizer), seed=1), make_model(len(tokenizer), seed=2), config,
                                 processing_class=tokenizer)
    return trainer, PreferenceCollator(tokenizer.pad_token_id)(list(dataset))


def gradients(model, loss: torch.Tensor) -> list[torch.Tensor]:
    return [g.double() for g in torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])]


@pytest.mark.parametrize("variant,settings,alpha", [(1, {"tdpo_variant": 1}, None),
                                                    (2, {}, 0.5), (2, {"tdpo_alpha": 0.3}, 0.3)])
def test_loss_and_gradients_match_the_naive_full_logits_formula(tokenizer, variant, settings, alpha):
    trainer, batch = trainer_and_batch(tokenizer, **settings)
    policy, ref = trainer.model, trainer.ref_model
    loss = trainer.compute_loss(policy, batch)
    naive = naive_tdpo_loss(policy, ref, batch, variant, alpha, detach_chosen_kl=variant == 2)
    assert loss.item() == pytest.approx(naive.item(), abs=1e-6)
    got, want = gradients(policy, loss), gradients(policy, naive)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-7)
    # The stop-gradient matters: the other convention gives other gradients (so the comparison above can fail).
    other = naive_tdpo_loss(policy, ref, batch, variant, alpha, detach_chosen_kl=variant == 1)
    assert max((g - o).abs().max().item() for g, o in zip(got, gradients(policy, other))) > 1e-6
    # The KL term is really in the loss: the uniform (plain DPO) loss of the same batch differs.
    uniform = naive_tdpo_loss(policy, ref, batch, 2, 0.0, True)
    assert abs(uniform.item() - loss.item()) > 1e-6


def test_weights_are_uniform_and_the_offset_is_logged(tokenizer):
    trainer, batch = trainer_and_batch(tokenizer)
    trainer.compute_loss(trainer.model, batch)
    recorded = trainer._metrics["eval"]  # the models are in eval mode
    assert {"tdpo/kl_chosen", "tdpo/kl_rejected", "tdpo/kl_term"} <= set(recorded)
    assert recorded["weights/eff_frac"][0].item() == 1.0 and recorded["weights/max"][0].item() == 1.0
    assert recorded["tdpo/kl_chosen"][0].item() > 0


def test_settings_are_checked():
    with pytest.raises(UserError, match="tdpo_variant` must be 1 or 2"):
        build_scheme("tdpo", TokenweightConfig(output_dir="/tmp/x", weighting="tdpo", tdpo_variant=3))
    with pytest.raises(UserError, match="TDPO1 .* has none"):
        TokenweightConfig(output_dir="/tmp/x", weighting="tdpo", tdpo_variant=1, tdpo_alpha=0.5)
    with pytest.raises(UserError, match="loss_type=ipo"):
        build_scheme("tdpo", TokenweightConfig(output_dir="/tmp/x", weighting="tdpo", loss_type="ipo"))
    scheme = build_scheme("tdpo", TokenweightConfig(output_dir="/tmp/x", weighting="tdpo"))
    assert scheme.alpha == 0.5 and scheme.context.beta == 0.1 and scheme.needs_hidden_for_loss


def test_precomputed_reference_log_probs_are_refused(tokenizer):
    with pytest.raises(ValueError, match="weighting='tdpo'.*hidden states"):
        trainer_and_batch(tokenizer, precompute_ref_log_probs=True)


def test_train_two_steps_on_the_built_in_task(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENWEIGHT_CACHE", str(tmp_path.parent / "keyfact-cache"))
    out = tmp_path / "run"
    assert main(["train", "--weighting", "tdpo", "--max_steps", "2", "--keyfact_model_size", "small",
                 "--keyfact_train_size", "16", "--keyfact_eval_size", "4", "--per_device_train_batch_size", "8",
                 "--logging_steps", "1", "--output_dir", str(out)]) == 0
    assert json.loads((out / "results.json").read_text())["weighting"] == "tdpo"
    logs = [e for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in e]
    assert len(logs) == 2 and logs[0]["tdpo/kl_term"] == 0.0  # policy == reference at step 0: D = 0
    assert logs[1]["tdpo/kl_chosen"] > 0 and logs[1]["loss"] < logs[0]["loss"]
