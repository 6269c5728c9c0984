"""Logged metrics a user can trust: declared counts are summed over processes and micro-steps (means averaged
whatever their names, token means combined as TRL does), TRL's head metrics equal a naive full-logits computation,
``num_tokens`` is a running total, and metrics cost no host synchronisation per micro-step (one transfer per
logging step)."""

from __future__ import annotations

import json
import linecache
import sys
from collections import defaultdict

import datasets
import pytest
import torch
from conftest import make_model, standard_rows

from tokenweight.cli import main
from tokenweight.config import TokenweightConfig
from tokenweight.data import tokenize_preference_dataset
from tokenweight.metrics import Count, TokenMean, record_metrics, reduce_metrics
from tokenweight.trainer import TokenweightTrainer
from tokenweight.weights.base import TokenWeights
from tokenweight.weights.uniform import UniformScheme

CPU = torch.device("cpu")


def recorded(*steps: dict) -> defaultdict:
    store = defaultdict(list)
    for metrics in steps:
        record_metrics(store, metrics)
    return store


def reduce_over_two_processes(first: defaultdict, second: defaultdict) -> dict[str, float]:
    """:func:`reduce_metrics` on process 0, its cross-process sum adding what process 1 contributes."""
    contributed = {}
    reduce_metrics(second, CPU, lambda flat: contributed.setdefault("flat", flat), 2)
    return reduce_metrics(first, CPU, lambda flat: flat + contributed["flat"], 2)


def test_counts_are_summed_means_averaged_token_means_pooled_over_processes_and_steps():
    # two micro-steps on each of two processes; floats (as schemes return them) and tensors mixed
    process0 = recorded({"x/unconverged_pairs": Count(1.0), "x/iterations": torch.tensor(10.0),
                         "entropy": TokenMean(torch.tensor(6.0), torch.tensor(3))},
                        {"x/unconverged_pairs": Count(torch.tensor(2.0)), "x/iterations": 20.0,
                         "entropy": TokenMean(torch.tensor(1.0), torch.tensor(1))})
    process1 = recorded({"x/unconverged_pairs": Count(0.0), "x/iterations": torch.tensor(30.0),
                         "entropy": TokenMean(torch.tensor(2.0), torch.tensor(1))},
                        {"x/unconverged_pairs": Count(torch.tensor(4.0)), "x/iterations": 40.0,
                         "entropy": TokenMean(torch.tensor(9.0), torch.tensor(3))})
    logged = reduce_over_two_processes(process0, process1)
    assert logged["x/unconverged_pairs"] == 7.0          # 1 + 2 + 0 + 4, not their mean 1.75
    assert logged["x/iterations"] == 25.0                # (10 + 20 + 30 + 40) / 4
    # per step Σ/Σ over processes ((6+2)/(3+1) = 2, (1+9)/(1+3) = 2.5), then the mean over steps
    assert logged["entropy"] == 2.25
    assert reduce_metrics(defaultdict(list), CPU, lambda flat: 1 / 0, 1) == {}  # nothing recorded: no collective


def test_a_metric_kind_is_declared_not_read_from_its_name():
    # a mean named like a count: 3.0 at each of 4 micro-steps logs 3.0 (a name rule gave their sum, 12.0)
    assert reduce_metrics(recorded(*[{"firstk/avg_tokens": 3.0}] * 4), CPU, lambda flat: flat, 1) == {
        "firstk/avg_tokens": 3.0}
    # a declared count named like a mean is summed, over micro-steps and over processes
    # (and a mean named `num_*` is averaged)
    process0 = recorded({"x/mean_gap": Count(1.0), "num_x": 2.0},
                        {"x/mean_gap": Count(torch.tensor(2.0)), "num_x": 4.0})
    process1 = recorded({"x/mean_gap": Count(torch.tensor(3.0)), "num_x": 6.0},
                        {"x/mean_gap": Count(5.0), "num_x": 8.0})
    assert reduce_over_two_processes(process0, process1) == {"x/mean_gap": 11.0, "num_x": 5.0}


def test_a_metric_recorded_as_two_kinds_is_refused():
    with pytest.raises(ValueError, match="'x/m' was recorded as more than one kind: count, mean"):
        reduce_metrics(recorded({"x/m": Count(1.0)}, {"x/m": 1.0}), CPU, lambda flat: flat, 1)


def test_a_metric_must_be_a_scalar():
    with pytest.raises(ValueError, match="'x/m' must be a scalar"):
        recorded({"x/m": torch.ones(2)})
    with pytest.raises(TypeError, match="'x/m'"):
        recorded({"x/m": "high"})


class CountingUniform(UniformScheme):
    """Uniform weights, plus a count of 1 (a float) and 2 (a tensor) and a mean named like a count (3.0) at every
    micro-step."""

    def compute(self, inputs):
        weights = super().compute(inputs).weights
        return TokenWeights(weights=weights, metrics={"test/fake_failures": Count(1.0),
                                                      "test/fake_rows": Count(torch.tensor(2.0)),
                                                      "test/avg_tokens": torch.tensor(3.0)})


def small_trainer(tokenizer, tmp_path, **overrides) -> TokenweightTrainer:
    dataset, _ = tokenize_preference_dataset(datasets.Dataset.from_list(standard_rows(8)), tokenizer,
                                             max_length=None)
    settings = dict(output_dir=str(tmp_path / "run"), use_cpu=True, report_to=[], save_strategy="no",
                    disable_tqdm=True, beta=0.1, max_length=None, per_device_train_batch_size=2, seed=0,
                    learning_rate=1e-3, train_sampling_strategy="sequential")
    args = TokenweightConfig(**{**settings, **overrides})
    vocab = len(tokenizer)
    return TokenweightTrainer(make_model(vocab, seed=0), make_model(vocab, seed=1), args, train_dataset=dataset,
                              processing_class=tokenizer)


def test_counts_in_a_two_step_log_are_the_sum_of_its_micro_steps(tokenizer, tmp_path):
    trainer = small_trainer(tokenizer, tmp_path, max_steps=4, gradient_accumulation_steps=2, logging_steps=2)
    trainer.scheme = CountingUniform()
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 2
    for entry in logs:  # 2 optimizer steps × 2 micro-steps per log
        assert entry["test/fake_failures"] == 4.0 and entry["test/fake_rows"] == 8.0
        assert entry["test/avg_tokens"] == 3.0  # a mean named `*_tokens` stays a mean
        assert entry["weights/mean"] == pytest.approx(1.0)  # a mean stays a mean
    tokens = sum(row_tokens(trainer.train_dataset))  # each log covers 2 × 2 × 2 pairs: all 8 rows, once
    assert [entry["num_tokens"] for entry in logs] == [tokens, 2 * tokens]  # a running total


def row_tokens(dataset) -> list[int]:
    """Tokens of each pair as the model sees them: prompt + chosen, and prompt + rejected."""
    return [2 * len(row["prompt_ids"]) + len(row["chosen_ids"]) + len(row["rejected_ids"]) for row in dataset]


def test_head_metrics_equal_a_naive_full_logits_computation(tokenizer, tmp_path):
    trainer = small_trainer(tokenizer, tmp_path)
    trainer.model.train()
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    trainer.compute_loss(trainer.model, batch)
    trainer.log({})
    logged = trainer.state.log_history[-1]
    with torch.no_grad():
        logits = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits, labels = logits[:, :-1].double(), batch["input_ids"][:, 1:]
    mask = batch["completion_mask"][:, 1:].bool()
    chosen, rejected = mask.clone(), mask.clone()
    chosen[4:], rejected[:4] = False, False
    logp = torch.log_softmax(logits, dim=-1)
    entropy = -(logp.exp() * logp).sum(dim=-1)
    assert logged["entropy"] == pytest.approx(entropy[mask].mean().item(), rel=1e-6)
    assert logged["logits/chosen"] == pytest.approx(logits.mean(dim=-1)[chosen].mean().item(), rel=1e-6)
    assert logged["logits/rejected"] == pytest.approx(logits.mean(dim=-1)[rejected].mean().item(), rel=1e-6)
    top1 = logits.argmax(dim=-1) == labels
    assert logged["mean_token_accuracy"] == pytest.approx(top1[chosen].double().mean().item(), abs=1e-12)
    assert logged["num_tokens"] == int(batch["attention_mask"].sum())


SYNCS = ("item", "tolist", "__float__", "__int__", "__bool__", "numpy")


def is_guard(frame) -> bool:
    """The checks that must raise before the optimizer step: the weight check and the finite-loss check."""
    line = linecache.getline(frame.f_code.co_filename, frame.f_lineno)
    return frame.f_code.co_name == "check_weights" or "isfinite" in line


def test_metrics_make_no_host_sync_per_micro_step_and_one_transfer_per_log(tokenizer, tmp_path, monkeypatch):
    """Counts every ``.item()``/``.tolist()``/``float()``/``int()``/``bool()``/``.numpy()`` of a tensor made by
    tokenweight's code while ``compute_loss`` and ``log`` run (the model's own forward is transformers')."""
    trainer = small_trainer(tokenizer, tmp_path, max_steps=2, gradient_accumulation_steps=2, logging_steps=2)
    phase = {"now": None}
    syncs = defaultdict(list)

    def counting(name, original):
        def wrapper(tensor, *args, **kwargs):
            caller = sys._getframe(1)
            if phase["now"] and "tokenweight" in caller.f_code.co_filename and not is_guard(caller):
                syncs[phase["now"]].append(f"{name} at {caller.f_code.co_filename}:{caller.f_lineno}")
            return original(tensor, *args, **kwargs)
        return wrapper

    for name in SYNCS:
        monkeypatch.setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))

    def in_phase(name, method):
        def wrapper(*args, **kwargs):
            phase["now"] = name
            try:
                return method(*args, **kwargs)
            finally:
                phase["now"] = None
        return wrapper

    monkeypatch.setattr(trainer, "compute_loss", in_phase("micro-step", trainer.compute_loss))
    monkeypatch.setattr(trainer, "log", in_phase("log", trainer.log))
    trainer.train()
    assert syncs["micro-step"] == []  # 4 micro-steps: no sync in tokenweight's code outside the guards
    assert [s.split(" ")[0] for s in syncs["log"]] == ["tolist"]  # one transfer for the one training log
    assert "rewards/margins" in trainer.state.log_history[0]  # and the metrics were logged


def test_tokenweight_train_logs_trl_metrics_and_running_token_count(tmp_path, tiny_model_dir, tokenizer):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in standard_rows(8)))
    out = tmp_path / "run"
    assert main(["train", "--model_name_or_path", str(tiny_model_dir), "--dataset_name", str(data),
                 "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2", "--max_steps", "2",
                 "--logging_steps", "1", "--max_length", "128", "--save_strategy", "no", "--report_to", "none",
                 "--output_dir", str(out)]) == 0
    logs = [e for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in e]
    dataset, _ = tokenize_preference_dataset(datasets.Dataset.from_list(standard_rows(8)), tokenizer, max_length=None)
    total = sum(row_tokens(dataset))
    assert len(logs) == 2 and logs[-1]["num_tokens"] == total  # two steps of 2 × 2 pairs: every row once
    assert 0 < logs[0]["num_tokens"] < total
    for entry in logs:
        assert {"entropy", "logits/chosen", "logits/rejected", "mean_token_accuracy"} <= set(entry)
        assert 0.0 <= entry["mean_token_accuracy"] <= 1.0 and entry["entropy"] > 0
