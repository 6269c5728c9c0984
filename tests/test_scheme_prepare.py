"""The scheme owns its data preparation (issue 11, item 2): ``WeightingScheme.prepare`` runs on every split that
``tokenweight train``, ``eval``, ``weights`` and ``precompute <scheme>`` read, through the same hook."""

from __future__ import annotations

import json
import math
import re

import pytest

from conftest import make_model, standard_rows
from tokenweight.cli import main
from tokenweight.weights import SCHEMES
from tokenweight.weights.attention import AttentionScheme
from tokenweight.weights.uniform import UniformScheme
from workflow_runs import write_jsonl


def save_model(path, tokenizer, seed: int):
    """A saved tiny Llama with room for the judge template (512 positions)."""
    model = make_model(len(tokenizer), seed=seed)
    model.config.max_position_embeddings = 512  # rotary positions: only the config's cap changes
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def judge_model_dir(tmp_path, tokenizer):
    return save_model(tmp_path / "tiny-judge", tokenizer, seed=0)


@pytest.fixture
def prepare_calls(monkeypatch):
    """Every call of ``AttentionScheme.prepare`` as ``(split, rows in, output_dir, model given, rows out)``."""
    calls = []
    original = AttentionScheme.prepare

    def counting(self, raw, split, context):
        prepared = original(self, raw, split, context)
        calls.append({"split": split, "rows": len(raw), "output_dir": context.output_dir,
                      "model_given": context.model is not None, "prepared": prepared})
        return prepared

    monkeypatch.setattr(AttentionScheme, "prepare", counting)
    return calls


def test_eval_and_weights_commands_judge_through_the_attention_prepare_hook(prepare_calls, judge_model_dir,
                                                                           tmp_path, tokenizer):
    data = write_jsonl(tmp_path / "pairs.jsonl", standard_rows(4))
    model = str(judge_model_dir)
    policy = str(save_model(tmp_path / "tiny-policy", tokenizer, seed=1))
    eval_json = tmp_path / "eval.json"
    assert main(["eval", "--model_name_or_path", policy, "--ref_model_name_or_path", model, "--dataset_name", data,
                 "--weighting", "attention", "--num_pairs", "3", "--num_generations", "0",
                 "--output", str(eval_json)]) == 0
    assert [(c["split"], c["rows"], c["output_dir"], c["model_given"]) for c in prepare_calls] == \
        [("train", 3, None, True)]  # once, on the evaluated split, in memory with the loaded reference as judge
    results = json.loads(eval_json.read_text())
    weighted = results["weighted"]
    assert weighted["weighting"] == "attention" and math.isfinite(weighted["weighted_margin"])
    assert weighted["weighted_margin"] != pytest.approx(results["preference"]["margin"])  # judge weights, not 1s

    prepare_calls.clear()
    report = tmp_path / "weights.html"
    assert main(["weights", "--model_name_or_path", model, "--dataset_name", data, "--weighting", "attention",
                 "--num_pairs", "2", "--output", str(report)]) == 0
    assert [(c["split"], c["rows"], c["output_dir"], c["model_given"]) for c in prepare_calls] == \
        [("train", 2, None, True)]
    prepared = prepare_calls[0]["prepared"]
    shown = [float(w) for w in re.findall(r'<span class="tok" data-weight="([^"]+)"', report.read_text())]
    expected = [w for row in prepared for side in ("chosen", "rejected") for w in row[f"{side}_weights"]]
    assert shown == pytest.approx(expected, abs=1e-4)  # the report shows the hook's weights, token for token
    assert max(expected) > 1.0 > min(expected)
    assert not (tmp_path / "attention-weights").exists() and not (judge_model_dir / "attention-weights").exists()


class CountingScheme(UniformScheme):
    """A throw-away scheme whose prepare hook records its calls and adds a column of the split's name."""

    name = "counting"
    calls: list = []

    def prepare(self, raw, split, context):
        CountingScheme.calls.append((split, len(raw), context.output_dir, context.summary is not None))
        return raw.add_column("prepared_for", [split] * len(raw))


def test_train_and_precompute_run_any_schemes_prepare_hook_on_every_split(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(SCHEMES, CountingScheme.name, CountingScheme)
    monkeypatch.setattr(CountingScheme, "calls", [])
    data = write_jsonl(tmp_path / "pairs.jsonl", standard_rows(8))
    run = tmp_path / "run"
    assert main(["train", "--model_name_or_path", str(tiny_model_dir), "--dataset_name", data, "--weighting",
                 "counting", "--eval_fraction", "0.25", "--output_dir", str(run), "--max_steps", "1",
                 "--per_device_train_batch_size", "2", "--max_length", "64", "--report_to", "none",
                 "--save_strategy", "no"]) == 0
    assert CountingScheme.calls == [("train", 6, str(run), True), ("eval", 2, str(run), True)]

    CountingScheme.calls.clear()
    cache = tmp_path / "cache"
    assert main(["precompute", "counting", "--output", str(cache), "--model_name_or_path", str(tiny_model_dir),
                 "--dataset_name", data]) == 0
    assert CountingScheme.calls == [("train", 8, str(cache), False)]  # no cache setting: --output is output_dir


def test_precompute_offers_the_schemes_with_a_prepare_hook(monkeypatch):
    from tokenweight.commands.precompute import precompute_choices

    assert precompute_choices() == ["attention", "cdpo", "sepo", "tgdpo", "tisdpo", "reference"]
    monkeypatch.setitem(SCHEMES, CountingScheme.name, CountingScheme)
    assert precompute_choices() == ["attention", "cdpo", "counting", "sepo", "tgdpo", "tisdpo", "reference"]
    assert not UniformScheme.has_prepare() and AttentionScheme.has_prepare()
