"""The built-in KeyFact task's settings and defaults (no heavy imports: the config layer reads this module)."""

from __future__ import annotations

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
