"""The one check of a scheme against the objective (:func:`tokenweight.config.check_scheme_objective`): each of its
refusals reaches the user of every command as the same one line, exit status 2."""

from __future__ import annotations

import json

import pytest
from conftest import standard_rows

from tokenweight.cli import main

SIMPO_REFUSALS = {  # a setting -> the start of its one-line error (weighting=simpo: reference-free, sigmoid or hinge)
    "ref_model_name_or_path": "config key `ref_model_name_or_path`: weighting=simpo is reference-free (no reference "
                              "model is loaded); drop the setting",
    "precompute_ref_log_probs": "config key `precompute_ref_log_probs`: weighting=simpo is reference-free (no "
                                "reference model is loaded or scored); drop the setting",
    "ref_log_probs": "config key `ref_log_probs`: weighting=simpo is reference-free (no reference model is loaded or "
                     "scored); drop the setting",
    "loss_type": "config key `loss_type`: weighting=simpo supports sigmoid, hinge, not ipo",
}
VALUES = {"ref_model_name_or_path": "MODEL", "precompute_ref_log_probs": True, "ref_log_probs": "DIR",
          "loss_type": "ipo"}


def one_line_error(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    status = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and err[0].startswith("tokenweight: error: "), (status, err)
    return err[0].removeprefix("tokenweight: error: ")


@pytest.fixture
def sources(tmp_path, tiny_model_dir) -> list[str]:
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in standard_rows(4)))
    return ["--model_name_or_path", str(tiny_model_dir), "--dataset_name", str(data)]


def recipe(tmp_path, tiny_model_dir, key: str) -> str:
    """A recipe of weighting=simpo that sets ``key`` (the setting a command may not have as a flag)."""
    value = VALUES[key]
    value = str(tiny_model_dir) if value == "MODEL" else str(tmp_path / "cache") if value == "DIR" else value
    path = tmp_path / "recipe.yaml"
    path.write_text(f"weighting: simpo\n{key}: {json.dumps(value)}\n")
    return str(path)


@pytest.mark.parametrize("key", ["ref_model_name_or_path", "precompute_ref_log_probs", "ref_log_probs", "loss_type"])
def test_train_refuses_in_one_line(tmp_path, tiny_model_dir, sources, capsys, key):
    out = tmp_path / "run"
    message = one_line_error(capsys, ["train", "--config", recipe(tmp_path, tiny_model_dir, key), *sources,
                                      "--output_dir", str(out)])
    assert message.startswith(SIMPO_REFUSALS[key]) and not out.exists()


@pytest.mark.parametrize("key", ["precompute_ref_log_probs", "ref_log_probs", "loss_type"])
@pytest.mark.parametrize("command", ["eval", "weights"])
def test_eval_and_weights_refuse_in_one_line(tmp_path, tiny_model_dir, sources, capsys, command, key):
    output = tmp_path / ("eval.json" if command == "eval" else "weights.html")
    message = one_line_error(capsys, [command, "--config", recipe(tmp_path, tiny_model_dir, key), *sources,
                                      "--output", str(output)])
    assert message.startswith(SIMPO_REFUSALS[key]) and not output.exists()


@pytest.mark.parametrize("key", ["ref_model_name_or_path", "precompute_ref_log_probs", "ref_log_probs", "loss_type"])
def test_precompute_reference_refuses_in_one_line(tmp_path, tiny_model_dir, sources, capsys, key):
    out = tmp_path / "ref"
    message = one_line_error(capsys, ["precompute", "reference", "--output", str(out), "--config",
                                      recipe(tmp_path, tiny_model_dir, key), *sources])
    expected = ("precompute reference: weighting=simpo is reference-free; its training reads no reference log-probs"
                if key == "ref_model_name_or_path" else SIMPO_REFUSALS[key])
    assert message.startswith(expected) and not out.exists()


def test_precompute_of_a_scheme_refuses_a_loss_type_it_does_not_support(tmp_path, tiny_model_dir, sources, capsys):
    out = tmp_path / "weights"
    message = one_line_error(capsys, ["precompute", "attention", "--output", str(out), "--loss_type", "dpo",
                                      *sources])
    assert message.startswith("config key `loss_type`: 'dpo' is not one of sigmoid, ipo, hinge") and not out.exists()
