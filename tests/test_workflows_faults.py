"""Fault injection (issue 22, item 9): a run SIGKILLed at random moments — some while a checkpoint is being
written — and each time resumed with ``--resume_from_checkpoint true`` ends bit-identical to an uninterrupted run; a
resume with nothing complete to resume from refuses in one line (and the user starts over with
``--overwrite_output_dir true``). Never a traceback, never a silent restart.

The moments are drawn from a seeded generator and printed (``pytest -s`` shows them), so a failure can be replayed.
"""

from __future__ import annotations

import multiprocessing
import random
import time

import torch

from conftest import standard_rows
from tokenweight.checkpoints import checkpoint_folders, checkpoint_problem, last_complete_checkpoint
from tokenweight.cli import main
from workflow_runs import log_history, saved_parameters, write_jsonl

SEED = 22
KILLS = 8


def run_args(model_dir, data: str, output_dir) -> list[str]:
    """A 6-step run of the tiny model saving every step and keeping 2 checkpoints (rotation is exercised)."""
    return ["--model_name_or_path", str(model_dir), "--dataset_name", data, "--output_dir", str(output_dir),
            "--per_device_train_batch_size", "2", "--max_steps", "6", "--save_strategy", "steps", "--save_steps", "1",
            "--save_total_limit", "2", "--logging_steps", "1", "--report_to", "none"]


def kill_at_random(args: list[str], marker, rng: random.Random, number: int) -> str:
    """Start the run forked and SIGKILL it at a random moment: any time in its first 6 s, or inside a checkpoint
    write (a random delay after a save began). A run that ends first is fine (it finished). Returns what
    happened, as a line of the test's log."""
    from train_driver import train_with_slow_saves

    inside_save = rng.random() < 0.5
    delay = rng.uniform(0, 0.25) if inside_save else rng.uniform(0, 6.0)
    process = multiprocessing.get_context("fork").Process(target=train_with_slow_saves, args=(marker, args))
    started = time.monotonic()
    process.start()
    if inside_save:
        while process.is_alive() and not list(marker.parent.glob(f"{marker.name}-*")):
            time.sleep(0.005)
    time.sleep(delay)
    process.kill()
    process.join(timeout=30)
    announced = sorted(p.name for p in marker.parent.glob(f"{marker.name}-*"))
    for path in marker.parent.glob(f"{marker.name}-*"):
        path.unlink()
    return (f"kill {number}: {'inside a save' if inside_save else 'any time'}, {delay:.3f} s after "
            f"{'the save began' if inside_save else 'start'} ({time.monotonic() - started:.2f} s in; saves begun: "
            f"{announced}; exit code {process.exitcode})")


def test_runs_killed_at_random_moments_resume_bit_identical_or_refuse_in_one_line(tiny_model_dir, tmp_path,
                                                                                   capsys):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # forked runs must not enter a thread pool left by this process; the same in all runs
    try:
        kill_resume_and_compare(tiny_model_dir, tmp_path, capsys)
    finally:
        torch.set_num_threads(threads)


def kill_resume_and_compare(tiny_model_dir, tmp_path, capsys) -> None:
    data = write_jsonl(tmp_path / "pairs.jsonl", standard_rows(8))
    out = tmp_path / "run"
    rng = random.Random(SEED)
    args = run_args(tiny_model_dir, data, out)
    moments = []
    for number in range(KILLS):
        if (out / "results.json").exists():
            break  # a run finished before its kill
        attempt = [*args, "--resume_from_checkpoint", "true"]  # what the user runs after a kill
        if last_complete_checkpoint(out) is None and number > 0:
            capsys.readouterr()
            assert main(["train", *attempt]) == 2
            err = capsys.readouterr().err
            assert "Traceback" not in err
            assert err.splitlines()[-1] == ("tokenweight: error: --resume_from_checkpoint true: no complete "
                                            f"checkpoint-* folder in output_dir {out}"), moments
            attempt = [*args, "--overwrite_output_dir", "true"]  # nothing to resume: the user starts over
        elif number == 0:
            attempt = args
        moments.append(kill_at_random(attempt, tmp_path / "save", rng, number))
        moments.extend(f"  {folder.name}: {checkpoint_problem(folder) or 'complete'}" for folder in checkpoint_folders(out))

    last = last_complete_checkpoint(out)
    resumed_from = 0 if last is None else int(last.name.split("-")[-1])
    final = [*args, "--resume_from_checkpoint", "true"] if last is not None else [*args, "--overwrite_output_dir",
                                                                                  "true"]
    capsys.readouterr()
    if not (out / "results.json").exists():
        assert main(["train", *final]) == 0, moments
        assert "Traceback" not in capsys.readouterr().err
    assert main(["train", *run_args(tiny_model_dir, data, tmp_path / "uninterrupted")]) == 0
    reference, resumed = log_history(tmp_path / "uninterrupted"), log_history(out)
    losses = [entry["loss"] for entry in reference if "loss" in entry]
    assert len(losses) == 6 and [entry["loss"] for entry in resumed if "loss" in entry] == losses
    assert [e for e in resumed if "loss" in e] == [e for e in reference if "loss" in e]  # every per-step metric
    want, got = saved_parameters(tmp_path / "uninterrupted"), saved_parameters(out)
    assert all(torch.equal(want[name], got[name]) for name in want)
    moments.append(f"final run resumed from step {resumed_from}")
    print("\n".join(moments))
