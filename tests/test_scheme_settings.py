"""Each scheme owns its settings (issue 11, item 3): the run configuration is composed of the registered settings
classes, each settings class checks its own values, and a scheme is built from its settings and a small
``SchemeContext`` without ``TrainingArguments``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest

from tokenweight.config import CoreConfig, TokenweightConfig, config_class
from tokenweight.errors import UserError
from tokenweight.weights import SCHEMES, SchemeContext, WeightingScheme, build_scheme, register_scheme
from tokenweight.weights.attention import AttentionSettings
from tokenweight.weights.otpo import OTPOScheme, OTPOSettings
from tokenweight.weights.tidpo import TIDPOScheme, TIDPOSettings


def run(**values):
    return TokenweightConfig(output_dir="/tmp/tw-settings", use_cpu=True, report_to="none", **values)


def test_the_config_is_the_core_plus_every_schemes_settings():
    names = [item.name for item in dataclasses.fields(TokenweightConfig)]
    core = [item.name for item in dataclasses.fields(CoreConfig)]
    assert names[:len(core)] == core and names[0] == "output_dir"  # TrainingArguments' order first
    for settings_class in (OTPOSettings, TIDPOSettings, AttentionSettings):
        assert {item.name for item in dataclasses.fields(settings_class)} <= set(names) - set(core)
    assert not {name for name in core if name.startswith(("otpo_", "tidpo_", "attention_"))}
    assert config_class() is TokenweightConfig  # one class per set of registered settings


def test_settings_classes_check_their_own_values_in_the_run_config():
    with pytest.raises(UserError, match="`otpo_reg_m`: give one value or two"):
        OTPOSettings(otpo_reg_m=[0.1, 0.2, 0.3])
    with pytest.raises(UserError, match="`otpo_reg_m`: give one value or two"):
        run(otpo_reg_m=[0.1, 0.2, 0.3])
    with pytest.raises(UserError, match="tidpo_lambda"):
        run(tidpo_lambda=1.5)
    with pytest.raises(UserError, match="tidpo_preset"):
        TIDPOSettings(tidpo_preset="fancy")
    with pytest.raises(UserError, match="`attention_batch_size` must be at least 1, got 0"):
        run(attention_batch_size=0)


def test_build_scheme_takes_the_settings_and_the_context_from_the_run():
    config = run(weighting="tidpo", tidpo_preset="upstream", tidpo_gamma=0.0, seed=7, max_length=48,
                 otpo_reg=0.3, otpo_reg_m=[0.2, 0.4])
    tidpo = build_scheme("tidpo", config)
    assert tidpo.context == SchemeContext(beta=0.2, loss_type="sigmoid", max_length=48, seed=7)  # β: the preset's
    assert (tidpo.settings.gamma, tidpo.settings.lam, tidpo.settings.seed) == (0.0, 0.2, 7)
    otpo = build_scheme("otpo", config)
    assert otpo.settings == OTPOSettings(otpo_reg=0.3, otpo_reg_m=[0.2, 0.4]) and otpo.context.beta == 0.1
    assert build_scheme("otpo", run(beta=0.05)).context.beta == 0.05


def test_a_scheme_is_built_without_training_arguments():
    scheme = TIDPOScheme(TIDPOSettings(tidpo_kl_alpha=0.0), SchemeContext(loss_type="ipo", seed=3))
    assert not scheme.needs_hidden_for_loss and scheme.settings.seed == 3 and scheme.settings.lam == 0.7
    assert TIDPOScheme().needs_hidden_for_loss  # the paper preset's α 0.5: an instance property, not a ClassVar
    assert not isinstance(TIDPOScheme.__dict__.get("needs_hidden_for_loss"), bool)
    with pytest.raises(UserError, match="loss_type=ipo needs tidpo_kl_alpha=0"):
        TIDPOScheme(TIDPOSettings(), SchemeContext(loss_type="ipo"))
    assert OTPOScheme().settings == OTPOSettings(otpo_reg=1.0, otpo_reg_m=[0.2])


def test_a_settings_field_that_clashes_is_refused():
    @dataclass
    class Clashing:
        otpo_reg: float = 2.0

    @register_scheme
    class ClashingScheme(WeightingScheme):
        name = "clashing"
        settings_class = Clashing

    try:
        with pytest.raises(TypeError, match="`otpo_reg` is defined twice, by Clashing and by OTPOSettings"):
            config_class()
    finally:
        SCHEMES.pop("clashing")
    assert config_class() is TokenweightConfig
