"""The training run of ``tokenweight train``: the output folder claimed (locked, resumed or replaced), the run
pipeline (:mod:`tokenweight.pipeline`), the held-out metrics before and after, ``results.json``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table
from transformers import set_seed

from tokenweight.checkpoints import (check_output_dir, last_complete_checkpoint, non_finite_error, read_run_record,
                                     resolve_resume, stopped_message)
from tokenweight.config import TokenweightConfig
from tokenweight.errors import UserError
from tokenweight.evaluate import REWARD_DEFINITIONS
from tokenweight.pipeline import (build_trainer, held_out_metrics, load_run_splits, model_path_and_tokenizer,
                                  prepare_split)
from tokenweight.preemption import SIGTERM_EXIT_STATUS, StopOnSigterm, any_process
from tokenweight.run_folder import (DropReplacedOnSave, SetAside, check_writable, is_disk_error, lock_output_dir,
                                    settle_set_aside)
from tokenweight.run_record import ApplyResumeChanges, resume_changes, run_record
from tokenweight.weights import SCHEMES


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
    set_seed(config.seed)
    uses_reference = SCHEMES[config.weighting].uses_reference
    model_path, tokenizer = model_path_and_tokenizer(config)
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
    if not uses_reference:
        print(f"weighting={config.weighting} is reference-free: no reference model is loaded", file=sys.stderr)
    trainer = build_trainer(config, model_path, tokenizer, train, evaluation)
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
        results["before"] = held_out_metrics(trainer, eval_raw, config)
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
        results["after"] = held_out_metrics(trainer, eval_raw, config)
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
