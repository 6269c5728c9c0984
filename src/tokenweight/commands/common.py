"""What the ``eval`` and ``weights`` commands share: model/data flags and the run config of their flags."""

from __future__ import annotations

import argparse
from pathlib import Path

from tokenweight.config import (TokenweightConfig, add_scheme_flags, check_scheme_keys, resolve_max_length,
                                scheme_setting_owners)


def add_source_arguments(parser: argparse.ArgumentParser, model_required: bool = False) -> None:
    """Flags naming the model, the data and the scheme settings (``--config`` recipe)."""
    parser.add_argument("--model_name_or_path", required=model_required,
                        help="policy (hub id or local folder)" + ("" if model_required else
                                                                  "; default: the built-in KeyFact base model"))
    parser.add_argument("--dataset_name", help="preference data (hub id, local file or folder); "
                                               "default: the built-in KeyFact task")
    parser.add_argument("--config", help="YAML recipe (as for `tokenweight train`); the scheme flags below and the "
                                         "flags above override its values")
    parser.add_argument("--weighting", help="weighting scheme (a registered name)")
    parser.add_argument("--max_length", type=int, help="max prompt + completion tokens (default: the config's)")
    parser.add_argument("--batch_size", type=positive_int, default=8, help="pairs per forward (default 8)")
    add_scheme_flags(parser)


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1 (0 pairs per forward, or 0 pairs, would do nothing)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_config(args: argparse.Namespace, **overrides) -> TokenweightConfig:
    """The :class:`TokenweightConfig` of the command: the ``--config`` recipe, then the flags, then ``overrides``."""
    from tokenweight.recipe import read_recipe

    values = read_recipe(args.config) if getattr(args, "config", None) else {}
    set_keys = {key: f"recipe {args.config}" for key in values}
    for key in ("model_name_or_path", "dataset_name", "weighting", "max_length", "ref_model_name_or_path"):
        if getattr(args, key, None) is not None:
            values[key] = getattr(args, key)
    flags = {key: getattr(args, key) for key in scheme_setting_owners() if hasattr(args, key)}
    values.update(flags)
    set_keys.update({key: f"--{key}" for key in flags})
    values.setdefault("output_dir", "outputs/tokenweight-eval")
    values.update(report_to="none", **overrides)
    if values.get("dataset_name") is None:
        values.setdefault("max_length", 128)
    config = TokenweightConfig(**values)
    check_scheme_keys(config.weighting, set_keys)
    if config.model_name_or_path is not None:
        config.max_length = resolve_max_length(config.max_length, config.model_name_or_path)
    return config


def model_label(path: str) -> str:
    """A short name for a model path (its folder name)."""
    return Path(path).name or str(path)
