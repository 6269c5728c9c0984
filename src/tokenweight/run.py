"""``tokenweight train``: load models and data, train, and report held-out metrics before and after."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import datasets
import torch
from rich.console import Console
from rich.table import Table
from transformers import set_seed

from tokenweight.checkpoints import (check_output_dir, last_complete_checkpoint, non_finite_error, read_run_record,
                                     resolve_resume, stopped_message)
from tokenweight.preemption import SIGTERM_EXIT_STATUS, StopOnSigterm, any_process
from tokenweight.run_folder import (DropReplacedOnSave, SetAside, check_writable, is_disk_error, lock_output_dir,
                                    settle_set_aside)
from tokenweight.run_record import ApplyResumeChanges, resume_changes, run_record
from tokenweight.config import TokenweightConfig, resolve_max_length
from tokenweight.data import WEIGHT_COLUMNS, print_data_summary, tokenize_preference_dataset
from tokenweight.sources import PreferenceSplits, load_splits, swap_pairs
from tokenweight.evaluate import REWARD_DEFINITIONS, held_out_preference
from tokenweight.errors import UserError
from tokenweight.models import add_lora_adapters, load_causal_lm, load_tokenizer, master_weights
from tokenweight.weights import SCHEMES
from tokenweight.weights.base import scheme_class

logger = logging.getLogger(__name__)

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


def keyfact_splits(config: TokenweightConfig, **sizes: int) -> datasets.DatasetDict:
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
    splits = keyfact_splits(config)
    return PreferenceSplits(splits["train"], splits["eval"], f"train (built-in KeyFact, {len(splits['train'])} rows)",
                            f"eval (built-in KeyFact, {len(splits['eval'])} rows)")


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


def keyfact_model_path(config: TokenweightConfig) -> str:
    """The KeyFact base model of the config's ``keyfact_*`` settings (shipped, or built once and cached)."""
    from tokenweight.keyfact import keyfact_base_model

    return str(keyfact_base_model(seed=config.keyfact_seed, size=config.keyfact_model_size,
                                  facts_path=config.keyfact_facts))


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


def held_out_metrics(model, ref_model, scheme, tokenizer, eval_tokenized, eval_raw, config, keyfact: bool) -> dict:
    """``pref_acc``/``logp_acc``/``margin`` on the eval pairs (a reference-free ``scheme``: under its own reward,
    :func:`~tokenweight.evaluate.held_out_preference`), plus KeyFact's ``key_acc``/``key_margin``/``gen_len`` for
    the built-in task."""
    metrics = held_out_preference(model, ref_model, scheme, eval_tokenized, tokenizer.pad_token_id,
                                  config.effective_beta, batch_size=config.per_device_eval_batch_size)
    if keyfact:
        from tokenweight.keyfact import evaluate_keyfact
        metrics.update(evaluate_keyfact(model, tokenizer, eval_raw, facts=config.keyfact_facts))
    return metrics


def run_training(config: TokenweightConfig) -> dict:
    """Train as configured; returns (and writes to ``output_dir/results.json``) the before/after metrics.

    The run holds ``output_dir``'s lock throughout (:func:`~tokenweight.run_folder.lock_output_dir`); under it the
    main process settles an interrupted overwrite, picks the checkpoint to resume from and checks the folder, and
    every process gets its decision (or its refusal)."""
    main_process = config.process_index == 0
    decide = main_process_decides(config)
    with lock_output_dir(config.output_dir, main_process, agree=decide):
        outcome = _claim_output_dir(config) if main_process else None
        if decide is not None:
            outcome = decide(outcome)
        if isinstance(outcome, str):
            raise UserError(outcome)
        resume, replaced = outcome
        return _run_training(config, resume, SetAside(config.output_dir, replaced if main_process else []))


def _claim_output_dir(config: TokenweightConfig) -> tuple[str | None, list[str]] | str:
    """``(checkpoint to resume from or None, names an overwrite replaces)``, or the refusal's message."""
    try:
        check_writable(config.output_dir)
        settle_set_aside(config.output_dir, new_run_saved(config.output_dir))
        resume = resolve_resume(config.resume_from_checkpoint, config.output_dir)
        return resume, check_output_dir(config.output_dir, config.overwrite_output_dir, resume is not None)
    except UserError as error:
        return str(error)


def main_process_decides(config):
    """``message -> message``: the main process's value on every process of a multi-process launch (``None`` for
    a single process, which decides alone)."""
    if config.world_size == 1:
        return None
    from accelerate.utils import broadcast_object_list

    return lambda message: broadcast_object_list([message], from_process=0)[0]


def new_run_saved(output_dir: str) -> bool:
    """True when the run in ``output_dir`` has saved something to resume from or its results."""
    return last_complete_checkpoint(output_dir) is not None or Path(output_dir, "results.json").exists()


def _run_training(config: TokenweightConfig, resume: str | None, replaced: SetAside) -> dict:
    from tokenweight.trainer import TokenweightTrainer

    set_seed(config.seed)
    uses_reference = SCHEMES[config.weighting].uses_reference
    if not uses_reference and config.ref_model_name_or_path:
        raise UserError(f"config key `ref_model_name_or_path`: weighting={config.weighting} is reference-free (no "
                        "reference model is loaded); drop the setting")
    keyfact = config.dataset_name is None
    if keyfact and not torch.cuda.is_available():
        torch.set_num_threads(1)  # a 150k-parameter model: extra intra-op threads only contend
    model_path = resolve_model_path(config)
    config.max_length = resolve_max_length(config.max_length, model_path)
    tokenizer = load_tokenizer(model_path)
    splits = load_run_splits(config)
    train_raw, eval_raw = splits.train, splits.eval
    data_summary = {name: {"swapped_pairs": count} for name, count in splits.swapped_pairs.items()}
    train = prepare_split(config, model_path, tokenizer, train_raw, "train", data_summary, splits.train_name,
                          splits.train_rows)
    evaluation = (prepare_split(config, model_path, tokenizer, eval_raw, "eval", data_summary, splits.eval_name,
                                splits.eval_rows) if eval_raw is not None else None)
    record = run_record(config, train, tokenizer)
    changes = (resume_changes(resume, read_run_record(resume), record, config.resume_changes or [])
               if resume is not None else {})
    policy = load_causal_lm(model_path, config.model_dtype, config.attn_implementation)
    if not uses_reference:
        reference = None
        print(f"weighting={config.weighting} is reference-free: no reference model is loaded", file=sys.stderr)
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
    trainer = TokenweightTrainer(model=policy, ref_model=reference, args=config, train_dataset=train,
                                 eval_dataset=evaluation, processing_class=tokenizer)
    trainer.run_record = record
    trainer.add_callback(ApplyResumeChanges(changes))
    trainer.add_callback(DropReplacedOnSave(replaced))
    sigterm = StopOnSigterm(any_process(trainer.accelerator))
    trainer.add_callback(sigterm)
    results = {"weighting": config.weighting, "model": model_path, "eval_split": splits.eval_name,
               "reward": REWARD_DEFINITIONS[uses_reference], "data": data_summary}
    if resume is not None:
        results["resumed"] = {"checkpoint": resume, "changes": changes}
    if splits.eval_rows is not None:
        results["eval_rows"] = splits.eval_rows
    if evaluation is not None and trainer.is_world_process_zero():
        results["before"] = held_out_metrics(trainer.model, trainer.ref_model, trainer.scheme, tokenizer,
                                             trainer.eval_dataset, eval_raw, config, keyfact)
    replaced.move()
    trainer.accelerator.wait_for_everyone()
    try:
        with sigterm.installed():
            train_guarded(trainer, resume)
        if sigterm.stopped:
            print(f"\n{stopped_message(trainer, 'stopped by SIGTERM')}", file=sys.stderr)
            raise SystemExit(SIGTERM_EXIT_STATUS)
        trainer.save_model()
        trainer.save_state()
    finally:
        replaced.settle(new_run_saved(config.output_dir) or Path(config.output_dir, "trainer_state.json").exists())
    if evaluation is not None and trainer.is_world_process_zero():
        results["after"] = held_out_metrics(trainer.model, trainer.ref_model, trainer.scheme, tokenizer,
                                            trainer.eval_dataset, eval_raw, config, keyfact)
        print_results(results)
    if trainer.is_world_process_zero():
        Path(config.output_dir, "results.json").write_text(json.dumps(results, indent=2))
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()  # closes trackers and the process group, for a clean multi-process exit
    return results


def train_guarded(trainer, resume: str | None) -> None:
    """``trainer.train`` from ``resume`` (a checkpoint folder, or ``None``). A non-finite loss or weight saves the
    state before the failing update and becomes a :class:`~tokenweight.errors.UserError` naming the step and how to
    resume; a failed write (a full disk) is one naming the folder and the last complete checkpoint; Ctrl-C names the
    last checkpoint and exits with status 130."""
    try:
        trainer.train(resume_from_checkpoint=resume)
    except FloatingPointError as error:
        print(file=sys.stderr)  # end the progress bar's line: the error is a line of its own
        raise non_finite_error(trainer, error) from None
    except OSError as error:
        if not is_disk_error(error):
            raise
        print(file=sys.stderr)
        last = last_complete_checkpoint(trainer.args.output_dir)
        kept = (f"the last complete checkpoint {last} is intact: resume from it with --resume_from_checkpoint {last}"
                if last is not None else "no complete checkpoint was saved")
        raise UserError(f"writing to output_dir {trainer.args.output_dir} failed at step {trainer.state.global_step} "
                        f"({error.strerror or error}); {kept}") from None
    except KeyboardInterrupt:
        print(f"\n{stopped_message(trainer, 'interrupted')}", file=sys.stderr)  # below the progress bar
        raise SystemExit(130) from None


def print_results(results: dict) -> None:
    """A before/after table of the held-out metrics on the terminal."""
    table = Table(title=f"held-out metrics (weighting={results['weighting']})")
    table.add_column("metric")
    table.add_column("reference (before)", justify="right")
    table.add_column("trained (after)", justify="right")
    for name in results["after"]:
        table.add_row(name, f"{results['before'].get(name, float('nan')):.4f}", f"{results['after'][name]:.4f}")
    Console().print(table)
    Console().print(f"eval split: {results['eval_split']}", soft_wrap=True, markup=False, highlight=False)
