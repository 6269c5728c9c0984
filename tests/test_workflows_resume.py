"""Resume: a CLI run SIGKILLed after a checkpoint and resumed ends bit-identical to an uninterrupted run, for every
scheme (issue 9, item 1); a checkpoint that does not exist is a one-line error."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from conftest import standard_rows
from tokenweight.cli import main
from tokenweight.trainer import TokenweightTrainer
from workflow_runs import keyfact_cache  # noqa: F401 (fixture)
from workflow_runs import (fork_stopped_run, log_history, saved_parameters, small_keyfact_args, wait_for,
                           with_token_weights, write_jsonl)


def weight_column_file(model_path, folder) -> str:
    """A JSONL file of 16 pairs with per-token ``chosen_weights``/``rejected_weights`` columns (0.5 … 2)."""
    rows = with_token_weights(standard_rows(16), model_path, lambda side, row, i: 0.5 + (i % 4) / 2
                              if side == "chosen" else 2.0 - (i % 3) / 2)
    return write_jsonl(folder / "weighted.jsonl", rows)


SCHEMES = {
    "uniform": [],
    "column": None,  # the data file and model are named in the test
    "otpo": [],
    "tidpo": ["--tidpo_gamma", "0.1"],
    "attention": [],
    "simpo": [],   # reference-free: the policy alone is checkpointed and resumed
    "confpo": [],
}


@pytest.mark.parametrize("weighting", list(SCHEMES))
def test_killed_run_resumes_bit_identical_to_uninterrupted_run(weighting, keyfact_cache, tmp_path):
    extra = SCHEMES[weighting]
    if extra is None:
        extra = ["--model_name_or_path", str(keyfact_cache), "--dataset_name",
                 weight_column_file(keyfact_cache, tmp_path)]
    marker = tmp_path / "at-step-5"
    killed = fork_stopped_run(small_keyfact_args(weighting, tmp_path / "run", *extra), stop_step=4, marker=marker)
    wait_for(marker, killed)
    os.kill(killed.pid, signal.SIGKILL)
    killed.join(timeout=30)
    assert killed.exitcode == -signal.SIGKILL
    assert main(["train", *small_keyfact_args(weighting, tmp_path / "reference", *extra)]) == 0
    run = tmp_path / "run"
    assert (run / "checkpoint-4" / "trainer_state.json").is_file() and not (run / "results.json").exists()

    kept = {path: path.stat().st_mtime_ns for path in (run / "checkpoint-2").iterdir()}

    resume = "true" if weighting in ("uniform", "otpo", "attention") else str(run / "checkpoint-4")
    trained_steps = []
    compute_loss = TokenweightTrainer.compute_loss

    def counting_compute_loss(self, model, inputs, *args, **kwargs):
        if model.training:
            trained_steps.append(self.state.global_step + 1)
        return compute_loss(self, model, inputs, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(TokenweightTrainer, "compute_loss", counting_compute_loss)
        assert main(["train", *small_keyfact_args(weighting, run, *extra), "--resume_from_checkpoint", resume]) == 0
    assert trained_steps == [5, 6]  # resumed, not restarted: only the missing steps ran
    assert {path: path.stat().st_mtime_ns for path in (run / "checkpoint-2").iterdir()} == kept

    reference, resumed = log_history(tmp_path / "reference"), log_history(run)
    losses = [entry["loss"] for entry in reference if "loss" in entry]
    assert len(losses) == 6 and all(torch.isfinite(torch.tensor(losses)))
    assert [entry["loss"] for entry in resumed if "loss" in entry] == losses
    assert resumed[:-1] == reference[:-1]  # every per-step metric, exactly
    want, got = saved_parameters(tmp_path / "reference"), saved_parameters(run)
    assert want.keys() == got.keys()
    assert all(torch.equal(want[name], got[name]) for name in want)
    initial = saved_parameters(keyfact_cache)
    assert any(not torch.equal(initial[name], want[name]) for name in want)  # the run did train


def test_resume_from_a_missing_checkpoint_is_a_one_line_error(keyfact_cache, tmp_path, capsys):
    missing = tmp_path / "nowhere" / "checkpoint-4"
    args = small_keyfact_args("uniform", tmp_path / "run")
    assert main(["train", *args, "--resume_from_checkpoint", str(missing)]) == 2
    assert capsys.readouterr().err == (f"tokenweight: error: --resume_from_checkpoint {missing}: no such "
                                       "checkpoint folder\n")
    assert main(["train", *args, "--resume_from_checkpoint", "true"]) == 2
    assert capsys.readouterr().err == ("tokenweight: error: --resume_from_checkpoint true: no checkpoint-* folder "
                                       f"in output_dir {tmp_path / 'run'}\n")
    assert not (tmp_path / "run").exists()
