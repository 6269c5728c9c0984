"""Command line: recipe + flags precedence, KeyFact defaults, errors that name the offending flag or key."""

from __future__ import annotations

import re

import pytest

from tokenweight.cli import main, parse_train_config
from tokenweight.errors import UserError
from tokenweight.run import KEYFACT_DEFAULTS


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
    from tokenweight.run import resolve_model_path
    config = parse_train_config(["--model_name_or_path", "x", "--use_cpu", "true"])
    with pytest.raises(UserError, match="config key `dataset_name` is required"):
        resolve_model_path(config)


def test_unknown_weighting_lists_the_known_ones():
    from tokenweight.weights import SCHEMES, build_scheme
    assert {"attention", "column", "otpo"} <= set(SCHEMES)
    with pytest.raises(ValueError, match=rf"unknown weighting scheme 'otp'.*{re.escape(str(sorted(SCHEMES)))}"):
        build_scheme("otp")


def test_help_of_every_command_has_examples(capsys):
    assert main(["train", "--help"]) == 0
    assert "examples:" in capsys.readouterr().out
    for command in (["precompute"], ["eval"], ["weights"], ["bench"]):
        with pytest.raises(SystemExit) as exit_info:
            main([*command, "--help"])
        assert exit_info.value.code == 0
        assert "examples:" in capsys.readouterr().out
