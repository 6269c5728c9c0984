"""A finished output_dir is never silently overwritten (issue 9, item 3): a rerun is refused with one line and
leaves every file untouched; ``--overwrite_output_dir true`` replaces the run and removes its old checkpoints."""

from __future__ import annotations

import json

from conftest import standard_rows
from tokenweight.cli import main
from workflow_runs import write_jsonl


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
    assert ("tokenweight: --overwrite_output_dir: removed 2 old checkpoint folder(s) from "
            f"{out}: checkpoint-1, checkpoint-2") in capsys.readouterr().err
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3"]
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
