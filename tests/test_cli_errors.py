"""User errors on the command line: one line ``tokenweight: error: …`` naming the flag, key, file or path, exit
status 2, no traceback (``TOKENWEIGHT_DEBUG=1`` shows it)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import standard_rows
from tokenweight.cli import main
from tokenweight.config import looks_like_local_path

SRC = str(Path(__file__).resolve().parents[1] / "src")


def run_cli(capsys, argv: list[str]) -> tuple[int, str]:
    """Exit status and stderr of ``tokenweight argv`` run in this process."""
    capsys.readouterr()  # drop what fixtures printed
    status = main(argv)
    return status, capsys.readouterr().err


def assert_one_line_error(status: int, err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert status == 2
    assert len(lines) == 1 and lines[0].startswith("tokenweight: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture
def data_file(tmp_path) -> Path:
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in standard_rows(4)))
    return path


@pytest.mark.parametrize("argv, fragments", [
    (["train", "--weighting", "nope"], ["--weighting", "invalid choice: 'nope'", "'otpo'", "'uniform'"]),
    (["train", "--bta", "0.3"], ["unrecognized arguments: --bta 0.3", "did you mean --beta?"]),
    (["train", "--per_device_train_batch_size", "0"], ["per_device_train_batch_size", "at least 1, got 0"]),
    (["train", "--num_train_epochs", "many"], ["--num_train_epochs", "invalid float value: 'many'"]),
    (["train", "--config", "missing.yaml"], ["recipe missing.yaml: no such file"]),
    (["nope"], ["invalid choice: 'nope'", "train", "eval"]),
    (["eval", "--model_name_or_path", "m", "--num_pairs", "x"], ["--num_pairs", "invalid int value: 'x'"]),
    (["train", "--keyfact_model_size", "small", "--keyfact_shortcut", "1.5"],
     ["(--keyfact_shortcut)", "(0, 1]", "1.5"]),
    (["train", "--keyfact_model_size", "small", "--keyfact_label_noise", "-0.1"], ["(--keyfact_label_noise)"]),
])
def test_bad_flags_are_one_line_errors(capsys, tmp_path, monkeypatch, argv, fragments):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(*run_cli(capsys, argv), *fragments)


def test_bad_recipe_keys_and_values_are_one_line_errors(capsys, tmp_path):
    misspelt = tmp_path / "misspelt.yaml"
    misspelt.write_text("beta: 0.1\notpo_regg: 1.0\n")
    assert_one_line_error(*run_cli(capsys, ["train", "--config", str(misspelt)]), "unknown config key(s) ['otpo_regg']",
                          "did you mean otpo_regg -> otpo_reg?", str(misspelt))
    scheme = tmp_path / "scheme.yaml"
    scheme.write_text("weighting: nope\n")
    from tokenweight.weights import SCHEMES
    assert_one_line_error(*run_cli(capsys, ["train", "--config", str(scheme)]),
                          f"recipe {scheme}: key `weighting`: 'nope' is not a valid value (choose from "
                          + ", ".join(sorted(SCHEMES)) + ")")
    broken = tmp_path / "broken.yaml"
    broken.write_text("beta: [0.1\n")
    assert_one_line_error(*run_cli(capsys, ["train", "--config", str(broken)]), f"recipe {broken}: not valid YAML",
                          "line 2")


def test_a_missing_local_dataset_is_named_without_asking_the_hub(capsys, tmp_path, monkeypatch, tiny_model_dir):
    monkeypatch.chdir(tmp_path)
    for missing in ("data/train.jsonl", "./pairs", "../elsewhere/pairs.parquet"):
        start = time.perf_counter()
        status, err = run_cli(capsys, ["train", "--model_name_or_path", str(tiny_model_dir), "--dataset_name",
                                       missing, "--output_dir", str(tmp_path / "run")])
        assert_one_line_error(status, err, f"config key `dataset_name`: {missing} does not exist", str(tmp_path))
        assert time.perf_counter() - start < 10  # the hub is never asked (it retries for ~30 s)
    assert not (tmp_path / "run").exists()
    status, err = run_cli(capsys, ["eval", "--model_name_or_path", "runs/nothing-here/final"])
    assert_one_line_error(status, err, "config key `model_name_or_path`: runs/nothing-here/final does not exist")


def test_a_max_length_above_the_model_context_names_both_numbers(capsys, tmp_path, tiny_model_dir, data_file):
    status, err = run_cli(capsys, ["train", "--model_name_or_path", str(tiny_model_dir), "--dataset_name",
                                   str(data_file), "--max_length", "256", "--output_dir", str(tmp_path / "run")])
    assert_one_line_error(status, err, "config key `max_length`: 256 is more than the 128 positions of",
                          "--max_length 128 or less")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name, local", [
    ("./pairs", True), ("../pairs", True), ("/abs/pairs", True), ("~/pairs", True), ("pairs.jsonl", True),
    ("org/pairs.parquet", True), ("runs/a/b", True), ("trl-lib/ultrafeedback_binarized", False),
    ("HuggingFaceH4/ultrafeedback_binarized", False), ("imdb", False)])
def test_which_names_look_like_local_paths(name, local):
    assert looks_like_local_path(name) is local


def test_a_hub_id_whose_namespace_is_a_local_folder_counts_as_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert not looks_like_local_path("runs/dpo")
    (tmp_path / "runs").mkdir()
    assert looks_like_local_path("runs/dpo")


def _subprocess(argv: list[str], **env) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": SRC, **env}
    return subprocess.run([sys.executable, "-m", "tokenweight.cli", *argv], capture_output=True, text=True,
                          env=environment, timeout=300)


def test_the_console_prints_no_traceback_unless_debugging(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("otpo_regg: 1.0\n")
    done = _subprocess(["train", "--config", str(recipe)])
    assert done.returncode == 2 and "Traceback" not in done.stderr
    message = f"recipe {recipe}: unknown config key(s) ['otpo_regg']; did you mean otpo_regg -> otpo_reg?"
    assert done.stderr.strip().splitlines() == [f"tokenweight: error: {message}"]
    debug = _subprocess(["nope"], TOKENWEIGHT_DEBUG="1")
    assert debug.returncode == 1
    assert "Traceback" in debug.stderr and "UserError: argument COMMAND: invalid choice: 'nope'" in debug.stderr


RECIPES = {  # recipe text -> fragments of its one-line error (issue 22: recipe values skipped the flags' types)
    "beta: [1, 2]\n": ["key `beta`: [1, 2] is not a valid value (expected a single float)"],
    "max_length: 20.5\n": ["key `max_length`: 20.5 is not a valid value", "'20.5'"],
    "weighting: [otpo]\n": ["key `weighting`: ['otpo'] is not a valid value (expected a single str)"],
    "weighting: nope\n": ["key `weighting`: 'nope' is not a valid value (choose from ", "otpo"],
    "use_peft: maybe\n": ["key `use_peft`: 'maybe' is not a valid value"],
    "otpo_reg_m: [0.1, {a: 1}]\nweighting: otpo\n": ["key `otpo_reg_m`", "is not a valid value"],
    "weighting: uniform\notpo_reg: 2.0\n": ["`otpo_reg` is a setting of --weighting otpo, but the run uses "
                                           "--weighting uniform, which does not read it; drop it"],
}


@pytest.mark.parametrize("text", list(RECIPES))
def test_recipe_values_are_converted_and_checked_like_flags(capsys, tmp_path, text):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    assert_one_line_error(*run_cli(capsys, ["train", "--config", str(recipe)]), f"recipe {recipe}: ",
                          *RECIPES[text])


def test_recipe_values_get_the_flags_types(tmp_path):
    from tokenweight.recipe import parse_train_config

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("learning_rate: 5e-4\nweighting: otpo\notpo_reg_m: 0.3\nmax_length: 64\n"  # 5e-4: a YAML str
                      "activation_checkpointing_kwargs: {use_reentrant: false}\n")  # a mapping-typed field
    config = parse_train_config(["--config", str(recipe)])
    assert (config.learning_rate, config.otpo_reg_m, config.max_length) == (5e-4, [0.3], 64)
    assert config.activation_checkpointing_kwargs == {"use_reentrant": False}


@pytest.mark.parametrize("argv, fragments", [
    (["--beta", "nan"], ["config key `beta` must be a finite number, got nan"]),  # was a "TI-DPO config" error
    (["--learning_rate", "nan"], ["config key `learning_rate` must be a finite number, got nan"]),
    (["--max_grad_norm", "inf"], ["config key `max_grad_norm` must be a finite number, got inf"]),
    (["--weighting", "otpo", "--otpo_reg_m", "0.1", "nan"], ["config key `otpo_reg_m` must be a finite number"]),
    (["--weighting", "tidpo", "--tidpo_gamma", "inf"], ["config key `tidpo_gamma` must be a finite number"]),
    (["--weighting", "otpo", "--otpo_reg", "0"], ["config key `otpo_reg` must be positive, got 0.0"]),
    (["--weighting", "otpo", "--otpo_reg_m", "-1"], ["config key `otpo_reg_m` must be positive, got [-1.0]"]),
    (["--num_train_epochs", "0"], ["config key `num_train_epochs` must be positive, got 0 (or set max_steps): the "
                                   "run would train 0 steps"]),
    (["--num_train_epochs", "-1"], ["config key `num_train_epochs` must be positive, got -1"]),
    (["--otpo_reg", "0.5"], ["--otpo_reg: `otpo_reg` is a setting of --weighting otpo, but the run uses --weighting "
                             "uniform"]),
    (["--weighting", "otpo", "--tidpo_gamma", "0.1"], ["--tidpo_gamma: `tidpo_gamma` is a setting of --weighting "
                                                      "tidpo, but the run uses --weighting otpo"]),
    (["--weighting", "tidpo", "--otpo_reg=0.5"], ["--otpo_reg: `otpo_reg` is a setting of --weighting otpo"]),
    (["--weighting", "simpo", "--d2po_gamma", "0.9"], ["`d2po_gamma` is a setting of --weighting d2po, but the run "
                                                       "uses --weighting simpo"]),
    (["--resume_changes", "learning_rate"], ["config key `resume_changes` needs --resume_from_checkpoint"]),
])
def test_settings_that_would_do_nothing_or_poison_the_run_are_one_line_errors(capsys, tmp_path, monkeypatch, argv,
                                                                              fragments):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(*run_cli(capsys, ["train", "--keyfact_model_size", "small", *argv]), *fragments)
    assert not (tmp_path / "outputs").exists()


def test_weights_refuses_a_zero_batch_and_an_existing_output_file(capsys, tmp_path):
    assert_one_line_error(*run_cli(capsys, ["weights", "--batch_size", "0"]),
                          "argument --batch_size: must be at least 1, got 0")
    report = tmp_path / "report.html"
    report.write_text("a report written before")
    assert_one_line_error(*run_cli(capsys, ["weights", "--output", str(report)]),
                          f"--output {report} exists; pass --overwrite to replace it")
    assert report.read_text() == "a report written before"


def test_column_weighting_without_weight_columns_is_refused_before_any_model_loads(capsys, tmp_path,
                                                                                   tiny_model_dir, data_file):
    status, err = run_cli(capsys, ["train", "--model_name_or_path", str(tiny_model_dir), "--dataset_name",
                                   str(data_file), "--weighting", "column", "--output_dir", str(tmp_path / "run")])
    lines = [line for line in err.splitlines() if line.startswith("tokenweight:")]
    assert status == 2 and "Traceback" not in err
    assert lines == ["tokenweight: error: weighting=column needs the dataset columns chosen_weights and "
                     f"rejected_weights (one float per completion token); the train split train (file {data_file}, "
                     "4 rows) has columns ['chosen', 'prompt', 'rejected']"]
    assert not (tmp_path / "run").exists()


def test_rows_with_all_zero_weights_are_counted_and_warned_and_all_of_them_refused(capsys, tmp_path,
                                                                                  tiny_model_dir):
    from workflow_runs import with_token_weights, write_jsonl

    rows = standard_rows(4)
    some = write_jsonl(tmp_path / "some.jsonl", with_token_weights(rows, tiny_model_dir,
                                                                   lambda side, row, i: 0.0 if row in (1, 3) else 1.0))
    args = ["train", "--model_name_or_path", str(tiny_model_dir), "--weighting", "column", "--max_steps", "1",
            "--per_device_train_batch_size", "2", "--report_to", "none", "--save_strategy", "no"]
    status, err = run_cli(capsys, [*args, "--dataset_name", some, "--output_dir", str(tmp_path / "some")])
    assert status == 0
    assert (f"data train split train (file {some}, 4 rows): warning: 2 of 4 rows have all-zero token weights and train "
            "nothing (rows 1, 3)") in err.splitlines()
    assert json.loads((tmp_path / "some" / "results.json").read_text())["data"]["train"]["zero_weight_rows"] == 2
    none = write_jsonl(tmp_path / "none.jsonl", with_token_weights(rows, tiny_model_dir, lambda side, row, i: 0.0))
    status, err = run_cli(capsys, [*args, "--dataset_name", none, "--output_dir", str(tmp_path / "none")])
    assert status == 2 and "Traceback" not in err
    assert err.splitlines()[-1] == (f"tokenweight: error: data train split train (file {none}, 4 rows): every row's "
                                    "token weights are all zero (chosen_weights, rejected_weights): the run would "
                                    "train nothing")


def test_unreadable_data_and_model_folders_are_one_line_errors(capsys, tmp_path, tiny_model_dir, data_file):
    """Data that is not UTF-8, a data folder without data, a folder that is not a model, a model folder whose
    tokenizer is broken: each one line naming the file or folder (they were tracebacks)."""
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(data_file.read_bytes() + '{"prompt": "caf\u00e9", "chosen": "a", "rejected": "b"}\n'.encode("latin-1"))
    train = ["train", "--model_name_or_path", str(tiny_model_dir), "--output_dir", str(tmp_path / "run")]
    assert_one_line_error(*run_cli(capsys, [*train, "--dataset_name", str(latin)]),
                          f"dataset file {latin}, line 5: not UTF-8 text (byte 0xe9 at offset ", "save it as UTF-8")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(*run_cli(capsys, [*train, "--dataset_name", str(tmp_path / "empty")]),
                          f"dataset folder {tmp_path / 'empty'}: no data `datasets` can read")
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    (not_a_model / "notes.txt").write_text("hello")
    assert_one_line_error(*run_cli(capsys, ["train", "--model_name_or_path", str(not_a_model), "--dataset_name",
                                            str(data_file), "--output_dir", str(tmp_path / "run")]),
                          f"{not_a_model}: cannot load its config (")
    broken = tmp_path / "broken-tokenizer"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "tokenizer.json").write_text("{not json")
    assert_one_line_error(*run_cli(capsys, ["train", "--model_name_or_path", str(broken), "--dataset_name",
                                            str(data_file), "--output_dir", str(tmp_path / "run")]),
                          f"{broken}: cannot load its tokenizer (")
    assert not (tmp_path / "run").exists()
