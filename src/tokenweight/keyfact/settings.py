"""The built-in KeyFact task's settings and defaults (no heavy imports: the config layer reads this module).

:class:`KeyfactSettings` is composed into the run configuration as a scheme's settings are
(:func:`tokenweight.config.config_class`): its fields are config keys, ``tokenweight train`` flags (one ``--help``
group, :attr:`KeyfactSettings.help_group`) and recipe keys, and only :mod:`tokenweight.keyfact.task` reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar


@dataclass
class KeyfactSettings:
    """The built-in KeyFact task's data and base model (used when neither a model nor a dataset is named)."""

    #: The title of these flags' group in ``tokenweight train --help``.
    help_group: ClassVar[str] = "built-in KeyFact task (used when neither a model nor a dataset is named)"

    keyfact_facts: str | None = field(default=None, metadata={"help": "KeyFact facts JSON (default: built-in)."})
    keyfact_train_size: int = field(default=512, metadata={"help": "KeyFact training pairs."})
    keyfact_eval_size: int = field(default=512, metadata={
        "help": "KeyFact held-out pairs (the fixed eval split, drawn by keyfact_eval_seed)."})
    keyfact_validation_size: int = field(default=128, metadata={
        "help": "KeyFact validation pairs (held out like eval, disjoint from it; for tuning)."})
    keyfact_chosen_longer: float = field(default=0.5, metadata={
        "help": "Probability that the chosen answer has more filler (0.8: verbosity trap)."})
    keyfact_label_noise: float = field(default=0.0, metadata={"help": "Fraction of swapped training pairs."})
    keyfact_shortcut: float = field(default=0.0, metadata={
        "help": "0 (off) or s in (0, 1]: the shortcut sentence goes into the chosen answer of a fraction s of "
                "training pairs and into the rejected answer of the others (below 0.5 it marks rejected)."})
    keyfact_seed: int = field(default=0, metadata={
        "help": "KeyFact training-data and base-model seed (base models of seeds 0 and 1 are shipped; another "
                "seed builds its own, ~10 min, cached)."})
    keyfact_eval_seed: int = field(default=0, metadata={
        "help": "Seed of the KeyFact eval and validation splits (independent of keyfact_seed)."})
    keyfact_model_size: str = field(default="default", metadata={
        "help": "KeyFact base model size: default, or small (for tests); both are shipped with the package."})


#: Settings of the built-in default (KeyFact tiny model on KeyFact data), applied under the recipe and the flags.
#: ``tokenweight bench keyfact`` trains with the same budget (one budget for one task, issue 13); β is left to the
#: library default (0.1, ``DEFAULT_BETA``) so that a scheme preset's β still beats it (TI-DPO ``upstream``: 0.2).
KEYFACT_DEFAULTS = {
    "output_dir": "outputs/keyfact-default",
    "learning_rate": 5e-4,
    "lr_scheduler_type": "constant",
    "num_train_epochs": 2,
    "per_device_train_batch_size": 16,
    "max_length": 128,
    "logging_steps": 8,
    "save_strategy": "no",
    "report_to": "none",
    "seed": 0,
}

#: The flag of each ``build_keyfact`` argument that ``keyfact_splits`` sets from the config.
KEYFACT_FLAGS = {"chosen_longer": "--keyfact_chosen_longer", "label_noise": "--keyfact_label_noise",
                 "shortcut": "--keyfact_shortcut", "n_train": "--keyfact_train_size",
                 "n_eval": "--keyfact_eval_size", "n_validation": "--keyfact_validation_size"}
