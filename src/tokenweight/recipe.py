"""The run configuration of a command line: a ``--config`` YAML recipe, the flags over it, the built-in task's
defaults under both (:func:`parse_train_config`), and the recipe file's own checks (:func:`read_recipe`)."""

from __future__ import annotations

import argparse
import difflib
from pathlib import Path

import yaml

from tokenweight.errors import UserError


def read_recipe(path: str) -> dict:
    """The YAML recipe at ``path`` as a dict of config keys; a missing file, bad YAML or an unknown key is a
    :class:`UserError` naming it."""
    from dataclasses import fields

    from tokenweight.config import TokenweightConfig

    try:
        values = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise UserError(f"recipe {path}: no such file (looked in {Path.cwd()})") from None
    except yaml.YAMLError as error:
        raise UserError(f"recipe {path}: not valid YAML ({' '.join(str(error).split())})") from None
    if not isinstance(values, dict):
        raise UserError(f"recipe {path}: expected a mapping of config keys, got {type(values).__name__}")
    known = [f.name for f in fields(TokenweightConfig)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        hints = [f"{key} -> {close[0]}" for key in unknown if (close := difflib.get_close_matches(key, known, n=1))]
        raise UserError(f"recipe {path}: unknown config key(s) {unknown}"
                        + (f"; did you mean {', '.join(hints)}?" if hints else ""))
    return values


def parse_train_config(argv: list[str]):
    """Build the run's :class:`TokenweightConfig`: the flags override the ``--config`` YAML, which overrides the
    built-in defaults (KeyFact's, when neither a model nor a dataset is named). Presets fill only what none of
    them set (``beta=None`` lets :attr:`~tokenweight.config.TokenweightConfig.effective_beta` pick)."""
    from tokenweight.config import ConfigArgumentParser, check_scheme_keys
    from tokenweight.keyfact.settings import KEYFACT_DEFAULTS

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, rest = pre.parse_known_args(argv)
    recipe = read_recipe(known.config) if known.config else {}

    if recipe:
        recipe = ConfigArgumentParser(prog="tokenweight train").recipe_defaults(known.config, recipe)

    def parse(defaults: dict):
        parser = ConfigArgumentParser(prog="tokenweight train")
        parser.set_defaults(**defaults)
        return parser.parse_config(rest)

    config = parse(recipe)
    if config.model_name_or_path is None and config.dataset_name is None:
        config = parse({**KEYFACT_DEFAULTS, **recipe})
    set_keys = {key: f"recipe {known.config}" for key in recipe}
    set_keys.update({word[2:].split("=", 1)[0]: word.split("=", 1)[0] for word in rest if word.startswith("--")})
    check_scheme_keys(config.weighting, set_keys)
    return config
