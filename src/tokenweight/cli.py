"""``tokenweight`` command line: ``train``, ``precompute``, ``eval``, ``weights``, ``bench``.

Each command is a module of :mod:`tokenweight.commands` (:data:`COMMANDS`) defining ``register(subparsers)``,
which sets the parsed arguments' ``func``.

A user error (:class:`~tokenweight.errors.UserError`, or a flag the parser refuses) prints one line,
``tokenweight: error: …``, and exits with status 2; ``TOKENWEIGHT_DEBUG=1`` shows the traceback instead. Only the
named command's module is imported, so ``tokenweight --help`` imports neither torch nor transformers.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from tokenweight.commands.train_help import EXAMPLES
from tokenweight.errors import UserError

#: Sub-commands: name -> (module defining ``register(subparsers)``, which sets ``func``; one-line help).
COMMANDS = {
    "train": ("tokenweight.commands.train", "train a policy (tokenweight train --help for every flag)"),
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


def command_parser(command: str | None) -> CommandParser:
    """The ``tokenweight`` parser; only ``command``'s module is imported (the others are listed by name)."""
    parser = CommandParser(prog="tokenweight", description="Token-weighted preference optimization.",
                           formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        if name == command:
            importlib.import_module(module).register(subparsers)
        else:
            subparsers.add_parser(name, help=help_text, add_help=False)
    return parser


def run_command(argv: list[str]) -> int:
    """Parse ``argv`` and run its command (errors propagate)."""
    parser = command_parser(argv[0] if argv else None)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
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
