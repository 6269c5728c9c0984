"""A non-finite loss, Ctrl-C, SIGTERM and a full disk end a run loudly and resumably (issue 9, item 8; issue 22,
items 5 and 6).

A NaN names the rows and the step, saves the state before the failing update as ``checkpoint-<step - 1>`` and
exits with status 2 (a setting or a row must change: a user error); resuming from that checkpoint with the row
fixed ends exactly where a clean run ends. Ctrl-C prints the step and the last checkpoint and exits with 130.
"""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import torch

from conftest import standard_rows
from tokenweight.cli import main
from workflow_runs import log_history, saved_parameters, start_stopped_run, wait_for, with_token_weights, write_jsonl

BAD_ROW = 5


def error_line(stderr: str) -> str:
    """The one ``tokenweight: error:`` line of a run's stderr (progress bars aside), with no traceback."""
    assert "Traceback" not in stderr
    (line,) = [line for line in stderr.splitlines() if line.startswith("tokenweight: error:")]
    return line


def column_run_args(model_dir, data: str, output_dir) -> list[str]:
    return ["train", "--model_name_or_path", str(model_dir), "--dataset_name", data, "--weighting", "column",
            "--output_dir", str(output_dir), "--per_device_train_batch_size", "2", "--max_steps", "4",
            "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none"]


def test_nan_gradient_names_rows_and_step_saves_last_good_state_and_resumes(tiny_model_dir, tmp_path, capsys):
    rows = standard_rows(8)
    # Finite weights: the loss stays finite (~1e35) but its gradient overflows to nan.
    poisoned = with_token_weights(rows, tiny_model_dir, lambda side, row, i: 1e38 if row == BAD_ROW else 1.0)
    fixed = with_token_weights(rows, tiny_model_dir, lambda side, row, i: 1.0)
    data = tmp_path / "pairs.jsonl"
    write_jsonl(data, poisoned)
    out = tmp_path / "run"
    assert main(column_run_args(tiny_model_dir, str(data), out)) == 2
    err = capsys.readouterr().err
    match = re.fullmatch(r"tokenweight: error: non-finite gradient norm \(nan\) with weighting='column' on dataset "
                         r"rows \[(\d+), (\d+)\] at step (\d+); the last good state \(step (\d+)\) is saved in "
                         r"(\S+): fix the rows and resume with --resume_from_checkpoint (\S+) --resume_changes data, "
                         r"or lower --learning_rate and resume from it or an earlier checkpoint with --resume_changes "
                         r"learning_rate", error_line(err))
    assert match, err
    pair, step, good = {int(match[1]), int(match[2])}, int(match[3]), int(match[4])
    assert BAD_ROW in pair and step > 1 and good == step - 1
    assert match[5] == match[6] == str(out / f"checkpoint-{good}")
    saved = json.loads((out / f"checkpoint-{good}" / "trainer_state.json").read_text())
    assert saved["global_step"] == good
    assert not (out / "results.json").exists()

    write_jsonl(data, fixed)  # the user repairs the row and resumes from the saved state, as the error says
    assert main([*column_run_args(tiny_model_dir, str(data), out), "--resume_from_checkpoint", match[5]]) == 2
    assert error_line(capsys.readouterr().err).startswith(
        f"tokenweight: error: --resume_from_checkpoint {match[5]}: the run differs from the checkpoint's: data: "
        "checkpoint {'rows': 8, ")  # not silently: the changed rows must be named as a change
    assert main([*column_run_args(tiny_model_dir, str(data), out), "--resume_from_checkpoint", match[5],
                 "--resume_changes", "data"]) == 0
    changed = json.loads((out / "results.json").read_text())["resumed"]
    assert changed["checkpoint"] == match[5] and list(changed["changes"]) == ["data"]
    write_jsonl(tmp_path / "clean.jsonl", fixed)
    assert main(column_run_args(tiny_model_dir, str(tmp_path / "clean.jsonl"), tmp_path / "clean")) == 0
    clean, resumed = log_history(tmp_path / "clean"), log_history(out)
    losses = [e["loss"] for e in clean if "loss" in e]
    assert len(losses) == 4 and [e["loss"] for e in resumed if "loss" in e] == losses
    want, got = saved_parameters(tmp_path / "clean"), saved_parameters(out)
    assert all(torch.equal(want[name], got[name]) for name in want)  # the saved state was the one before step S


def test_nan_loss_names_rows_and_step_and_saves_the_state_before_it(tiny_model_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "pairs.jsonl", standard_rows(8))
    out = tmp_path / "run"
    # Step 1 moves every parameter by ~1e30 (Adam), so step 2's logits overflow and its loss is nan.
    assert main([*column_run_args(tiny_model_dir, data, out), "--weighting", "uniform", "--learning_rate",
                 "1e30"]) == 2
    err = capsys.readouterr().err
    saved = out / "checkpoint-1"
    assert re.fullmatch(r"tokenweight: error: non-finite loss \(nan\) with weighting='uniform' on dataset rows "
                        rf"\[\d+, \d+\] at step 2; the last good state \(step 1\) is saved in {saved}: fix the rows "
                        rf"and resume with --resume_from_checkpoint {saved} --resume_changes data, or lower "
                        "--learning_rate and resume from it or an earlier checkpoint with --resume_changes "
                        "learning_rate", error_line(err)), err
    assert json.loads((saved / "trainer_state.json").read_text())["global_step"] == 1
    assert (saved / "model.safetensors").is_file() and (saved / "optimizer.pt").is_file()


def test_lower_learning_rate_advice_resumes_from_an_earlier_checkpoint_with_the_new_rate(tiny_model_dir, tmp_path,
                                                                                         capsys):
    """The error's learning-rate advice, followed: step 1 runs at rate 0 (warm-up), step 2 at 1e30 wrecks the
    parameters and step 3's loss is nan; resuming from checkpoint-1 with ``--learning_rate 1e-3 --resume_changes
    learning_rate`` must train exactly as a run started at 1e-3 (step 1 changes no parameter in either run and
    leaves the same Adam moments), so both end bit-identical and log the same rates."""
    data = write_jsonl(tmp_path / "pairs.jsonl", standard_rows(8))
    out, clean = tmp_path / "run", tmp_path / "clean"
    args = [*column_run_args(tiny_model_dir, data, out), "--weighting", "uniform", "--lr_scheduler_type",
            "constant_with_warmup", "--warmup_steps", "1", "--save_strategy", "steps", "--save_steps", "1"]
    assert main([*args, "--learning_rate", "1e30"]) == 2
    assert "non-finite loss (nan)" in error_line(capsys.readouterr().err)
    assert main([*args, "--learning_rate", "1e-3", "--resume_from_checkpoint", str(out / "checkpoint-1")]) == 2
    assert error_line(capsys.readouterr().err) == (
        f"tokenweight: error: --resume_from_checkpoint {out / 'checkpoint-1'}: the run differs from the "
        "checkpoint's: learning_rate: checkpoint 1e+30 vs now 0.001; pass --resume_changes learning_rate to apply "
        "the new value(s) from the resumed step on")
    assert main([*args, "--learning_rate", "1e-3", "--resume_from_checkpoint", str(out / "checkpoint-1"),
                 "--resume_changes", "learning_rate"]) == 0
    assert json.loads((out / "results.json").read_text())["resumed"] == {
        "checkpoint": str(out / "checkpoint-1"), "changes": {"learning_rate": {"checkpoint": 1e30, "now": 1e-3}}}
    assert main([*column_run_args(tiny_model_dir, data, clean), "--weighting", "uniform", "--lr_scheduler_type",
                 "constant_with_warmup", "--warmup_steps", "1", "--learning_rate", "1e-3"]) == 0
    rates = [(e["step"], e["learning_rate"]) for e in log_history(out) if "loss" in e]
    assert rates[1:] == [(e["step"], e["learning_rate"]) for e in log_history(clean) if "loss" in e][1:]
    assert [rate for _, rate in rates[1:]] == [1e-3, 1e-3, 1e-3]
    want, got = saved_parameters(clean), saved_parameters(out)
    assert all(torch.equal(want[name], got[name]) for name in want)


def test_ctrl_c_names_step_and_last_checkpoint_and_exits_130(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", standard_rows(8))
    out = tmp_path / "run"
    args = ["--model_name_or_path", str(tiny_model_dir), "--dataset_name", data, "--output_dir", str(out),
            "--per_device_train_batch_size", "2", "--max_steps", "8", "--save_strategy", "steps", "--save_steps",
            "2", "--logging_steps", "1", "--report_to", "none"]
    marker = tmp_path / "in-step-4"
    run = start_stopped_run(args, stop_step=3, marker=marker)
    wait_for(marker, run)
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 130
    assert "Traceback" not in err
    assert (f"tokenweight: interrupted at step 3; last checkpoint {out / 'checkpoint-2'}; resume with the same "
            f"command and --resume_from_checkpoint {out / 'checkpoint-2'}") in err.splitlines()
    assert not (out / "results.json").exists() and not (out / "checkpoint-3").exists()


def test_sigterm_saves_the_step_prints_the_resume_line_and_the_resumed_run_is_bit_identical(tiny_model_dir, tmp_path,
                                                                                          monkeypatch):
    """Preemption: SIGTERM inside step 4 of a run that saves no checkpoints lets step 4 finish, saves
    checkpoint-4, prints the resume line and exits 143; resuming from it ends where an uninterrupted run ends.
    Every run here uses one thread (the signalled one is a subprocess): sums over threads round differently."""
    threads = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    try:
        sigterm_then_resume(tiny_model_dir, tmp_path)
    finally:
        torch.set_num_threads(threads)


def sigterm_then_resume(tiny_model_dir, tmp_path) -> None:
    data = write_jsonl(tmp_path / "pairs.jsonl", standard_rows(8))
    out, clean = tmp_path / "run", tmp_path / "clean"
    args = column_run_args(tiny_model_dir, data, out)[1:] + ["--weighting", "uniform", "--max_steps", "6"]
    marker = tmp_path / "in-step-4"
    run = start_stopped_run(args, stop_step=3, marker=marker)
    wait_for(marker, run)
    run.send_signal(signal.SIGTERM)
    Path(f"{marker}.go").touch()
    _, err = run.communicate(timeout=120)
    assert run.returncode == 143 and "Traceback" not in err
    assert (f"tokenweight: stopped by SIGTERM at step 4; last checkpoint {out / 'checkpoint-4'}; resume with the same "
            f"command and --resume_from_checkpoint {out / 'checkpoint-4'}") in err.splitlines()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4"] and not (out / "results.json").exists()
    assert main(["train", *args, "--resume_from_checkpoint", "true"]) == 0
    assert main(["train", *column_run_args(tiny_model_dir, data, clean)[1:], "--weighting", "uniform", "--max_steps",
                 "6"]) == 0
    losses = [e["loss"] for e in log_history(clean) if "loss" in e]
    assert len(losses) == 6 and [e["loss"] for e in log_history(out) if "loss" in e] == losses
    want, got = saved_parameters(clean), saved_parameters(out)
    assert all(torch.equal(want[name], got[name]) for name in want)


def test_a_full_disk_mid_run_names_the_folder_and_keeps_the_last_complete_checkpoint(tiny_model_dir, tmp_path,
                                                                                     capsys, monkeypatch):
    """The disk fills while checkpoint-4 is written (fault injected into the optimizer-state write): one line naming
    the folder and checkpoint-2, which stays complete and byte for byte as saved; resuming from it works."""
    import errno

    data = write_jsonl(tmp_path / "pairs.jsonl", standard_rows(8))
    out = tmp_path / "run"
    args = [*column_run_args(tiny_model_dir, data, out), "--weighting", "uniform", "--save_strategy", "steps",
            "--save_steps", "2", "--max_steps", "6", "--save_total_limit", "1"]
    save = torch.save

    def filling_save(obj, path, *rest, **kwargs):
        if "checkpoint-4" in str(path):
            Path(path).write_bytes(b"\0" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")
        return save(obj, path, *rest, **kwargs)

    monkeypatch.setattr(torch, "save", filling_save)
    assert main(args) == 2
    kept = out / "checkpoint-2"
    assert error_line(capsys.readouterr().err) == (
        f"tokenweight: error: writing to output_dir {out} failed at step 4 (No space left on device); the last "
        f"complete checkpoint {kept} is intact: resume from it with --resume_from_checkpoint {kept}")
    from tokenweight.checkpoints import checkpoint_problem
    assert checkpoint_problem(kept) is None and checkpoint_problem(out / "checkpoint-4") is not None
    monkeypatch.setattr(torch, "save", save)
    assert main([*args, "--resume_from_checkpoint", "true"]) == 0
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 6
