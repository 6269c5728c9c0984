"""``tokenweight train [--config RECIPE] [--FLAG VALUE …]``: train a policy
(:func:`tokenweight.training.run_training`).

Every ``TrainingArguments`` flag and every :class:`~tokenweight.config.TokenweightConfig` field is a flag; the flags
override the YAML recipe (:func:`tokenweight.recipe.parse_train_config`). With no model and no dataset it trains the
built-in KeyFact tiny model on the built-in KeyFact task. ``--help`` prints the stored help without importing torch
or transformers (:mod:`tokenweight.commands.train_help`).
"""

from __future__ import annotations

import argparse

HELP = "train a policy (tokenweight train --help for every flag)"


def register(subparsers) -> None:
    # Every word after `train` goes to the config's own parser: with no prefix characters argparse reads none of
    # them as its options (it would refuse the config's flags), and `--help` reaches `run`.
    parser = subparsers.add_parser("train", help=HELP, add_help=False, prefix_chars="\0")
    parser.add_argument("flags", nargs=argparse.REMAINDER)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tokenweight.commands import train_help

    if "--help-all" in args.flags:
        train_help.print_help_all()
        return 0
    if "-h" in args.flags or "--help" in args.flags:
        train_help.print_help()  # stored: no torch or transformers import
        return 0
    import torch

    from tokenweight.config import check_scheme_objective
    from tokenweight.models import hide_shard_writing_bars
    from tokenweight.recipe import parse_train_config
    from tokenweight.training import run_training
    from tokenweight.weights import SCHEMES

    config = parse_train_config(args.flags)
    given = ("ref_model_name_or_path",) if config.ref_model_name_or_path else ()
    check_scheme_objective(SCHEMES[config.weighting], config, given)
    if config.dataset_name is None and not torch.cuda.is_available():
        torch.set_num_threads(1)  # the built-in task's 150k-parameter model: extra intra-op threads only contend
    hide_shard_writing_bars()
    run_training(config)
    return 0
