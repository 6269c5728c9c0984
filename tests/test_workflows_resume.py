"""Resume: a CLI run SIGKILLed after a checkpoint and resumed ends bit-identical to an uninterrupted run, for every
scheme (issue 9, item 1); a checkpoint that does not exist is a one-line error. A resume checks the setup against
the checkpoint's record (issue 22, item 1) and takes only complete checkpoints (item 4)."""

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
    assert capsys.readouterr().err == ("tokenweight: error: --resume_from_checkpoint true: no complete checkpoint-* "
                                       f"folder in output_dir {tmp_path / 'run'}\n")
    assert not (tmp_path / "run").exists()


def finished_keyfact_run(tmp_path, *extra: str) -> tuple[list[str], object]:
    """A finished 4-step uniform run with checkpoints 2 and 4: (its flags, its folder)."""
    args = [*small_keyfact_args("uniform", tmp_path / "run", *extra), "--max_steps", "4"]
    assert main(["train", *args]) == 0
    return args, tmp_path / "run"


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("tokenweight: error:")]
    return line


def test_resume_with_another_setup_names_every_difference(keyfact_cache, tmp_path, capsys):
    args, run = finished_keyfact_run(tmp_path)
    checkpoint = run / "checkpoint-4"
    capsys.readouterr()
    assert main(["train", *args, "--weighting", "d2po", "--beta", "0.5", "--learning_rate", "1e-2",
                 "--resume_from_checkpoint", "true"]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"tokenweight: error: --resume_from_checkpoint {checkpoint}: the run differs from the "
                           "checkpoint's: weighting: checkpoint uniform vs now d2po; ")
    for fragment in ("beta: checkpoint 0.1 vs now 0.5", "learning_rate: checkpoint 0.0005 vs now 0.01",
                     "d2po_gamma: checkpoint None vs now"):
        assert fragment in line, (fragment, line)
    assert line.endswith("; resume with the checkpoint's settings and data, or start a new run")

    assert main(["train", *args, "--keyfact_train_size", "14", "--resume_from_checkpoint", "true"]) == 2
    line = one_error_line(capsys)
    assert "the run differs from the checkpoint's: data: checkpoint {'rows': 16, " in line
    assert "vs now {'rows': 14, " in line and line.endswith("pass --resume_changes data to apply the new value(s) "
                                                           "from the resumed step on")
    assert main(["train", *args, "--max_length", "64", "--resume_from_checkpoint", "true"]) == 2
    assert "max_length: checkpoint 128 vs now 64" in one_error_line(capsys)
    assert main(["train", *args, "--resume_from_checkpoint", "true", "--resume_changes", "learning_rate"]) == 2
    assert one_error_line(capsys) == (f"tokenweight: error: config key `resume_changes` names learning_rate, which "
                                      f"the run does not change (the checkpoint {checkpoint} has the same value)")
    assert main(["train", *args, "--resume_changes", "beta"]) == 2
    assert one_error_line(capsys) == ("tokenweight: error: config key `resume_changes`: beta cannot change on a resume "
                                      "(it may: learning_rate, max_grad_norm, max_steps, num_train_epochs, data)")


def test_resume_true_skips_incomplete_checkpoints_and_an_explicit_one_is_refused(keyfact_cache, tmp_path, capsys):
    args, run = finished_keyfact_run(tmp_path)
    final = saved_parameters(run)
    weights = run / "checkpoint-4" / "model.safetensors"
    written = weights.stat().st_size
    with open(weights, "r+b") as file:
        file.truncate(written // 2)  # a save cut short by a full disk or a kill
    capsys.readouterr()
    assert main(["train", *args, "--resume_from_checkpoint", str(run / "checkpoint-4")]) == 2
    assert one_error_line(capsys) == (
        f"tokenweight: error: --resume_from_checkpoint {run / 'checkpoint-4'}: not a complete checkpoint "
        f"(model.safetensors is damaged ({written // 2} bytes, {written} were written))")
    (run / "checkpoint-4" / "tokenweight_checkpoint.json").unlink()
    assert main(["train", *args, "--resume_from_checkpoint", str(run / "checkpoint-4")]) == 2
    assert one_error_line(capsys).endswith("not a complete checkpoint (no tokenweight_checkpoint.json: its save did "
                                           "not finish)")
    assert main(["train", *args, "--resume_from_checkpoint", "true"]) == 0
    assert (f"tokenweight: --resume_from_checkpoint true: skipping incomplete {run / 'checkpoint-4'} (no "
            "tokenweight_checkpoint.json: its save did not finish)") in capsys.readouterr().err
    resumed = saved_parameters(run)  # steps 3 and 4 again, from checkpoint-2: the same parameters
    assert all(torch.equal(final[name], resumed[name]) for name in final)
