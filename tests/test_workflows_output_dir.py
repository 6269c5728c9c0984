"""A finished output_dir is never silently overwritten (issue 9, item 3): a rerun is refused with one line and
leaves every file untouched; ``--overwrite_output_dir true`` replaces the run, but only once the new run has
validated its model, data and settings and saved (issue 22, item 3): a failure or a kill before that leaves the
previous run byte for byte. One run per folder (item 2): a second run into a folder in use is refused naming the
holder, and a SIGKILLed run's lock is gone with it."""

from __future__ import annotations

import json

import signal
import socket

from conftest import standard_rows
from tokenweight.cli import main
from workflow_runs import start_stopped_run, wait_for, write_jsonl


def tiny_run_args(model_dir, data: str, output_dir, steps: int) -> list[str]:
    return ["train", "--model_name_or_path", str(model_dir), "--dataset_name", data, "--output_dir",
            str(output_dir), "--per_device_train_batch_size", "2", "--max_steps", str(steps), "--save_strategy",
            "steps", "--save_steps", "1", "--logging_steps", "1", "--report_to", "none"]


def snapshot(folder) -> dict:
    """Every file under ``folder``: (bytes, modification time)."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_rerun_into_finished_output_dir_is_refused_and_overwrite_replaces_it(tiny_model_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "pairs.jsonl", standard_rows(8))
    out = tmp_path / "run"
    assert main(tiny_run_args(tiny_model_dir, data, out, steps=2)) == 0
    before = snapshot(out)
    assert {"results.json", "trainer_state.json", "checkpoint-1/trainer_state.json"} <= set(before)
    capsys.readouterr()

    assert main(tiny_run_args(tiny_model_dir, data, out, steps=3)) == 2
    err = capsys.readouterr().err
    assert err == (f"tokenweight: error: output_dir {out} holds a previous run (results.json, trainer_state.json, "
                   "training_args.bin, model.safetensors, checkpoint-1, checkpoint-2); pass --overwrite_output_dir "
                   "true to replace it, or --resume_from_checkpoint true to continue it\n")
    assert snapshot(out) == before

    assert main([*tiny_run_args(tiny_model_dir, data, out, steps=3), "--save_steps", "3",
                 "--overwrite_output_dir", "true"]) == 0
    assert ("tokenweight: --overwrite_output_dir: the new run has saved; removed the previous run's results.json, "
            "trainer_state.json, training_args.bin, model.safetensors, checkpoint-1, checkpoint-2 from "
            f"{out}") in capsys.readouterr().err
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3"]
    assert sorted(p.name for p in out.glob(".*")) == []  # no lock file, nothing set aside left behind
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 3 and [e["step"] for e in state["log_history"] if "loss" in e] == [1, 2, 3]
    assert (out / "results.json").stat().st_mtime_ns > before["results.json"][1]  # written by the new run


def test_a_killed_run_with_only_checkpoints_is_refused_too(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    (out / "checkpoint-4").mkdir(parents=True)
    data = write_jsonl(tmp_path / "pairs.jsonl", standard_rows(8))
    assert main(tiny_run_args(tiny_model_dir, data, out, steps=2)) == 2
    assert "holds a previous run (checkpoint-4)" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["checkpoint-4"]


def finished_run(tiny_model_dir, tmp_path, capsys):
    """A finished 2-step run in ``tmp_path/run``: (data file, folder, snapshot of its files)."""
    data = write_jsonl(tmp_path / "pairs.jsonl", standard_rows(8))
    out = tmp_path / "run"
    assert main(tiny_run_args(tiny_model_dir, data, out, steps=2)) == 0
    capsys.readouterr()
    return data, out, snapshot(out)


def test_overwrite_with_bad_data_fails_before_touching_the_previous_run(tiny_model_dir, tmp_path, capsys):
    _, out, before = finished_run(tiny_model_dir, tmp_path, capsys)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "what is the capital of france ?", "chosen": " paris"}\n')
    assert main([*tiny_run_args(tiny_model_dir, str(bad), out, steps=3), "--overwrite_output_dir", "true"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()[-1:]
    assert line.startswith("tokenweight: error:") and "rejected" in line
    assert snapshot(out) == before


def test_overwrite_interrupted_before_its_first_save_puts_the_previous_run_back(tiny_model_dir, tmp_path, capsys):
    data, out, before = finished_run(tiny_model_dir, tmp_path, capsys)
    args = [*tiny_run_args(tiny_model_dir, data, out, steps=4)[1:], "--save_steps", "4", "--overwrite_output_dir",
            "true"]
    run = start_stopped_run(args, stop_step=1, marker=tmp_path / "in-step-2")
    wait_for(tmp_path / "in-step-2", run)
    assert not (out / "checkpoint-1").exists()  # moved aside while the new run trains
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 130 and "Traceback" not in err
    assert f"tokenweight: --overwrite_output_dir: the new run saved nothing; the previous run is back in {out}" in err
    assert snapshot(out) == before

    killed = start_stopped_run(args, stop_step=1, marker=tmp_path / "again-in-step-2")
    wait_for(tmp_path / "again-in-step-2", killed)
    killed.kill()
    killed.communicate(timeout=30)
    assert snapshot(out) != before  # killed with the previous run set aside: the next run in the folder settles it
    assert main(tiny_run_args(tiny_model_dir, data, out, steps=2)) == 2
    err = capsys.readouterr().err
    assert f"tokenweight: --overwrite_output_dir: the new run saved nothing; the previous run is back in {out}" in err
    assert err.splitlines()[-1].startswith(f"tokenweight: error: output_dir {out} holds a previous run")
    assert snapshot(out) == before


def test_a_second_run_into_a_folder_in_use_is_refused_naming_the_holder(tiny_model_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "pairs.jsonl", standard_rows(8))
    out = tmp_path / "run"
    args = tiny_run_args(tiny_model_dir, data, out, steps=4)
    first = start_stopped_run(args[1:], stop_step=3, marker=tmp_path / "in-step-4")
    wait_for(tmp_path / "in-step-4", first)
    capsys.readouterr()
    for second in (args, [*args, "--overwrite_output_dir", "true"], [*args, "--resume_from_checkpoint", "true"]):
        assert main(second) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith(f"tokenweight: error: output_dir {out} is in use by another tokenweight run (pid "
                               f"{first.pid} on host {socket.gethostname()}, since "), line
        assert line.endswith("); wait for it to end or choose another --output_dir")
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    first.kill()  # SIGKILL: the operating system releases its lock, so the resume is not blocked
    first.communicate(timeout=30)
    assert main([*args, "--resume_from_checkpoint", "true"]) == 0
    assert (out / "results.json").is_file() and not (out / ".tokenweight.lock").exists()


def test_an_output_dir_that_cannot_be_written_is_refused_before_any_model_loads(tiny_model_dir, tmp_path, capsys,
                                                                               monkeypatch):
    import tokenweight.pipeline

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(tokenweight.pipeline, "load_tokenizer", no_loading)
    monkeypatch.setattr(tokenweight.pipeline, "load_causal_lm", no_loading)
    (tmp_path / "a-file").write_text("")
    out = tmp_path / "a-file" / "run"
    data = write_jsonl(tmp_path / "pairs.jsonl", standard_rows(8))
    assert main(tiny_run_args(tiny_model_dir, data, out, steps=2)) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"tokenweight: error: output_dir {out} is not writable (Not a directory); nothing was trained"]
