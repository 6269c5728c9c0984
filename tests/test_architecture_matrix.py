"""Every scheme × every architecture of :mod:`architectures` (issue 25): 2 training steps through ``tokenweight train``
in this process on tiny saved models (built once), each a finished run with finite losses or a one-line refusal;
LoRA for two schemes; plain DPO equal to TRL's ``DPOTrainer`` on every architecture.

The default suite runs a cover of the matrix (every architecture and every scheme at least once); the whole matrix
is ``-m slow`` (``make test-all``), its results are the table in docs/ARCHITECTURES.md."""

from __future__ import annotations

import json
import math

import pytest
import torch
from architectures import ARCHITECTURES, MOE, tiny_config
from attention_fixtures import STANDARD_ROWS, make_bpe_tokenizer
from test_moe_aux_loss import dpo_trainers
from transformers import AutoModelForCausalLM
from workflow_runs import with_token_weights

from tokenweight.cli import main
from tokenweight.weights import SCHEMES

POSITIONS = 512  # holds AttentionPO's judge input (template ≈ 300 tokens + question + both answers)
WINDOW = 300  # sliding layers: longer than the judge template, shorter than the judge inputs
SCHEME_NAMES = sorted(SCHEMES)
#: flags an architecture needs on an AttentionPO run: BLOOM computes attention itself and states no context length (the
#: judge cap is then given; every run's --max_length 128 also bounds TI-DPO's sampled anchors). Other schemes refuse
#: them, as every scheme refuses another's settings.
ATTENTION_FLAGS = {"bloom": ["--attention_max_length", "512", "--attention_rows", "eager"]}
#: the default suite's cover: every architecture and every scheme at least once
COVER = [("llama", "uniform"), ("mistral", "sampo"), ("qwen2", "column"), ("qwen3", "confpo"), ("mixtral", "tidpo"),
         ("qwen2_moe", "otpo"), ("qwen3_moe", "d2po"), ("gemma", "lddpo"), ("gemma2", "simpo"), ("gemma3_text", "tdpo"),
         ("phi3", "tisdpo"), ("granite", "uniform"), ("falcon_h1", "attention"), ("gpt2", "sepo"),
         ("gpt_neox", "tgdpo"), ("olmo2", "cdpo"), ("falcon", "d2po"), ("bloom", "column")]
assert {name for name, _ in COVER} == set(ARCHITECTURES) and {scheme for _, scheme in COVER} == set(SCHEME_NAMES)
FULL = [(name, scheme) for name in ARCHITECTURES for scheme in SCHEME_NAMES if (name, scheme) not in COVER]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Data files and, per architecture, two saved tiny 2-layer models (seeds 0 and 1) with the BPE tokenizer."""
    root = tmp_path_factory.mktemp("matrix")
    tokenizer = make_bpe_tokenizer()
    models = {}
    for name in ARCHITECTURES:
        config = tiny_config(name, 2, vocab_size=len(tokenizer), positions=POSITIONS, window=WINDOW)
        for seed in (0, 1):
            torch.manual_seed(seed)
            path = root / f"{name}-{seed}"
            AutoModelForCausalLM.from_config(config).save_pretrained(path)
            tokenizer.save_pretrained(path)
        models[name] = (root / f"{name}-0", root / f"{name}-1")
    rows = STANDARD_ROWS + STANDARD_ROWS[:1]  # 4 pairs: 2 steps of 2
    data = root / "pairs.jsonl"
    weighted = root / "weighted.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    weighted_rows = with_token_weights(rows, models["llama"][0], lambda side, row, i: 0.5 + (i % 3) / 2)
    weighted.write_text("".join(json.dumps(row) + "\n" for row in weighted_rows))
    return root, models, data, weighted


def _flags(scheme: str, models: tuple, data, weighted) -> list[str]:
    """The dataset and the scheme's own flags (the models a scheme needs trained first: the two seeds' models)."""
    flags = ["--dataset_name", str(weighted if scheme == "column" else data)]
    flags += {"tisdpo": ["--tisdpo_positive_model", str(models[0]), "--tisdpo_negative_model", str(models[1])],
              "cdpo": ["--cdpo_positive_model", str(models[0]), "--cdpo_negative_model", str(models[1])],
              "sepo": ["--sepo_oracle_model", str(models[1])],
              "tgdpo": ["--tgdpo_reward_model", str(models[1])]}.get(scheme, [])
    return flags


def train_two_steps(workspace, name: str, scheme: str, *extra: str) -> tuple[int, list[dict]]:
    """``tokenweight train`` of ``scheme`` on the tiny ``name`` model: exit status and logged training steps."""
    root, models, data, weighted = workspace
    out = root / "runs" / f"{name}-{scheme}{'-lora' if extra else ''}"
    argv = ["train", "--model_name_or_path", str(models[name][0]), "--weighting", scheme,
            *_flags(scheme, models[name], data, weighted), *(ATTENTION_FLAGS.get(name, []) if scheme == "attention" else []), *extra,
            "--output_dir", str(out), "--max_length", "128", "--max_steps", "2", "--per_device_train_batch_size", "2", "--logging_steps",
            "1", "--save_strategy", "no", "--report_to", "none", "--use_cpu", "true", "--overwrite_output_dir", "true"]
    status = main(argv)
    if status != 0:
        return status, []
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return status, [entry for entry in history if "loss" in entry]


def _assert_trained(workspace, name, scheme, *extra, capsys=None):
    status, steps = train_two_steps(workspace, name, scheme, *extra)
    err = capsys.readouterr().err if capsys is not None else ""
    assert status == 0, f"{name} × {scheme}: exit {status}\n{err[-3000:]}"
    assert len(steps) == 2 and all(math.isfinite(entry["loss"]) for entry in steps), steps
    if name in MOE:
        assert all(entry["aux_loss"] > 0 for entry in steps)  # the router loss is in, logged as TRL logs it


@pytest.mark.parametrize("name, scheme", COVER)
def test_a_cover_of_the_matrix_trains(workspace, name, scheme, capsys):
    _assert_trained(workspace, name, scheme, capsys=capsys)


@pytest.mark.slow
@pytest.mark.parametrize("name, scheme", FULL)
def test_the_rest_of_the_matrix_trains(workspace, name, scheme, capsys):
    _assert_trained(workspace, name, scheme, capsys=capsys)


@pytest.mark.parametrize("name, scheme", [("qwen2_moe", "uniform"), ("gpt2", "attention")])
def test_lora_trains_two_schemes(workspace, name, scheme, capsys):
    _assert_trained(workspace, name, scheme, "--use_peft", "true", "--lora_r", "4", capsys=capsys)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_uniform_equals_trl_dpo_on_every_architecture(tokenizer, tmp_path, name):
    """Loss, rewards and gradients of one batch (4 pairs) equal TRL's DPOTrainer's."""
    trl, ours, (trl_batch, our_batch) = dpo_trainers(name, tokenizer, tmp_path)
    trl_loss, our_loss = trl.compute_loss(trl.model, trl_batch), ours.compute_loss(ours.model, our_batch)
    assert our_loss.item() == pytest.approx(trl_loss.item(), abs=1e-5)  # as tests/test_trl_parity.py
    margins = ours._metrics["train"]["rewards/margins"][-1].item()
    assert margins == pytest.approx(trl._metrics["train"]["rewards/margins"][-1], abs=1e-5) and abs(margins) > 1e-4
    trl_loss.backward()
    our_loss.backward()
    for (key, p_trl), p_ours in zip(trl.model.named_parameters(), ours.model.parameters()):
        if p_trl.grad is not None or p_ours.grad is not None:
            torch.testing.assert_close(p_ours.grad, p_trl.grad, atol=1e-6, rtol=1e-4, msg=key)
