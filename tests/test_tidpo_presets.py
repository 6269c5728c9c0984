"""TI-DPO presets: the spec's table, per-field overrides, validation naming the config key."""

from types import SimpleNamespace

import pytest

from tokenweight.errors import UserError
from tokenweight.weights.tidpo.presets import CONFIG_FIELDS, PRESETS, preset_beta, resolve_tidpo_settings


def config(**fields):
    return SimpleNamespace(**{"tidpo_preset": "paper", **{key: None for key in CONFIG_FIELDS.values()}, **fields})


def test_preset_tables():
    paper, upstream = resolve_tidpo_settings(config()), resolve_tidpo_settings(config(tidpo_preset="upstream"))
    assert (paper.beta, paper.lam, paper.sigma_div, paper.gamma, paper.margin, paper.kl_alpha, paper.span) == (
        0.1, 0.7, 4.0, 0.1, 0.01, 0.5, "response")
    assert (upstream.beta, upstream.lam, upstream.sigma_div, upstream.gamma, upstream.margin, upstream.kl_alpha,
            upstream.span) == (0.2, 0.2, 8.0, 0.001, 0.001, 0.5, "full")
    for settings in (paper, upstream):
        assert (settings.anchor_top_k, settings.anchor_top_p, settings.anchor_temperature,
                settings.anchor_max_new_tokens, settings.on_failure) == (50, 0.95, 0.8, 64, "raise")
    assert preset_beta("paper") == 0.1 and preset_beta("upstream") == 0.2
    assert resolve_tidpo_settings(None) == PRESETS["paper"]


def test_explicit_fields_override_the_preset():
    settings = resolve_tidpo_settings(config(tidpo_preset="upstream", beta=0.05, tidpo_lambda=0.0, tidpo_gamma=0.0,
                                             tidpo_span="response", tidpo_anchor_max_new_tokens=8))
    assert (settings.beta, settings.lam, settings.gamma, settings.span, settings.anchor_max_new_tokens) == (
        0.05, 0.0, 0.0, "response", 8)
    assert settings.sigma_div == 8.0 and settings.margin == 0.001  # untouched fields keep the preset's values


@pytest.mark.parametrize("field,value", [("tidpo_lambda", 1.2), ("tidpo_span", "prompt"), ("tidpo_gamma", -1.0),
                                         ("tidpo_anchor_top_p", 0.0), ("tidpo_on_failure", "ignore")])
def test_bad_values_name_the_key(field, value):
    with pytest.raises(UserError, match=field):
        resolve_tidpo_settings(config(**{field: value}))


def test_the_preset_beta_is_the_scheme_default_beta():
    from tokenweight.config import TokenweightConfig
    from tokenweight.weights.tidpo import TIDPOScheme

    assert TIDPOScheme.default_beta(config(tidpo_preset="upstream")) == 0.2 and TIDPOScheme.default_beta() == 0.1
    run = TokenweightConfig(output_dir="/tmp/tw-test", use_cpu=True, report_to="none", weighting="tidpo",
                            tidpo_preset="upstream")
    assert run.effective_beta == 0.2 and resolve_tidpo_settings(run).beta == 0.2
    run.beta = 0.05  # an explicit β wins over the preset's, in the run and in the scheme's settings
    assert run.effective_beta == 0.05 and resolve_tidpo_settings(run).beta == 0.05


def test_unknown_preset():
    with pytest.raises(UserError, match="tidpo_preset"):
        resolve_tidpo_settings(config(tidpo_preset="fancy"))
    with pytest.raises(UserError, match="tidpo_preset"):
        preset_beta("fancy")
