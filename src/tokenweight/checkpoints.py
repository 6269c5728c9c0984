"""A training run's output folder and checkpoints: refuse to mix runs, resume, save the last good state.

``tokenweight train`` never writes into a folder that holds a previous run unless asked: ``--overwrite_output_dir
true`` replaces it (its ``checkpoint-*`` folders are removed first), ``--resume_from_checkpoint PATH|true``
continues it. A non-finite loss saves the state before the failing update so the run can be resumed with other
settings; Ctrl-C names the last checkpoint to resume from.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from tokenweight.errors import UserError

#: Files that only a (partly) finished run leaves in its output folder.
RUN_FILES = ("results.json", "trainer_state.json", "training_args.bin", "model.safetensors",
             "model.safetensors.index.json", "pytorch_model.bin", "adapter_model.safetensors")
TRAINER_STATE = "trainer_state.json"


def checkpoint_folders(output_dir: str | Path) -> list[Path]:
    """The ``checkpoint-<step>`` folders in ``output_dir``, by step."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def resolve_resume(resume_from_checkpoint: str | None, output_dir: str) -> str | None:
    """The checkpoint folder to resume from: ``PATH``, or ``true`` for the last one in ``output_dir``; ``None``
    (or ``false``) starts fresh. A missing folder, or one without ``trainer_state.json``, is a :class:`UserError`."""
    if resume_from_checkpoint is None or resume_from_checkpoint.lower() in ("", "false"):
        return None
    if resume_from_checkpoint.lower() == "true":
        last = get_last_checkpoint(output_dir) if Path(output_dir).is_dir() else None
        if last is None:
            raise UserError(f"--resume_from_checkpoint true: no {PREFIX_CHECKPOINT_DIR}-* folder in output_dir "
                            f"{output_dir}")
        return last
    path = Path(resume_from_checkpoint)
    if not path.is_dir():
        raise UserError(f"--resume_from_checkpoint {resume_from_checkpoint}: no such checkpoint folder")
    if not (path / TRAINER_STATE).is_file():
        raise UserError(f"--resume_from_checkpoint {resume_from_checkpoint}: not a checkpoint (no {TRAINER_STATE})")
    return str(path)


def claim_output_dir(output_dir: str, overwrite: bool, resuming: bool, is_main_process: bool) -> None:
    """Refuse an ``output_dir`` holding a previous run unless ``overwrite`` or ``resuming``; with ``overwrite``
    the main process removes the old ``checkpoint-*`` folders and ``results.json`` (and says so)."""
    folder = Path(output_dir)
    old_checkpoints = checkpoint_folders(folder)
    found = [name for name in RUN_FILES if (folder / name).exists()] + [p.name for p in old_checkpoints]
    if not found or resuming:
        return
    if not overwrite:
        raise UserError(f"output_dir {output_dir} holds a previous run ({', '.join(found)}); pass "
                        "--overwrite_output_dir true to replace it, or --resume_from_checkpoint true to continue it")
    if not is_main_process:
        return
    for checkpoint in old_checkpoints:
        shutil.rmtree(checkpoint)
    (folder / "results.json").unlink(missing_ok=True)
    if old_checkpoints:
        print(f"tokenweight: --overwrite_output_dir: removed {len(old_checkpoints)} old checkpoint folder(s) from "
              f"{output_dir}: {', '.join(p.name for p in old_checkpoints)}", file=sys.stderr)


def save_last_good_state(trainer) -> str:
    """Save the trainer's current state (model, optimizer, scheduler, RNG, trainer state) as
    ``output_dir/checkpoint-<global step>``, unless that checkpoint exists already; returns its path."""
    path = Path(trainer.args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{trainer.state.global_step}")
    if not (path / TRAINER_STATE).is_file():
        trainer._save_checkpoint(trainer.model, trial=None)
    return str(path)


def non_finite_error(trainer, error: FloatingPointError) -> UserError:
    """The one-line error of a non-finite loss or weight at the step being computed, after saving the state
    before that step's update."""
    step = trainer.state.global_step
    saved = save_last_good_state(trainer)
    return UserError(f"{error} at step {step + 1}; the last good state (step {step}) is saved in {saved}: rerun "
                     f"with other settings and --resume_from_checkpoint {saved}")


def interrupted_message(trainer) -> str:
    """``interrupted at step N; last checkpoint …; resume with …`` for a Ctrl-C during training."""
    last = checkpoint_folders(trainer.args.output_dir)
    if not last:
        return (f"tokenweight: interrupted at step {trainer.state.global_step}; no checkpoint was saved "
                "(--save_strategy steps --save_steps N saves them); nothing to resume from")
    return (f"tokenweight: interrupted at step {trainer.state.global_step}; last checkpoint {last[-1]}; resume "
            f"with the same command and --resume_from_checkpoint {last[-1]}")
