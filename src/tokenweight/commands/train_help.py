"""``tokenweight train --help`` without importing torch or transformers, and ``--help-all``.

The train parser is built from ``transformers.TrainingArguments`` and every registered scheme's settings, which takes
seconds to import. ``--help`` therefore prints :data:`STORED_HELP`, tokenweight's own flag groups rendered once from
that parser (:func:`render_help`), with the modules of ``tokenweight.weights`` it was rendered from in
:data:`STORED_MODULES`; tests/test_cli_defaults.py fails when either differs from a fresh rendering, and
``python -m tokenweight.commands.train_help`` writes both again. ``--help`` renders afresh instead (seconds) when the
package's modules are not those stored (a scheme folder added, docs/ADDING_A_SCHEME.md) and in a process that has
already imported the schemes (a plugin scheme registered by importing its package). ``--help-all`` renders the whole parser, the
``TrainingArguments`` flags of the installed transformers last.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

STORED_HELP = Path(__file__).with_name("train_help.txt")
#: The modules of ``tokenweight.weights`` (:func:`~tokenweight.discovery.weights_modules`) :data:`STORED_HELP` was
#: rendered from, one a line.
STORED_MODULES = Path(__file__).with_name("train_help_modules.txt")
USAGE = "tokenweight train [--config RECIPE] [--weighting SCHEME] [--FLAG VALUE ...]"
WIDTH = 110
TRAINING_ARGUMENTS_NOTE = """every transformers.TrainingArguments flag is also a flag (--learning_rate, --num_train_epochs, --max_steps,
--per_device_train_batch_size, --gradient_accumulation_steps, --output_dir, --bf16, --seed, ...):
`tokenweight train --help-all` lists them with their defaults (it imports transformers: a few seconds).
"""
EXAMPLES = """examples:
  tokenweight train                                   # built-in KeyFact task and tiny model, plain DPO
  tokenweight train --weighting otpo --output_dir runs/otpo
  tokenweight train --weighting tidpo --tidpo_preset upstream --output_dir runs/tidpo   # β 0.2 from the preset
  tokenweight train --config recipes/otpo_llama3_8b_instruct_ultrafeedback.yaml --per_device_train_batch_size 1
  tokenweight train --model_name_or_path meta-llama/Llama-3.2-1B-Instruct \\
      --dataset_name trl-lib/ultrafeedback_binarized --weighting uniform --bf16 true

Precedence: a flag > the --config recipe > a scheme preset (TI-DPO's β) > the built-in defaults (KeyFact's when
neither a model nor a dataset is named).
"""
DESCRIPTION = """Train a policy with token-weighted DPO. With no model and no dataset named, it trains the built-in
KeyFact tiny model (shipped with the package) on the built-in KeyFact task and prints the KeyFact table."""


def train_parser(epilog: str):
    """The ``tokenweight train`` parser (:class:`~tokenweight.config.ConfigArgumentParser` and ``--config``)."""
    from tokenweight.config import ConfigArgumentParser, HelpFormatter

    parser = ConfigArgumentParser(prog="tokenweight train", usage=USAGE, description=DESCRIPTION, epilog=epilog,
                                  formatter_class=functools.partial(HelpFormatter, width=WIDTH))
    parser.add_argument("--config", help="YAML recipe; command-line flags override its values")
    parser.add_argument("--help-all", action="store_true", help="every flag, TrainingArguments' included")
    return parser


def render_help() -> str:
    """tokenweight's own groups of the train parser (the ``TrainingArguments`` group left out, a note instead)."""
    from tokenweight.config import TRAINING_ARGUMENTS_GROUP

    parser = train_parser(TRAINING_ARGUMENTS_NOTE + "\n" + EXAMPLES)
    parser._action_groups = [g for g in parser._action_groups if g.title != TRAINING_ARGUMENTS_GROUP]
    return parser.format_help()


def print_help() -> None:
    """The stored help; rendered afresh when the schemes are already imported (a scheme registered by importing
    its package in this process, docs/ADDING_A_SCHEME.md, gets its group), which then costs nothing more, or when
    the modules of ``tokenweight.weights`` are not those the stored help was rendered from (a new scheme's folder)."""
    from tokenweight.discovery import weights_modules

    if "tokenweight.weights" in sys.modules or STORED_MODULES.read_text(encoding="utf-8").split() != weights_modules():
        print(render_help(), end="")
    else:
        print(STORED_HELP.read_text(encoding="utf-8"), end="")


def print_help_all() -> None:
    """The whole parser: tokenweight's groups, then every ``TrainingArguments`` flag, then the examples."""
    train_parser(EXAMPLES).print_help()


def main() -> None:
    from tokenweight.discovery import weights_modules

    STORED_HELP.write_text(render_help(), encoding="utf-8")
    STORED_MODULES.write_text("".join(f"{name}\n" for name in weights_modules()), encoding="utf-8")
    print(f"wrote {STORED_HELP} and {STORED_MODULES}")


if __name__ == "__main__":
    main()
