"""What a checkpoint records about its run, and the checks of a resume against it.

Every checkpoint is sealed with the run's record (:func:`run_record`): the settings that define the trained model
(:data:`FIXED`, the scheme's own settings, β), the settings that may change on a resume when asked for
(:data:`CHANGEABLE`), and a fingerprint of the training data (its rows after tokenization and truncation, and the
tokenizer). A resume compares the checkpoint's record with the run's now (:func:`resume_changes`): a differing fixed
setting or data is a one-line error naming each key with both values; a differing changeable setting must be named
in ``--resume_changes`` and is then applied (the learning rate to the restored optimizer and scheduler,
:class:`ApplyResumeChanges`) and recorded in ``results.json``. Changed data is a changeable setting too (a row fixed
after a non-finite loss named it), never silently.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

from transformers import TrainerCallback

from tokenweight.errors import UserError

#: Settings a resumed run must share with its checkpoint (besides β, the scheme's settings and the data).
FIXED = ("weighting", "loss_type", "label_smoothing", "use_weighting", "max_length", "max_prompt_length",
         "swap_pairs", "per_device_train_batch_size", "gradient_accumulation_steps", "seed", "optim",
         "lr_scheduler_type", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "warmup_steps",
         "use_peft", "lora_r", "lora_alpha", "lora_dropout")
#: Settings a resume may change when ``--resume_changes`` names them: applied from the resumed step on (``data``:
#: the training rows, e.g. a row fixed after a non-finite loss named it).
CHANGEABLE = ("learning_rate", "max_grad_norm", "max_steps", "num_train_epochs", "data")


def _plain(value):
    """``value`` as JSON would give it back (tuples become lists …), so that stored and current values compare."""
    return json.loads(json.dumps(value, default=str))


def data_fingerprint(train, tokenizer) -> dict:
    """``{"rows": N, "digest": …}`` of the tokenized training split (every column of every row, in order: ids after
    truncation, weight columns) and the tokenizer's vocabulary, special tokens and chat template."""
    from tokenweight.fingerprint import tokenizer_fingerprint

    rows = hashlib.sha256()
    for row in train:
        rows.update(json.dumps(row, sort_keys=True, default=str).encode())
    return {"rows": len(train), "digest": rows.hexdigest()[:16], "tokenizer": tokenizer_fingerprint(tokenizer)[:16]}


def run_record(config, train, tokenizer) -> dict:
    """The record sealed into each checkpoint of the run: ``{"fixed": {...}, "changeable": {...}, "data": {...}}``."""
    from tokenweight.weights import SCHEMES

    settings_class = SCHEMES[config.weighting].settings_class
    scheme_keys = [item.name for item in dataclasses.fields(settings_class)] if settings_class else []
    fixed = {key: getattr(config, key) for key in (*FIXED, *scheme_keys)}
    fixed["beta"] = config.effective_beta
    return _plain({"fixed": fixed, "changeable": {key: getattr(config, key) for key in CHANGEABLE if key != "data"},
                   "data": data_fingerprint(train, tokenizer)})


def resume_changes(checkpoint: str, stored: dict | None, now: dict, allowed: list[str]) -> dict:
    """The changeable settings that differ from the checkpoint's record ``stored``, as ``{key: {"checkpoint": old,
    "now": new}}``. Raises :class:`UserError` naming ``checkpoint`` and every differing key with both values when a
    fixed setting or the data differ, or a changeable one differs without being in ``allowed``, or ``allowed``
    names a setting that does not differ."""
    if stored is None:
        raise UserError(f"--resume_from_checkpoint {checkpoint}: the checkpoint records no run settings (it was not "
                        "saved by tokenweight train); resume it from Python with TokenweightTrainer.train")
    def differing(part):
        return {key: (stored[part].get(key), value) for key, value in now[part].items()
                if stored[part].get(key) != value}

    fixed = differing("fixed")
    changeable = differing("changeable")
    if stored["data"] != now["data"]:
        changeable["data"] = (stored["data"], now["data"])
    refused = {**fixed, **{key: change for key, change in changeable.items() if key not in allowed}}
    if refused:
        listed = "; ".join(f"{key}: checkpoint {old} vs now {new}" for key, (old, new) in refused.items())
        allowed_hint = [key for key in refused if key in changeable]
        hint = (f"; pass --resume_changes {' '.join(allowed_hint)} to apply the new value(s) from the resumed step on"
                if allowed_hint and len(allowed_hint) == len(refused) else
                "; resume with the checkpoint's settings and data, or start a new run")
        raise UserError(f"--resume_from_checkpoint {checkpoint}: the run differs from the checkpoint's: {listed}"
                        f"{hint}")
    unchanged = [key for key in allowed if key not in changeable]
    if unchanged:
        raise UserError(f"config key `resume_changes` names {', '.join(unchanged)}, which the run does not change "
                        f"(the checkpoint {checkpoint} has the same value)")
    return {key: {"checkpoint": old, "now": new} for key, (old, new) in changeable.items()}


def check_resume_changes_setting(config) -> None:
    """Refuse ``resume_changes`` keys outside :data:`CHANGEABLE`, and ``resume_changes`` without a resume."""
    if not config.resume_changes:
        return
    unknown = [key for key in config.resume_changes if key not in CHANGEABLE]
    if unknown:
        raise UserError(f"config key `resume_changes`: {', '.join(unknown)} cannot change on a resume (it may: "
                        f"{', '.join(CHANGEABLE)})")
    if config.resume_from_checkpoint in (None, "", "false", "False"):
        raise UserError("config key `resume_changes` needs --resume_from_checkpoint (it changes a resumed run)")


class ApplyResumeChanges(TrainerCallback):
    """Set a changed ``learning_rate`` in the restored optimizer and scheduler when training begins (after the
    Trainer loaded their states from the checkpoint): every param group's ``lr`` and ``initial_lr`` and the
    scheduler's ``base_lrs`` are scaled by new/old, so the schedule continues from the resumed step at the new
    rate. ``max_grad_norm``, ``max_steps`` and ``num_train_epochs`` are read from the arguments and need nothing."""

    def __init__(self, changes: dict):
        self.changes = changes

    def on_train_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
        change = self.changes.get("learning_rate")
        if change is None:
            return
        scale = change["now"] / change["checkpoint"]
        for group in optimizer.param_groups:
            group["lr"] *= scale
            if "initial_lr" in group:
                group["initial_lr"] *= scale
        if hasattr(lr_scheduler, "base_lrs"):
            lr_scheduler.base_lrs = [rate * scale for rate in lr_scheduler.base_lrs]
        if hasattr(lr_scheduler, "_last_lr"):
            lr_scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
