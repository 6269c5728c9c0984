"""KeyFact as the built-in task of ``tokenweight train|eval|weights|precompute``: what the run pipeline asks of it
when neither a model nor a dataset is named — its defaults, its splits, its base model and its held-out metrics.

The pipeline calls these functions with the run's config; only this module reads the config's ``keyfact_*``
settings (declared in :mod:`tokenweight.keyfact.settings`).
"""

from __future__ import annotations

import datasets

from tokenweight.errors import UserError
from tokenweight.keyfact.settings import KEYFACT_DEFAULTS, KEYFACT_FLAGS
from tokenweight.sources import PreferenceSplits

__all__ = ["KEYFACT_DEFAULTS", "keyfact_metrics", "keyfact_model_path", "keyfact_run_splits", "keyfact_split",
           "keyfact_splits"]


def keyfact_splits(config, **sizes: int) -> datasets.DatasetDict:
    """The built-in KeyFact splits (``train``, ``eval``, ``validation``) of the config's ``keyfact_*`` settings;
    ``sizes`` (``n_train``, ``n_eval``, ``n_validation``) override the configured split sizes. A setting or facts
    file the generator refuses is a :class:`UserError` naming the flag."""
    from tokenweight.keyfact import build_keyfact

    sizes = {"n_train": config.keyfact_train_size, "n_eval": config.keyfact_eval_size,
             "n_validation": config.keyfact_validation_size, **sizes}
    try:
        return build_keyfact(facts_path=config.keyfact_facts, chosen_longer=config.keyfact_chosen_longer,
                             label_noise=config.keyfact_label_noise, shortcut=config.keyfact_shortcut,
                             seed=config.keyfact_seed, eval_seed=config.keyfact_eval_seed, **sizes)
    except ValueError as error:
        source = KEYFACT_FLAGS.get(str(error).split(" ", 1)[0], f"--keyfact_facts {config.keyfact_facts}"
                                   if config.keyfact_facts else "the built-in facts")
        raise UserError(f"KeyFact data ({source}): {error}") from error


def keyfact_run_splits(config) -> PreferenceSplits:
    """The training run's splits of the built-in task: ``train`` and its fixed ``eval`` split, named for the run's
    summary and ``results.json``."""
    splits = keyfact_splits(config)
    return PreferenceSplits(splits["train"], splits["eval"], f"train (built-in KeyFact, {len(splits['train'])} rows)",
                            f"eval (built-in KeyFact, {len(splits['eval'])} rows)")


def keyfact_split(config, split: str, limit: int | None = None) -> datasets.Dataset:
    """The built-in split ``split`` (``train``, ``eval`` or ``validation``; another name is a :class:`UserError`),
    at most ``limit`` rows of it (the same first rows as the configured size)."""
    if split not in ("train", "eval", "validation"):
        raise UserError(f"split {split!r} not found in the built-in KeyFact task (available: ['eval', "
                        "'train', 'validation'])")
    sizes = {} if limit is None else {"n_" + split: limit}
    return keyfact_splits(config, **sizes)[split]


def keyfact_model_path(config) -> str:
    """The KeyFact base model of the config's ``keyfact_*`` settings (shipped, or built once and cached)."""
    from tokenweight.keyfact import keyfact_base_model

    return str(keyfact_base_model(seed=config.keyfact_seed, size=config.keyfact_model_size,
                                  facts_path=config.keyfact_facts))


def keyfact_metrics(config, model, tokenizer, raw, **generation) -> dict:
    """KeyFact's held-out metrics (``key_acc``, ``key_margin``, ``gen_len`` …:
    :func:`~tokenweight.keyfact.metrics.evaluate_keyfact`) of ``model`` on the raw KeyFact rows ``raw``, under the
    config's facts; ``generation``: ``max_new_tokens``."""
    from tokenweight.keyfact import evaluate_keyfact

    return evaluate_keyfact(model, tokenizer, raw, facts=config.keyfact_facts, **generation)
