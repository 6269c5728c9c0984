"""A training run's checkpoints: sealed when complete, chosen only when complete, the last good state saved.

Every ``checkpoint-<step>`` folder tokenweight saves is sealed last by :data:`RECORD` (``tokenweight_checkpoint.json``:
the size of every file in it, and the run's record of settings and data, see :mod:`tokenweight.run_record`). A folder
without it, or whose files do not have the recorded sizes, is incomplete (a save killed or failed half way):
``--resume_from_checkpoint true`` skips it and names it, an explicit path to it is a one-line error naming the file.

``tokenweight train`` never writes into a folder that holds a previous run unless asked: ``--overwrite_output_dir
true`` replaces it (:mod:`tokenweight.run_folder`), ``--resume_from_checkpoint PATH|true`` continues it. A non-finite
loss saves the state before the failing update so the run can be resumed; Ctrl-C and SIGTERM name the checkpoint to
resume from.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from tokenweight.cache_files import write_atomic
from tokenweight.errors import UserError

#: Files that only a (partly) finished run leaves in its output folder.
RUN_FILES = ("results.json", "trainer_state.json", "training_args.bin", "model.safetensors",
             "model.safetensors.index.json", "pytorch_model.bin", "adapter_model.safetensors")
TRAINER_STATE = "trainer_state.json"
#: The file that seals a complete checkpoint (written last).
RECORD = "tokenweight_checkpoint.json"
RECORD_FORMAT = "tokenweight-checkpoint-1"


def checkpoint_folders(output_dir: str | Path) -> list[Path]:
    """The ``checkpoint-<step>`` folders in ``output_dir``, by step."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def seal_checkpoint(path: str | Path, run: dict | None) -> None:
    """Write :data:`RECORD` into the checkpoint folder ``path``: every file's size (relative path -> bytes) and
    ``run`` (the run's settings and data record, ``None`` when the trainer was built without one)."""
    folder = Path(path)
    files = {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))
             if p.is_file() and p.name != RECORD and not p.name.startswith(f".{RECORD}.tmp")}
    write_atomic(folder / RECORD, json.dumps({"format": RECORD_FORMAT, "files": files, "run": run},
                                             indent=1).encode())


def checkpoint_problem(path: str | Path) -> str | None:
    """``None`` for a complete checkpoint folder, else what is wrong with it, naming the file."""
    folder = Path(path)
    try:
        record = json.loads((folder / RECORD).read_text())
    except FileNotFoundError:
        return f"no {RECORD}: its save did not finish"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return f"{RECORD} is damaged"
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT or not isinstance(record.get("files"),
                                                                                                 dict):
        return f"{RECORD} is damaged"
    for name, size in record["files"].items():
        file = folder / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != size:
            return f"{name} is damaged ({file.stat().st_size} bytes, {size} were written)"
    return None


def read_run_record(path: str | Path) -> dict | None:
    """The run record sealed into the complete checkpoint ``path`` (see :func:`seal_checkpoint`)."""
    return json.loads(Path(path, RECORD).read_text()).get("run")


def last_complete_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder in ``output_dir`` (``None``: none)."""
    return next((p for p in reversed(checkpoint_folders(output_dir)) if checkpoint_problem(p) is None), None)


def resolve_resume(resume_from_checkpoint: str | None, output_dir: str) -> str | None:
    """The checkpoint folder to resume from: ``PATH``, or ``true`` for the newest complete one in ``output_dir``
    (each newer incomplete one is named on stderr); ``None`` (or ``false``) starts fresh. A missing, incomplete or
    damaged folder is a :class:`UserError` naming what is wrong."""
    if resume_from_checkpoint is None or resume_from_checkpoint.lower() in ("", "false"):
        return None
    if resume_from_checkpoint.lower() == "true":
        for folder in reversed(checkpoint_folders(output_dir)):
            problem = checkpoint_problem(folder)
            if problem is None:
                return str(folder)
            print(f"tokenweight: --resume_from_checkpoint true: skipping incomplete {folder} ({problem})",
                  file=sys.stderr)
        raise UserError(f"--resume_from_checkpoint true: no complete {PREFIX_CHECKPOINT_DIR}-* folder in output_dir "
                        f"{output_dir}")
    path = Path(resume_from_checkpoint)
    if not path.is_dir():
        raise UserError(f"--resume_from_checkpoint {resume_from_checkpoint}: no such checkpoint folder")
    problem = checkpoint_problem(path)
    if problem is not None:
        raise UserError(f"--resume_from_checkpoint {resume_from_checkpoint}: not a complete checkpoint ({problem})")
    return str(path)


def previous_run(output_dir: str) -> list[str]:
    """The names of the previous run's files and ``checkpoint-*`` folders in ``output_dir`` (empty: none)."""
    folder = Path(output_dir)
    return [name for name in RUN_FILES if (folder / name).exists()] + [p.name for p in checkpoint_folders(folder)]


def check_output_dir(output_dir: str, overwrite: bool, resuming: bool) -> list[str]:
    """Refuse an ``output_dir`` holding a previous run unless ``overwrite`` or ``resuming``; returns what
    ``--overwrite_output_dir`` is to replace (empty when resuming or the folder holds no run)."""
    found = previous_run(output_dir)
    if not found or resuming:
        return []
    if not overwrite:
        raise UserError(f"output_dir {output_dir} holds a previous run ({', '.join(found)}); pass "
                        "--overwrite_output_dir true to replace it, or --resume_from_checkpoint true to continue it")
    return found


def save_last_good_state(trainer) -> str:
    """Save the trainer's current state (model, optimizer, scheduler, RNG, trainer state) as
    ``output_dir/checkpoint-<global step>``, unless that checkpoint is complete already; returns its path."""
    path = Path(trainer.args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{trainer.state.global_step}")
    if checkpoint_problem(path) is not None:
        trainer._save_checkpoint(trainer.model, trial=None)
    return str(path)


def non_finite_error(trainer, error: FloatingPointError) -> UserError:
    """The one-line error of a non-finite loss or weight at the step being computed, after saving the state
    before that step's update. Its advice works as written (``tests/test_workflows_failures.py``): fixed rows are a
    change of data, a lower learning rate one of ``learning_rate``, each applied when named in ``--resume_changes``
    (the update before the failing step may be the culprit, hence "or an earlier checkpoint")."""
    step = trainer.state.global_step
    saved = save_last_good_state(trainer)
    return UserError(f"{error} at step {step + 1}; the last good state (step {step}) is saved in {saved}: fix the "
                     f"rows and resume with --resume_from_checkpoint {saved} --resume_changes data, or lower "
                     "--learning_rate and resume from it or an earlier checkpoint with --resume_changes learning_rate")


def stopped_message(trainer, how: str) -> str:
    """``<how> at step N; last checkpoint …; resume with …`` for a run stopped by Ctrl-C or a signal."""
    last = last_complete_checkpoint(trainer.args.output_dir)
    if last is None:
        return (f"tokenweight: {how} at step {trainer.state.global_step}; no checkpoint was saved "
                "(--save_strategy steps --save_steps N saves them); nothing to resume from")
    return (f"tokenweight: {how} at step {trainer.state.global_step}; last checkpoint {last}; resume "
            f"with the same command and --resume_from_checkpoint {last}")
