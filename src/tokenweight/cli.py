"""``tokenweight`` command line: ``train``, ``precompute``, ``eval``, ``weights``, ``bench``.

``tokenweight train --config recipe.yaml [--any_flag value …]``: flags override the YAML; every
``TrainingArguments`` flag and every :class:`~tokenweight.config.TokenweightConfig` field is a flag. With no model
and no dataset it trains the built-in KeyFact tiny model on the built-in KeyFact task.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import fields
from pathlib import Path

import yaml

# Sub-commands other than `train`: module name -> it defines `register(subparsers)` (each sets `func`).
_COMMAND_MODULES = ("tokenweight.commands.precompute", "tokenweight.commands.eval",
                    "tokenweight.commands.weights", "tokenweight.commands.bench")

TRAIN_EXAMPLES = """examples:
  tokenweight train                                   # built-in KeyFact task and tiny model, plain DPO
  tokenweight train --weighting otpo --output_dir runs/otpo
  tokenweight train --config recipes/otpo_llama3_8b_instruct_ultrafeedback.yaml --per_device_train_batch_size 1
  tokenweight train --model_name_or_path meta-llama/Llama-3.2-1B-Instruct \\
      --dataset_name trl-lib/ultrafeedback_binarized --weighting uniform --bf16 true
"""


def read_recipe(path: str) -> dict:
    """The YAML recipe at ``path`` as a dict of config keys; an unknown key is an error naming it."""
    from tokenweight.config import TokenweightConfig

    values = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"recipe {path}: expected a mapping of config keys, got {type(values).__name__}")
    known = {f.name for f in fields(TokenweightConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"recipe {path}: unknown config key(s) {unknown}")
    return values


def parse_train_config(argv: list[str]):
    """Build the run's :class:`TokenweightConfig` from ``--config`` YAML, the KeyFact defaults (when neither a
    model nor a dataset is named) and the command-line flags, in increasing priority."""
    from transformers import HfArgumentParser

    from tokenweight.config import TokenweightConfig
    from tokenweight.run import KEYFACT_DEFAULTS

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, rest = pre.parse_known_args(argv)
    recipe = read_recipe(known.config) if known.config else {}

    def parse(defaults: dict):
        parser = HfArgumentParser(TokenweightConfig)
        parser.set_defaults(**defaults)
        try:
            (config,) = parser.parse_args_into_dataclasses(args=rest)
        except ValueError as error:  # unknown flags: name them
            raise SystemExit(f"tokenweight train: {error}") from None
        return config

    config = parse(recipe)
    if config.model_name_or_path is None and config.dataset_name is None:
        config = parse({**KEYFACT_DEFAULTS, **recipe})
    return config


def _train(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        from transformers import HfArgumentParser

        from tokenweight.config import TokenweightConfig
        parser = HfArgumentParser(TokenweightConfig, prog="tokenweight train", epilog=TRAIN_EXAMPLES,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.add_argument("--config", help="YAML recipe; command-line flags override its values")
        parser.print_help()
        return 0
    from tokenweight.errors import UserError
    from tokenweight.run import run_training
    try:
        run_training(parse_train_config(argv))
    except UserError as error:
        print(f"tokenweight: error: {error}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="tokenweight", description="Token-weighted preference optimization.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=TRAIN_EXAMPLES)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.add_parser("train", help="train a policy (tokenweight train --help for every flag)", add_help=False)
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    if argv and argv[0] == "train":
        return _train(argv[1:])
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    return args.func(args) or 0


if __name__ == "__main__":
    raise SystemExit(main())
