"""The run pipeline every command shares: the policy's path and tokenizer, the splits (a dataset, or the built-in
KeyFact task), each split through its scheme's data preparation and tokenized, and the trainer built on them.

``tokenweight train`` runs all of it; ``precompute``, ``eval``, ``weights`` and ``tokenweight bench keyfact`` run the
parts they need, so that every command sees a split exactly as training does.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import datasets

from tokenweight.config import TokenweightConfig, resolve_max_length
from tokenweight.data import WEIGHT_COLUMNS, print_data_summary, tokenize_preference_dataset
from tokenweight.errors import UserError
from tokenweight.keyfact.task import keyfact_metrics, keyfact_model_path, keyfact_run_splits, keyfact_split
from tokenweight.models import add_lora_adapters, load_causal_lm, load_tokenizer, master_weights
from tokenweight.sources import PreferenceSplits, load_preference_split, load_splits, swap_pairs
from tokenweight.weights import SCHEMES
from tokenweight.weights.base import scheme_class


def resolve_model_path(config: TokenweightConfig) -> str:
    """The policy's path; builds (or reuses from the cache) the KeyFact base model for the built-in default."""
    if config.model_name_or_path is not None:
        if config.dataset_name is None:
            raise UserError("config key `dataset_name` is required when `model_name_or_path` is given "
                             "(name neither for the built-in KeyFact default)")
        return config.model_name_or_path
    if config.dataset_name is not None:
        raise UserError("config key `model_name_or_path` is required when `dataset_name` is given "
                         "(name neither for the built-in KeyFact default)")
    return keyfact_model_path(config)


def model_path_and_tokenizer(config: TokenweightConfig, resolve_length: bool = True) -> tuple[str, object]:
    """``(model path, tokenizer)`` of the run (:func:`resolve_model_path`); with ``resolve_length``,
    ``config.max_length`` is first checked against the model's context (``None``: the default)."""
    model_path = resolve_model_path(config)
    if resolve_length:
        config.max_length = resolve_max_length(config.max_length, model_path)
    return model_path, load_tokenizer(model_path)


def load_run_splits(config: TokenweightConfig) -> PreferenceSplits:
    """The run's raw splits and their names: ``eval_split`` or an ``eval_fraction`` of the training split; with
    ``swap_pairs`` chosen and rejected exchanged in every split (counted on stderr and in ``swapped_pairs``)."""
    splits = _load_run_splits(config)
    if config.swap_pairs:
        for name in ("train", "eval"):
            if getattr(splits, name) is not None:
                setattr(splits, name, swap_pairs(getattr(splits, name)))
                splits.swapped_pairs[name] = len(getattr(splits, name))
                print(f"data {name}: {len(getattr(splits, name))} pairs swapped (chosen <-> rejected, --swap_pairs)",
                      file=sys.stderr)
    return splits


def _load_run_splits(config: TokenweightConfig) -> PreferenceSplits:
    if config.dataset_name is not None:
        return load_splits(config.dataset_name, config.dataset_split, config.eval_split, config.eval_fraction,
                           config.seed)
    if config.eval_fraction:
        raise UserError("--eval_fraction needs --dataset_name: the built-in KeyFact task has its own eval split")
    return keyfact_run_splits(config)


def tokenize_split(config: TokenweightConfig, tokenizer, raw: datasets.Dataset, name: str,
                   summary: dict | None = None, label: str | None = None,
                   source_rows: list[int] | None = None) -> datasets.Dataset:
    """Validate and tokenize one split under the config's length limits. With ``summary``, its counts go to
    ``summary[name]`` (for ``results.json``) and its one-line data summary and warnings to stderr."""
    tokenized, stats = tokenize_preference_dataset(raw, tokenizer, max_length=config.max_length,
                                                   max_prompt_length=config.max_prompt_length,
                                                   name=label or name, source_rows=source_rows,
                                                   signed_weights=scheme_class(config.weighting).signed_weights)
    if summary is not None:
        summary[name] = {"split": label or name, **stats.as_dict(), **summary.get(name, {})}
        print_data_summary(stats, f"{name} split {label or name}")
    return tokenized


def prepare_raw(config: TokenweightConfig, model_path: str, tokenizer, raw: datasets.Dataset, name: str,
                output_dir: str | None = None, summary: dict | None = None, model=None) -> datasets.Dataset:
    """The raw split ``name`` after its scheme's data preparation
    (:meth:`~tokenweight.weights.base.WeightingScheme.prepare`; AttentionPO: the judge's weights), which may cache
    what it computes in ``output_dir`` (``None``: in memory) and add its counts to ``summary[name]``."""
    from tokenweight.weights import PrepareContext, build_scheme

    context = PrepareContext(config=config, model_path=model_path, tokenizer=tokenizer, output_dir=output_dir,
                             summary=summary, model=model)
    return build_scheme(config.weighting, config).prepare(raw, name, context)


def prepare_split(config: TokenweightConfig, model_path: str, tokenizer, raw: datasets.Dataset, name: str,
                  summary: dict | None = None, label: str | None = None,
                  source_rows: list[int] | None = None) -> datasets.Dataset:
    """One split of the run prepared by its scheme (cached under ``output_dir``) and tokenized, so that every split
    the trainer sees — train and eval — carries what the scheme reads."""
    prepared = prepare_raw(config, model_path, tokenizer, raw, name, config.output_dir, summary)
    if SCHEMES[config.weighting].tooling.needs_weight_columns and not set(WEIGHT_COLUMNS) <= set(prepared.column_names):
        raise UserError(f"weighting={config.weighting} needs the dataset columns chosen_weights and rejected_weights "
                        f"(one float per completion token); the {name} split {label or name} has columns "
                        f"{sorted(prepared.column_names)}")
    tokenized = tokenize_split(config, tokenizer, prepared, name, summary, label, source_rows)
    check_zero_weight_rows(tokenized, f"{name} split {label or name}", summary[name] if summary else None)
    return tokenized


def check_zero_weight_rows(tokenized: datasets.Dataset, label: str, summary: dict | None) -> None:
    """Count the rows whose token weights (chosen and rejected) are all zero — they train nothing — into
    ``summary["zero_weight_rows"]`` and warn on stderr naming the first ones; all rows so is a :class:`UserError`."""
    if not set(WEIGHT_COLUMNS) <= set(tokenized.column_names):
        return
    zero = [row["row_index"] if "row_index" in row else number for number, row in enumerate(tokenized)
            if not any(row["chosen_weights"]) and not any(row["rejected_weights"])]
    if summary is not None:
        summary["zero_weight_rows"] = len(zero)
    if zero and len(zero) == len(tokenized):
        raise UserError(f"data {label}: every row's token weights are all zero (chosen_weights, rejected_weights): "
                        "the run would train nothing")
    if zero:
        print(f"data {label}: warning: {len(zero)} of {len(tokenized)} rows have all-zero token weights and train "
              f"nothing (rows {', '.join(map(str, zero[:5]))}{' …' if len(zero) > 5 else ''})", file=sys.stderr)


def load_pairs(config: TokenweightConfig, tokenizer, split: str, limit: int | None = None,
               prepare: Callable[[datasets.Dataset, str], datasets.Dataset] | None = None,
               ) -> tuple[datasets.Dataset, datasets.Dataset]:
    """``(tokenized, raw)`` pairs of ``split`` (KeyFact: ``train``, ``eval`` or ``validation``), at most ``limit``
    of them; ``prepare(raw, split)`` (the scheme's data preparation, :func:`prepare_raw`) runs on the raw rows
    first.

    ``tokenized`` rows carry ``row_index`` into ``raw`` (rows whose prompt fills ``max_length`` are dropped).
    """
    if config.dataset_name is None:
        raw = keyfact_split(config, split, limit)
    else:
        raw = load_preference_split(config.dataset_name, split)
        if limit is not None:
            raw = raw.select(range(min(limit, len(raw))))
    if prepare is not None:
        raw = prepare(raw, split)
    tokenized, stats = tokenize_preference_dataset(raw, tokenizer, max_length=config.max_length,
                                                   max_prompt_length=config.max_prompt_length, name=split,
                                                   signed_weights=scheme_class(config.weighting).signed_weights)
    print_data_summary(stats, split)
    return tokenized, raw


def cached_reference_splits(config: TokenweightConfig, model_path: str, policy, tokenizer, train, evaluation):
    """Train and eval splits carrying the reference log-probs cached in ``config.ref_log_probs``. The cache's model
    fingerprint is checked against the untrained ``policy`` when the reference is the policy's own checkpoint (the
    default), else against ``ref_model_name_or_path``, loaded only for that check and freed."""
    from tokenweight.reference_cache import with_cached_reference_logps

    ref_path = config.ref_model_name_or_path or model_path
    reference = policy if ref_path == model_path else load_causal_lm(ref_path, config.model_dtype,
                                                                     config.attn_implementation)
    splits = with_cached_reference_logps(config.ref_log_probs, reference, tokenizer,
                                         {"train": train, "eval": evaluation}, config.max_length,
                                         config.max_prompt_length)
    return splits["train"], splits["eval"]


def build_trainer(config: TokenweightConfig, model_path: str, tokenizer, train: datasets.Dataset,
                  evaluation: datasets.Dataset | None = None, **trainer_kwargs):
    """The :class:`~tokenweight.trainer.TokenweightTrainer` of the run: the policy loaded from ``model_path``
    (LoRA adapters with ``use_peft``, else float32 master weights unless ``fp32_master_weights=False``) and its
    reference — none for a reference-free scheme, the cached log-probs of ``ref_log_probs`` (no model), else
    ``ref_model_name_or_path`` or a second copy of the policy's checkpoint. ``trainer_kwargs``: ``callbacks`` …"""
    from tokenweight.trainer import TokenweightTrainer

    policy = load_causal_lm(model_path, config.model_dtype, config.attn_implementation)
    if not SCHEMES[config.weighting].uses_reference:
        reference = None
    elif config.ref_log_probs:  # no reference model: its log-probs come from the cache
        reference = None
        train, evaluation = cached_reference_splits(config, model_path, policy, tokenizer, train, evaluation)
    else:
        reference = load_causal_lm(config.ref_model_name_or_path or model_path, config.model_dtype,
                                   config.attn_implementation)
    if config.use_peft:
        policy = add_lora_adapters(policy, config.lora_r, config.lora_alpha, config.lora_dropout,
                                   config.lora_target_modules)
    else:
        policy = master_weights(policy, config.fp32_master_weights, config.learning_rate)
    return TokenweightTrainer(model=policy, ref_model=reference, args=config, train_dataset=train,
                              eval_dataset=evaluation, processing_class=tokenizer, **trainer_kwargs)


def held_out_metrics(trainer, eval_raw: datasets.Dataset, config: TokenweightConfig) -> dict:
    """``pref_acc``/``logp_acc``/``margin`` of the trainer's model on its eval pairs (a reference-free scheme: under
    its own reward, :func:`~tokenweight.evaluate.held_out_preference`), plus the built-in task's own metrics
    (KeyFact: ``key_acc``/``key_margin``/``gen_len``)."""
    from tokenweight.evaluate import held_out_preference

    metrics = held_out_preference(trainer.model, trainer.ref_model, trainer.scheme, trainer.eval_dataset,
                                  trainer.processing_class.pad_token_id, config.effective_beta,
                                  batch_size=config.per_device_eval_batch_size)
    if config.dataset_name is None:
        metrics.update(keyfact_metrics(config, trainer.model, trainer.processing_class, eval_raw))
    return metrics
