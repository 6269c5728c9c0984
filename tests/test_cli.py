"""Command line: recipe + flags precedence, KeyFact defaults, errors that name the offending flag or key."""

from __future__ import annotations

import re

import pytest

from tokenweight.cli import main
from tokenweight.recipe import parse_train_config
from tokenweight.errors import UserError
from tokenweight.keyfact.settings import KEYFACT_DEFAULTS


def test_flags_override_the_recipe_which_overrides_defaults(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model_name_or_path: some/model\ndataset_name: some/data\nbeta: 0.3\nweighting: otpo\n"
                      "otpo_reg_m: [0.2, 0.5]\nlearning_rate: 1.0e-6\n")
    config = parse_train_config(["--config", str(recipe), "--beta", "0.05", "--use_cpu", "true"])
    assert config.beta == 0.05 and config.weighting == "otpo" and config.otpo_reg_m == [0.2, 0.5]
    assert config.learning_rate == 1e-6 and config.model_name_or_path == "some/model"
    assert config.max_length is None  # min(1024, model context) at run time, not KeyFact's 128


def test_no_model_and_no_dataset_take_the_keyfact_defaults():
    config = parse_train_config(["--use_cpu", "true", "--num_train_epochs", "1"])
    assert config.learning_rate == KEYFACT_DEFAULTS["learning_rate"]
    assert config.max_length == KEYFACT_DEFAULTS["max_length"]
    assert config.num_train_epochs == 1  # a flag still wins


def test_a_misspelt_flag_is_named():
    with pytest.raises(UserError, match=r"unrecognized arguments: --bta 0.3; did you mean --beta\?"):
        parse_train_config(["--bta", "0.3"])


def test_an_unknown_recipe_key_is_named(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("beta: 0.1\notpo_regg: 1.0\n")
    with pytest.raises(UserError, match=r"unknown config key\(s\) \['otpo_regg'\]; did you mean otpo_regg -> otpo_reg"):
        parse_train_config(["--config", str(recipe)])


@pytest.mark.parametrize("flags, message", [
    (["--loss_type", "dpo"], "config key `loss_type`: 'dpo' is not one of"),
    (["--loss_type", "ipo", "--label_smoothing", "0.1"], "config key `label_smoothing`"),
    (["--otpo_reg_m", "0.1", "0.2", "0.3"], "config key `otpo_reg_m`"),
    (["--beta", "-1"], "config key `beta` must be positive"),
])
def test_bad_values_name_the_config_key(flags, message):
    with pytest.raises(UserError, match=message):
        parse_train_config(["--use_cpu", "true", *flags])


def test_model_without_dataset_is_refused(tmp_path):
    from tokenweight.pipeline import resolve_model_path
    config = parse_train_config(["--model_name_or_path", "x", "--use_cpu", "true"])
    with pytest.raises(UserError, match="config key `dataset_name` is required"):
        resolve_model_path(config)


def test_unknown_weighting_lists_the_known_ones():
    from tokenweight.weights import SCHEMES, build_scheme
    assert {"attention", "column", "otpo"} <= set(SCHEMES)
    with pytest.raises(ValueError, match=r"unknown weighting scheme 'otp'.*" + re.escape(repr(sorted(SCHEMES)))):
        build_scheme("otp")


#: Every command and sub-command of the program, as a user types it before ``--help``.
EVERY_COMMAND = [[], ["train"], ["precompute"], ["precompute", "attention"], ["precompute", "tisdpo"],
                 ["precompute", "reference"], ["eval"], ["weights"], ["bench"], ["bench", "keyfact"]]


@pytest.mark.parametrize("command", EVERY_COMMAND, ids=lambda c: " ".join(c) or "tokenweight")
def test_every_command_answers_help_with_exit_0_and_examples(command, capsys):
    try:
        status = main([*command, "--help"])
    except SystemExit as exit_info:  # argparse's --help of a sub-command
        status = exit_info.code
    captured = capsys.readouterr()
    assert status == 0 and captured.err == ""
    assert "usage: tokenweight" in captured.out and "examples:" in captured.out


def test_eval_weights_and_precompute_take_the_scheme_flags_of_train(tmp_path):
    from tokenweight.cli import command_parser
    from tokenweight.commands.common import build_config
    from tokenweight.commands.precompute import _own_flags

    recipe = tmp_path / "r.yaml"
    recipe.write_text("weighting: tidpo\ntidpo_lambda: 0.7\ntidpo_kl_alpha: 0.3\n")
    from tokenweight.keyfact import keyfact_base_model

    for command in (["eval", "--model_name_or_path", str(keyfact_base_model(size="small"))], ["weights"]):
        args = command_parser(command[0]).parse_args([*command, "--config", str(recipe), "--tidpo_lambda", "0.37",
                                                      "--tidpo_preset", "upstream"])
        config = build_config(args)
        assert (config.tidpo_lambda, config.tidpo_preset) == (0.37, "upstream")
        assert config.tidpo_kl_alpha == 0.3  # not given as a flag: the recipe's value stands
        args = command_parser(command[0]).parse_args([*command, "--weighting", "otpo", "--otpo_reg", "0.37",
                                                      "--otpo_reg_m", "0.1", "0.2"])
        assert (build_config(args).otpo_reg, build_config(args).otpo_reg_m) == (0.37, [0.1, 0.2])
    args = _own_flags(command_parser("precompute").parse_args(["precompute", "attention", "--output", "o",
                                                                "--attention_layers", "-1"]))
    assert parse_train_config([*args.flags, "--weighting", "attention"]).attention_layers == [-1]
    with pytest.raises(UserError, match="unrecognized arguments: --otpo_regg"):
        command_parser("weights").parse_args(["weights", "--otpo_regg", "1"])


@pytest.mark.parametrize("command", ["weights", "eval"])
def test_eval_and_weights_refuse_another_schemes_flag_as_train_does(command, tmp_path, capsys):
    from tokenweight.keyfact import keyfact_base_model

    where = (["--output", str(tmp_path / "w.html")] if command == "weights"
             else ["--model_name_or_path", str(keyfact_base_model(size="small"))])
    status = main([command, "--weighting", "otpo", "--tidpo_lambda", "0.3", *where])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1
    assert err[0].startswith("tokenweight: error: --tidpo_lambda: `tidpo_lambda` is a setting of --weighting tidpo")
    assert not (tmp_path / "w.html").exists()
