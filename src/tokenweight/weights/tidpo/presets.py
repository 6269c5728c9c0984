"""TI-DPO's settings, presets and their resolution (spec tidpo.md §4, §9.1).

:class:`TIDPOSettings` holds the scheme's flags (``tidpo_…``); :func:`resolve_tidpo_settings` turns them into the
:class:`TIDPOParameters` the scheme runs with. ``paper`` follows the ICLR 2026 paper (Table B13; margin from the
README), ``upstream`` the official code's ``config/loss/tidpo.yaml``. Every value can be overridden by its own flag;
a flag left at ``None`` takes the preset's value.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from tokenweight.errors import UserError


@dataclass(frozen=True)
class TIDPOParameters:
    """Resolved TI-DPO settings: a preset with the explicit flags applied (config field in brackets).

    Attributes:
        beta: β inside σ [``beta``]; the trainer applies it when the user left ``beta`` unset.
        lam: λ, attribution vs prior mix [``tidpo_lambda``].
        sigma_div: prior width divisor, σ = max(1, T / sigma_div) [``tidpo_sigma_div``].
        span: weighted span, ``response`` or ``full`` (prompt + response) [``tidpo_span``].
        kl_alpha: TDPO2 KL weight α; 0 gives the paper's pure weighted DPO [``tidpo_kl_alpha``].
        gamma: triplet loss weight γ; 0 skips anchor generation [``tidpo_gamma``].
        margin: triplet hinge margin [``tidpo_margin``].
        anchor_top_k, anchor_top_p, anchor_temperature, anchor_max_new_tokens: anchor sampling
            [``tidpo_anchor_top_k`` …].
        on_failure: ``raise`` (default) or ``count``: a non-finite attribution / KL / triplet term is then counted
            in ``tidpo/{attribution,kl,triplet}_failures`` and that part is dropped for the step [``tidpo_on_failure``].
        seed: the run's seed; each anchor is drawn from ``(seed, global step, dataset row)`` [``seed``].
    """

    beta: float
    lam: float
    sigma_div: float
    span: str
    kl_alpha: float
    gamma: float
    margin: float
    anchor_top_k: int = 50
    anchor_top_p: float = 0.95
    anchor_temperature: float = 0.8
    anchor_max_new_tokens: int = 64
    on_failure: str = "raise"
    seed: int = 0


PRESETS: dict[str, TIDPOParameters] = {
    "paper": TIDPOParameters(beta=0.1, lam=0.7, sigma_div=4.0, span="response", kl_alpha=0.5, gamma=0.1, margin=0.01),
    "upstream": TIDPOParameters(beta=0.2, lam=0.2, sigma_div=8.0, span="full", kl_alpha=0.5, gamma=0.001,
                              margin=0.001),
}

@dataclass
class TIDPOSettings:
    """TI-DPO's flags; ``None`` takes the value of the preset ``tidpo_preset``. Checked on creation (an unknown
    preset or an out-of-range value is a :class:`UserError` naming the flag)."""

    tidpo_preset: str = field(default="paper", metadata={"help": "TI-DPO preset: paper or upstream."})
    tidpo_lambda: float | None = field(default=None, metadata={"help": "Attribution vs prior mix λ."})
    tidpo_sigma_div: float | None = field(default=None, metadata={"help": "Prior σ = T / sigma_div."})
    tidpo_span: str | None = field(default=None, metadata={"help": "Weighted span: response or full."})
    tidpo_kl_alpha: float | None = field(default=None, metadata={"help": "TDPO2 KL weight α (0: off)."})
    tidpo_gamma: float | None = field(default=None, metadata={"help": "Triplet loss weight γ (0: off)."})
    tidpo_margin: float | None = field(default=None, metadata={"help": "Triplet margin."})
    tidpo_anchor_top_k: int | None = field(default=None, metadata={"help": "Anchor sampling top-k (50)."})
    tidpo_anchor_top_p: float | None = field(default=None, metadata={"help": "Anchor sampling top-p (0.95)."})
    tidpo_anchor_temperature: float | None = field(default=None, metadata={"help": "Anchor temperature (0.8)."})
    tidpo_anchor_max_new_tokens: int | None = field(default=None, metadata={"help": "Anchor length cap (64)."})
    tidpo_on_failure: str | None = field(default=None, metadata={
        "help": "raise (default) on a non-finite attribution/KL/triplet; count: drop that part for the step and "
                "count it in tidpo/*_failures."})

    def __post_init__(self):
        resolve_tidpo_settings(self)


# settings attribute -> config field overriding it
CONFIG_FIELDS: dict[str, str] = {
    "beta": "beta",
    "lam": "tidpo_lambda",
    "sigma_div": "tidpo_sigma_div",
    "span": "tidpo_span",
    "kl_alpha": "tidpo_kl_alpha",
    "gamma": "tidpo_gamma",
    "margin": "tidpo_margin",
    "anchor_top_k": "tidpo_anchor_top_k",
    "anchor_top_p": "tidpo_anchor_top_p",
    "anchor_temperature": "tidpo_anchor_temperature",
    "anchor_max_new_tokens": "tidpo_anchor_max_new_tokens",
    "on_failure": "tidpo_on_failure",
    "seed": "seed",
}


def _validate(settings: TIDPOParameters) -> None:
    checks = [
        (settings.beta > 0, "beta", "must be > 0"),
        (0.0 <= settings.lam <= 1.0, "tidpo_lambda", "must be in [0, 1]"),
        (settings.sigma_div > 0, "tidpo_sigma_div", "must be > 0"),
        (settings.span in ("response", "full"), "tidpo_span", "must be 'response' or 'full'"),
        (settings.kl_alpha >= 0, "tidpo_kl_alpha", "must be >= 0"),
        (settings.gamma >= 0, "tidpo_gamma", "must be >= 0"),
        (settings.margin >= 0, "tidpo_margin", "must be >= 0"),
        (settings.anchor_top_k >= 0, "tidpo_anchor_top_k", "must be >= 0 (0 disables top-k)"),
        (0.0 < settings.anchor_top_p <= 1.0, "tidpo_anchor_top_p", "must be in (0, 1]"),
        (settings.anchor_temperature > 0, "tidpo_anchor_temperature", "must be > 0"),
        (settings.anchor_max_new_tokens >= 1, "tidpo_anchor_max_new_tokens", "must be >= 1"),
        (settings.on_failure in ("raise", "count"), "tidpo_on_failure", "must be 'raise' or 'count'"),
    ]
    for ok, key, message in checks:
        if not ok:
            raise UserError(f"TI-DPO config `{key}` {message}")


def resolve_tidpo_settings(args: Any = None) -> TIDPOParameters:
    """Settings of the preset ``args.tidpo_preset`` (default ``paper``) with every non-``None`` field of ``args``
    listed in :data:`CONFIG_FIELDS` overriding its value; ``args=None`` gives the ``paper`` preset. ``args`` is a
    :class:`TIDPOSettings` or any object with its fields (the run configuration: then its ``beta`` and ``seed``
    apply too).

    Raises:
        UserError: an unknown preset or an out-of-range value, naming the config key.
    """
    preset = get_preset(getattr(args, "tidpo_preset", None) or "paper")
    overrides = {attr: getattr(args, key) for attr, key in CONFIG_FIELDS.items()
                 if getattr(args, key, None) is not None}
    settings = dataclasses.replace(preset, **overrides)
    _validate(settings)
    return settings


def get_preset(preset_name: str) -> TIDPOParameters:
    """The preset ``preset_name``; an unknown name is an error naming ``tidpo_preset``."""
    if preset_name not in PRESETS:
        raise UserError(f"unknown TI-DPO preset {preset_name!r} (config key `tidpo_preset`); known: {sorted(PRESETS)}")
    return PRESETS[preset_name]


def preset_beta(preset_name: str) -> float:
    """β of the preset ``preset_name``: the scheme's default β, which the run configuration uses when ``beta`` is
    not given explicitly (precedence: explicit ``beta`` > preset > built-in default)."""
    return get_preset(preset_name).beta
