"""``--weighting attention --eval_strategy steps`` evaluates on judge-weighted eval rows (issue 9, item 7): the eval
split gets its own judge pass, cached in ``attention-weights/eval``."""

from __future__ import annotations

import json
import math

from tokenweight.weights.attention.cache import read_manifest
from tokenweight.cli import main
from workflow_runs import keyfact_cache  # noqa: F401 (fixture)
from workflow_runs import small_keyfact_args


def test_attention_run_with_step_evaluation_logs_finite_weighted_eval_metrics(keyfact_cache, tmp_path, capsys):
    out = tmp_path / "run"
    args = small_keyfact_args("attention", out, "--max_steps", "4", "--save_strategy", "no", "--eval_strategy",
                              "steps", "--eval_steps", "2", "--keyfact_eval_size", "4")
    assert main(["train", *args]) == 0
    err = capsys.readouterr().err
    for split, pairs in (("train", 16), ("eval", 4)):  # the judge's counts, printed and in results.json
        assert f"data {split}: attention weights: {pairs} pairs, 0 cut to the judge length cap" in err
    data = json.loads((out / "results.json").read_text())["data"]
    assert (data["train"]["attention"]["pairs"], data["eval"]["attention"]["pairs"]) == (16, 4)
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    evals = [entry for entry in history if "eval_loss" in entry]
    assert [entry["step"] for entry in evals] == [2, 4]
    for entry in evals:
        assert all(math.isfinite(value) for key, value in entry.items() if key.startswith("eval_"))
        assert entry["eval_weights/max"] > 1.0 > entry["eval_weights/min"]  # judge weights, not uniform ones
    train_cache = read_manifest(out / "attention-weights")
    eval_cache = read_manifest(out / "attention-weights" / "eval")
    assert (train_cache["complete"], train_cache["num_rows"]) == (True, 16)
    assert (eval_cache["complete"], eval_cache["num_rows"]) == (True, 4)
    assert eval_cache["fingerprint"]["dataset"] != train_cache["fingerprint"]["dataset"]
