"""``tokenweight`` command line: ``train``, ``precompute``, ``eval``, ``weights``, ``bench``.

``tokenweight train --config recipe.yaml [--any_flag value …]``: flags override the YAML; every
``TrainingArguments`` flag and every :class:`~tokenweight.config.TokenweightConfig` field is a flag. With no model
and no dataset it trains the built-in KeyFact tiny model on the built-in KeyFact task.

A user error (:class:`~tokenweight.errors.UserError`, or a flag the parser refuses) prints one line,
``tokenweight: error: …``, and exits with status 2; ``TOKENWEIGHT_DEBUG=1`` shows the traceback instead. Only the
named command's module is imported, so ``tokenweight --help`` imports neither torch nor transformers.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import sys
from pathlib import Path

import yaml

from tokenweight.commands.train_help import EXAMPLES
from tokenweight.errors import UserError

#: Sub-commands: name -> (module defining ``register(subparsers)``, which sets ``func``; one-line help).
COMMANDS = {
    "train": (None, "train a policy (tokenweight train --help for every flag)"),
    "precompute": ("tokenweight.commands.precompute", "precompute cached token weights (attention)"),
    "eval": ("tokenweight.commands.eval",
             "held-out preference accuracy, generation stats, reward-model win rate, exports"),
    "weights": ("tokenweight.commands.weights", "token-weight heatmaps of a scheme on a few pairs (terminal + HTML)"),
    "bench": ("tokenweight.commands.bench", "benchmarks (tokenweight bench keyfact --help)"),
}

class CommandParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are :class:`UserError` s (one line, exit status 2)."""

    def error(self, message: str):
        raise UserError(f"{message} (see `{self.prog} --help`)")


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
    from tokenweight.run import KEYFACT_DEFAULTS

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


def hide_shard_writing_bars() -> None:
    """Hide transformers' "Writing model shards" bar, which every checkpoint and the final save draw into the
    training bar; the training bar and download bars stay."""
    from transformers.utils import logging as hf_logging

    def hook(factory, args, kwargs):
        if kwargs.get("desc") == "Writing model shards":
            kwargs = {**kwargs, "disable": True}
        return factory(*args, **kwargs)

    hf_logging.set_tqdm_hook(hook)


def _train(argv: list[str]) -> int:
    from tokenweight.commands import train_help

    if "--help-all" in argv:
        train_help.print_help_all()
        return 0
    if "-h" in argv or "--help" in argv:
        train_help.print_help()  # stored: no torch or transformers import
        return 0
    config = parse_train_config(argv)
    from tokenweight.run import run_training

    hide_shard_writing_bars()
    run_training(config)
    return 0


def command_parser(command: str | None) -> CommandParser:
    """The ``tokenweight`` parser; only ``command``'s module is imported (the others are listed by name)."""
    parser = CommandParser(prog="tokenweight", description="Token-weighted preference optimization.",
                           formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        if name == command and module is not None:
            importlib.import_module(module).register(subparsers)
        else:
            subparsers.add_parser(name, help=help_text, add_help=False)
    return parser


def run_command(argv: list[str]) -> int:
    """Parse ``argv`` and run its command (errors propagate)."""
    if argv and argv[0] == "train":
        return _train(argv[1:])
    parser = command_parser(argv[0] if argv else None)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    hide_shard_writing_bars()
    return args.func(args) or 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return run_command(argv)
    except UserError as error:
        if os.environ.get("TOKENWEIGHT_DEBUG") == "1":
            raise
        print(f"tokenweight: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
