"""User errors on the command line: one line ``tokenweight: error: …`` naming the flag, key, file or path, exit
status 2, no traceback (``TOKENWEIGHT_DEBUG=1`` shows it)."""

from __future__ import annotations

import json
import os
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
                          "config key `weighting`: unknown scheme 'nope'; choose one of " + ", ".join(sorted(SCHEMES)))
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
