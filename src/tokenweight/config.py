"""The run configuration: every ``transformers.TrainingArguments`` flag plus tokenweight's own.

Names follow TRL's ``DPOConfig`` where the meaning is the same (``beta``, ``loss_type``, ``label_smoothing``,
``max_length``, ``max_prompt_length``). ``TokenweightConfig`` is :class:`CoreConfig` composed with the settings
dataclass of every registered scheme (:func:`config_class`): the schemes' fields (``otpo_reg`` …) are defined and
checked in the schemes' own folders under ``weights/``, never here.

:class:`ConfigArgumentParser` is the ``tokenweight train`` parser: HfArgumentParser's flags, shown in the groups of
:data:`FLAG_GROUPS` and one group per scheme with settings, with errors raised as
:class:`~tokenweight.errors.UserError`.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import math
import os
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_type_hints

import torch
from transformers import HfArgumentParser, TrainingArguments

from tokenweight.errors import UserError
from tokenweight.models import model_context
from tokenweight.objectives import LOSS_TYPES
from tokenweight.sources import looks_like_local_path

#: ``max_length`` when none is given: this, or the model's context when that is shorter.
DEFAULT_MAX_LENGTH = 1024
#: Suffixes of the data files a local dataset can be (a name ending so is a path, never a hub id).


@dataclass
class CoreConfig(TrainingArguments):
    """Every ``TrainingArguments`` flag plus tokenweight's own, without the schemes' settings (see
    :func:`config_class`)."""

    # ---------------------------------------------------------------- model and data
    model_name_or_path: str | None = field(default=None, metadata={
        "help": "Policy model (hub id or local folder). Default: the built-in KeyFact tiny model."})
    ref_model_name_or_path: str | None = field(default=None, metadata={
        "help": "Frozen reference model. Default: a fresh copy loaded from model_name_or_path."})
    model_dtype: str = field(default="auto", metadata={
        "help": "dtype to load the models in: auto, float32, bfloat16 or float16."})
    fp32_master_weights: bool = field(default=True, metadata={
        "help": "Train the policy's parameters in float32 whatever model_dtype loaded them in (the reference and "
                "a LoRA base stay in model_dtype); --bf16/--fp16 then compute in half precision through autocast. "
                "false: train them in model_dtype (pure bfloat16: less memory, but an update smaller than the "
                "weights' precision rounds away; a warning says when learning_rate is that small)."})
    attn_implementation: str | None = field(default=None, metadata={
        "help": "Attention kernel passed to from_pretrained (sdpa, eager, flash_attention_2)."})
    use_peft: bool = field(default=False, metadata={
        "help": "Train LoRA adapters instead of the full policy (the reference stays a separate frozen copy)."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling α."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] | None = field(default=None, metadata={
        "help": "Module names that get adapters (default: all linear layers but the output head)."})
    dataset_name: str | None = field(default=None, metadata={
        "help": "Preference data: hub id, local .json/.jsonl/.parquet/.csv file or folder. "
                "Default: the built-in KeyFact task."})
    dataset_split: str = field(default="train", metadata={"help": "Split used for training."})
    eval_split: str | None = field(default=None, metadata={"help": "Split used for evaluation (none: no eval)."})
    eval_fraction: float | None = field(default=None, metadata={
        "help": "Hold out this fraction of the training split for evaluation (seeded by `seed`, disjoint; the "
                "row indices go to results.json). For a single file, which has only the split 'train'."})
    max_length: int | None = field(default=None, metadata={
        "help": f"Max tokens of prompt + completion; completions are cut on the right, rows whose prompt fills "
                f"it are dropped (counted). Default: min({DEFAULT_MAX_LENGTH}, the model's context); a larger "
                f"value is an error."})
    max_prompt_length: int | None = field(default=None, metadata={
        "help": "Max prompt tokens; longer prompts keep their last tokens."})
    swap_pairs: bool = field(default=False, metadata={
        "help": "Exchange chosen and rejected in every split at load time (TIS-DPO's negative model: DPO on the "
                "swapped pairs); the count is printed and written to results.json (swapped_pairs)."})
    # ---------------------------------------------------------------- objective
    weighting: str = field(default="uniform", metadata={
        "help": "Token-weighting scheme (uniform: plain DPO)."})
    beta: float | None = field(default=None, metadata={
        "help": "DPO temperature β. Default: the scheme's (0.1; TI-DPO: the preset's; SimPO 2.0; ConfPO 1.5); an "
                "explicit value wins."})
    loss_type: str = field(default="sigmoid", metadata={
        "help": "Pair loss: sigmoid (DPO), ipo or hinge (SimPO: sigmoid or hinge; ConfPO: sigmoid)."})
    label_smoothing: float = field(default=0.0, metadata={"help": "cDPO label smoothing (sigmoid loss only)."})
    use_weighting: bool = field(default=False, metadata={
        "help": "WPO pair weighting (TRL's name): scale each pair's loss by the product of the policy's "
                "length-normalised probabilities of its two responses (arXiv 2406.11827); with any scheme."})
    wpo_clamp: bool = field(default=True, metadata={
        "help": "WPO: clamp each pair's weight at 1, as the authors' run_wpo.py (default); false: TRL 1.16's "
                "unclamped weight, which exceeds 1 on completions the policy itself would sample."})
    router_aux_loss_coef: float | None = field(default=None, metadata={
        "help": "Mixture-of-experts models (config with output_router_logits): weight of the router's "
                "load-balancing loss added to the loss and logged as aux_loss, as TRL adds it (default: the model "
                "config's router_aux_loss_coef; 0 turns it off)."})
    precompute_ref_log_probs: bool = field(default=False, metadata={
        "help": "Score the data once with the reference before training and free it (not with TI-DPO's KL term, "
                "nor with a reference-free scheme)."})
    ref_log_probs: str | None = field(default=None, metadata={
        "help": "Folder of cached reference log-probs (`tokenweight precompute reference --output DIR`): no "
                "reference model is loaded; the cache must match the model, tokenizer, data and lengths."})
    precompute_ref_batch_size: int | None = field(default=None, metadata={
        "help": "Pairs per reference forward of the precompute (default: per_device_eval_batch_size)."})
    overwrite_output_dir: bool = field(default=False, metadata={
        "help": "Replace a previous run in output_dir: it is moved aside once model, data and settings are "
                "checked, deleted once the new run has saved, put back if it fails before; without it, a "
                "non-empty output_dir is refused unless resume_from_checkpoint is given."})
    resume_changes: list[str] | None = field(default=None, metadata={
        "help": "Settings a resumed run changes on purpose (learning_rate, max_grad_norm, max_steps, "
                "num_train_epochs, data: the training rows): applied from the resumed step on and recorded in results.json; any other "
                "difference from the checkpoint is refused."})
    disable_dropout: bool = field(default=True, metadata={"help": "Turn dropout off in policy and reference."})
    logps_chunk_size: int = field(default=1024, metadata={
        "help": "Tokens per tile of the output head (with logps_vocab_chunk_size: at most one tokens × vocabulary "
                "fp32 tile of logits at a time, forward and backward; smaller: less memory)."})
    logps_vocab_chunk_size: int = field(default=8192, metadata={
        "help": "Vocabulary entries per tile of the output head (default tile 1024 × 8192 fp32: 32 MiB)."})
    padding_free: bool = field(default=False, metadata={
        "help": "Concatenate the rows of a batch into one sequence without padding, position ids restarting per "
                "row, attention kept within each row (refused for a model that cannot keep packed rows apart)."})
    def __post_init__(self):
        check_finite(self)
        if self.output_dir is None:
            self.output_dir = "outputs/tokenweight"
        self.remove_unused_columns = False
        super().__post_init__()
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise UserError(f"config key `num_train_epochs` must be positive, got {self.num_train_epochs:g} (or set "
                            "max_steps): the run would train 0 steps")
        if self.dataloader_pin_memory and not accelerator_available():
            self.dataloader_pin_memory = False  # nothing to pin for; torch would warn on every dataloader
        if self.loss_type not in LOSS_TYPES:
            raise UserError(f"config key `loss_type`: {self.loss_type!r} is not one of {', '.join(LOSS_TYPES)}")
        if self.label_smoothing and self.loss_type != "sigmoid":
            raise UserError("config key `label_smoothing`: only supported with loss_type=sigmoid")
        if not 0 <= self.label_smoothing < 0.5:
            raise UserError("config key `label_smoothing` must be in [0, 0.5)")
        if self.beta is not None and self.beta <= 0:
            raise UserError("config key `beta` must be positive")
        for key in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                    "max_length", "max_prompt_length", "logps_chunk_size", "logps_vocab_chunk_size"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise UserError(f"config key `{key}` must be at least 1, got {value}")
        from tokenweight.weights import SCHEMES
        if self.weighting not in SCHEMES:
            raise UserError(f"config key `weighting`: unknown scheme {self.weighting!r}; "
                            f"choose one of {', '.join(sorted(SCHEMES))}")
        check_scheme_objective(SCHEMES[self.weighting], self)
        for key in ("dataset_name", "model_name_or_path", "ref_model_name_or_path"):
            check_local_path(key, getattr(self, key))
        from tokenweight.run_record import check_resume_changes_setting
        check_resume_changes_setting(self)

    @property
    def head_tiling(self):
        """The output head's :class:`~tokenweight.tiled_head.Tiling` (``logps_chunk_size × logps_vocab_chunk_size``)."""
        from tokenweight.tiled_head import Tiling
        return Tiling(tokens=self.logps_chunk_size, vocab=self.logps_vocab_chunk_size)

    @property
    def effective_beta(self) -> float:
        """β of the run: the explicit value, else the scheme's default (TI-DPO: its preset's; most: 0.1)."""
        if self.beta is not None:
            return self.beta
        from tokenweight.weights import SCHEMES
        return SCHEMES[self.weighting].default_beta(self)


def check_finite(config) -> None:
    """Refuse a NaN or infinite value in any float setting (lists too), naming the first such config key: every
    check after this one compares numbers, and NaN passes every comparison."""
    for item in dataclasses.fields(config):
        value = getattr(config, item.name, None)
        if any(isinstance(v, float) and not math.isfinite(v) for v in (value if isinstance(value, list) else [value])):
            raise UserError(f"config key `{item.name}` must be a finite number, got {value}")


def check_scheme_keys(weighting: str, set_keys: dict[str, str]) -> None:
    """Refuse the settings of a scheme other than ``weighting`` among ``set_keys`` (the keys the user set, each
    with where: ``--flag`` or ``recipe PATH``): they would do nothing. One rule for every scheme, from the schemes'
    declared settings classes."""
    from tokenweight.weights import SCHEMES

    def keys(name: str) -> set[str]:
        settings_class = SCHEMES[name].settings_class
        return {item.name for item in dataclasses.fields(settings_class)} if settings_class else set()

    own = keys(weighting)
    for key, where in set_keys.items():
        owners = [name for name in sorted(SCHEMES) if key in keys(name)]
        if owners and key not in own:
            raise UserError(f"{where}: `{key}` is a setting of --weighting {' / '.join(owners)}, but the run uses "
                            f"--weighting {weighting}, which does not read it; drop it")


#: Each way a reference reaches a reference-free scheme (a config key, or what a caller passes) -> the exception and
#: the message that refuses it (``{name}``: the scheme's name).
REFERENCE_REFUSALS = {
    "ref_model_name_or_path": (UserError, "config key `ref_model_name_or_path`: weighting={name} is reference-free (no "
                                          "reference model is loaded); drop the setting"),
    "precompute_ref_log_probs": (UserError, "config key `precompute_ref_log_probs`: weighting={name} is "
                                            "reference-free (no reference model is loaded or scored); drop the "
                                            "setting"),
    "ref_log_probs": (UserError, "config key `ref_log_probs`: weighting={name} is reference-free (no reference model "
                                 "is loaded or scored); drop the setting"),
    "precompute reference": (UserError, "precompute reference: weighting={name} is reference-free; its training "
                                        "reads no reference log-probs"),
    "trainer ref_model": (ValueError, "weighting={name!r} is reference-free: pass ref_model=None (a reference model "
                                      "would only take memory)"),
    "held-out ref_model": (ValueError, "weighting={name!r} is reference-free: its held-out metrics take no reference "
                                       "model"),
}
#: The config keys that give a run a reference whatever the command (``ref_model_name_or_path`` is also the
#: reference of ``eval``'s implicit reward, so only ``train`` refuses it).
REFERENCE_SETTINGS = ("precompute_ref_log_probs", "ref_log_probs")


def check_scheme_objective(scheme, config=None, given: tuple[str, ...] = ()) -> None:
    """The one check of a scheme (class or instance) against the run's objective, which the config, every command,
    the trainer and held-out evaluation call: the config's ``loss_type`` must be one the scheme supports, and a
    reference-free scheme (``uses_reference = False``) takes no reference — neither the config's
    :data:`REFERENCE_SETTINGS` nor any of ``given``, the ways the caller gives one (keys of
    :data:`REFERENCE_REFUSALS`). Raises the refusal's :class:`UserError` (a setting) or ``ValueError`` (an argument
    passed in code)."""
    if config is not None:
        scheme.check_loss_type(config.loss_type)
    if scheme.uses_reference:
        return
    uses = [key for key in REFERENCE_SETTINGS if config is not None and getattr(config, key)] + list(given)
    if uses:
        error, message = REFERENCE_REFUSALS[uses[0]]
        raise error(message.format(name=scheme.name))


def task_settings_class() -> type:
    """The built-in task's settings dataclass (:class:`~tokenweight.keyfact.settings.KeyfactSettings`), composed
    into the run configuration as the schemes' settings are; its ``help_group`` titles its flags in ``--help``."""
    from tokenweight.keyfact.settings import KeyfactSettings

    return KeyfactSettings


def config_class() -> type:
    """``TokenweightConfig``: a dataclass of :class:`CoreConfig`, the built-in task's settings
    (:func:`task_settings_class`) and the settings dataclass of every registered scheme (``settings_class``), so
    that each one's fields are config keys, flags and recipe keys without this module naming them. Its
    ``__post_init__`` runs :class:`CoreConfig`'s checks, then each settings class's.

    The class is built once per set of settings classes: a scheme registered later (a plugin) gets a new class,
    which the ``train`` parser uses; ``tokenweight.config.TokenweightConfig`` is always the current one.

    Raises:
        TypeError: two settings classes, or a settings class and :class:`CoreConfig`, define the same field.
    """
    from tokenweight.weights import SCHEMES

    settings_classes = (task_settings_class(), *dict.fromkeys(SCHEMES[name].settings_class for name in sorted(SCHEMES)
                                                              if SCHEMES[name].settings_class is not None))
    if settings_classes not in _COMPOSED:
        _COMPOSED[settings_classes] = _compose(settings_classes)
    return _COMPOSED[settings_classes]


_COMPOSED: dict[tuple[type, ...], type] = {}
CONFIG_DOC = """The run configuration: :class:`CoreConfig` (every ``TrainingArguments`` flag plus tokenweight's own),
the built-in task's settings and the settings of every registered scheme (built by :func:`config_class`)."""


def _compose(settings_classes: tuple[type, ...]) -> type:
    owner = {item.name: CoreConfig.__name__ for item in dataclasses.fields(CoreConfig)}
    for settings_class in settings_classes:
        for item in dataclasses.fields(settings_class):
            if item.name in owner:
                raise TypeError(f"config key `{item.name}` is defined twice, by {owner[item.name]} and by "
                                f"{settings_class.__name__}; prefix a scheme's settings with the scheme's name")
            owner[item.name] = settings_class.__name__

    def __post_init__(self):
        CoreConfig.__post_init__(self)
        for settings_class in settings_classes:
            if hasattr(settings_class, "__post_init__"):
                settings_class.__post_init__(self)

    # Bases in this order put the fields in the order TrainingArguments, CoreConfig, then each settings class's.
    return dataclasses.make_dataclass("TokenweightConfig", [], bases=(*reversed(settings_classes), CoreConfig),
                                      namespace={"__post_init__": __post_init__, "__module__": __name__,
                                                 "__doc__": CONFIG_DOC})


def __getattr__(name: str):
    """``TokenweightConfig`` is looked up here, so that it always includes the schemes registered so far."""
    if name == "TokenweightConfig":
        return config_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def accelerator_available() -> bool:
    """True when torch sees an accelerator (CUDA, MPS, XPU …) that pinned host memory could feed."""
    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6
    return accelerator.is_available() if accelerator is not None else torch.cuda.is_available()



def check_local_path(key: str, name: str | None) -> None:
    """Refuse a ``name`` that looks like a local path (:func:`looks_like_local_path`) but does not exist, before
    the hub is asked for it (which retries for half a minute)."""
    if name is not None and looks_like_local_path(name) and not Path(os.path.expanduser(name)).exists():
        raise UserError(f"config key `{key}`: {name} does not exist (looked in {Path.cwd()})")


def resolve_max_length(max_length: int | None, model_path: str) -> int:
    """``max_length`` checked against the model's context: ``None`` becomes min(:data:`DEFAULT_MAX_LENGTH`,
    context); a value above the context is a :class:`UserError` naming both numbers."""
    context = model_context(model_path)
    if context is None:
        if max_length is None:
            raise UserError(f"the config of {model_path} states no context length (max_position_embeddings); "
                            f"set --max_length")
        return max_length
    if max_length is None:
        return min(DEFAULT_MAX_LENGTH, context)
    if max_length > context:
        raise UserError(f"config key `max_length`: {max_length} is more than the {context} positions of "
                        f"{model_path}; set --max_length {context} or less")
    return max_length


#: ``tokenweight train --help`` groups: title -> config keys. Each registered scheme with settings also gets a group
#: of its settings' fields, and the built-in task one of its own (its ``help_group``); other tokenweight keys go
#: under "objective", the rest under the last title.
FLAG_GROUPS = {
    "model": ("model_name_or_path", "ref_model_name_or_path", "model_dtype", "fp32_master_weights",
              "attn_implementation", "use_peft",
              "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules"),
    "data": ("dataset_name", "dataset_split", "eval_split", "max_length", "max_prompt_length", "swap_pairs"),
    "objective": (),
}
TRAINING_ARGUMENTS_GROUP = "all transformers.TrainingArguments"


def scheme_setting_owners() -> dict[str, str]:
    """Each scheme setting's config key -> the first scheme (by name) whose settings class defines it: the flags of
    one ``--help`` group (``train``, ``eval``, ``weights`` and ``precompute`` all take them)."""
    from tokenweight.weights import SCHEMES

    owners = {}
    for name in sorted(SCHEMES, reverse=True):
        if SCHEMES[name].settings_class is not None:
            owners.update({item.name: name for item in dataclasses.fields(SCHEMES[name].settings_class)})
    return owners


def scheme_group_title(name: str) -> str:
    return f"{name} (--weighting {name})"


def add_scheme_flags(parser: argparse.ArgumentParser) -> list[str]:
    """Add every scheme setting as a flag of ``parser`` (as ``tokenweight train`` has them: same names, types, help
    and groups), without defaults: only the flags given appear in the parsed namespace. Returns their config keys."""
    owners = scheme_setting_owners()
    hints = get_type_hints(config_class())
    groups = {name: parser.add_argument_group(scheme_group_title(name)) for name in sorted(set(owners.values()))}
    for item in dataclasses.fields(config_class()):
        if item.name in owners:
            item = copy.copy(item)
            item.type = hints[item.name]
            group = groups[owners[item.name]]
            before = len(group._group_actions)
            HfArgumentParser._parse_dataclass_field(group, item)
            for action in group._group_actions[before:]:
                action.default = argparse.SUPPRESS
    return list(owners)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults after each flag's help; the description and the examples kept as written."""


def _convert(action: argparse.Action, value):
    """One recipe value converted by the flag's ``action`` (its type on the value's text, element by element for a
    list flag); raises ``ValueError`` for a value the flag would refuse."""
    many = action.nargs in ("+", "*")
    if isinstance(value, dict) or (isinstance(value, list) and not many):
        raise ValueError(f"expected a single {getattr(action.type, '__name__', 'value')}")
    items = value if isinstance(value, list) else [value]
    if value is None or any(isinstance(item, (list, dict)) or item is None for item in items):
        raise ValueError("expected a value")
    items = [action.type(str(item)) if action.type is not None else item for item in items]
    if action.choices is not None and any(item not in action.choices for item in items):
        raise ValueError(f"choose from {', '.join(map(str, action.choices))}")
    return items if many else items[0]


class ConfigArgumentParser(HfArgumentParser):
    """HfArgumentParser of the current ``TokenweightConfig`` (:func:`config_class`; parsing unchanged) whose
    ``--help`` shows the flags in the groups of :data:`FLAG_GROUPS` and one group per scheme with settings, lists
    the registered schemes as ``--weighting`` choices, and whose errors are :class:`UserError` s."""

    def __init__(self, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(config_class(), **kwargs)

    def _add_dataclass_arguments(self, dtype) -> None:
        from tokenweight.weights import SCHEMES

        type_hints = get_type_hints(dtype)
        scheme_of = scheme_setting_owners()
        groups = {title: self.add_argument_group(title) for title in FLAG_GROUPS}
        groups.update({name: self.add_argument_group(scheme_group_title(name)) for name in sorted(set(scheme_of.values()))})
        task = task_settings_class()
        groups[task.help_group] = self.add_argument_group(task.help_group)
        groups[TRAINING_ARGUMENTS_GROUP] = self.add_argument_group(TRAINING_ARGUMENTS_GROUP)
        inherited = {f.name for f in dataclasses.fields(TrainingArguments)}
        for item in dataclasses.fields(dtype):
            if not item.init:
                continue
            item.type = type_hints[item.name]
            if item.name == "weighting":
                item = copy.copy(item)
                item.metadata = types.MappingProxyType({**item.metadata, "choices": sorted(SCHEMES)})
            self._parse_dataclass_field(groups[self._group_of(item.name, inherited, scheme_of, task)], item)

    @staticmethod
    def _group_of(key: str, inherited: set[str], scheme_of: dict[str, str], task: type) -> str:
        titled = [title for title, keys in FLAG_GROUPS.items() if key in keys]
        if titled:
            return titled[0]
        if key in scheme_of:
            return scheme_of[key]
        if key in task.__dataclass_fields__:
            return task.help_group
        return TRAINING_ARGUMENTS_GROUP if key in inherited else "objective"

    def error(self, message: str):
        raise UserError(f"{message} (see `{self.prog} --help`)")

    def recipe_defaults(self, path: str, values: dict) -> dict:
        """The recipe's ``values`` converted and checked as the flags' strings would be (type, list or single value,
        choices): a value of the wrong type is a :class:`UserError` naming the recipe file and key. A mapping for a
        field typed as one (``activation_checkpointing_kwargs``) is kept as it is."""
        converted = {}
        mappings = {name for name, hint in get_type_hints(self.dataclass_types[0]).items() if "dict" in str(hint)}
        for key, value in values.items():
            action = self._option_string_actions.get(f"--{key}")
            if action is None or (value is None and action.default is None) or (isinstance(value, dict)
                                                                               and key in mappings):
                converted[key] = value
                continue
            try:
                converted[key] = _convert(action, value)
            except (TypeError, ValueError, argparse.ArgumentTypeError) as error:
                raise UserError(f"recipe {path}: key `{key}`: {value!r} is not a valid value ({error})") from None
        return converted

    def parse_config(self, args: list[str]):
        """The config of ``args``; an unknown flag is a :class:`UserError` naming it (and the closest known one),
        and so is a setting that ``TrainingArguments`` rejects."""
        try:
            config, unknown = self.parse_args_into_dataclasses(args=args, return_remaining_strings=True)
        except ValueError as error:
            raise UserError(str(error)) from error
        if unknown:
            flags = [word for word in unknown if word.startswith("-")]
            known = [f"--{item.name}" for item in dataclasses.fields(self.dataclass_types[0])]
            close = difflib.get_close_matches(flags[0], known, n=1) if flags else []
            hint = f"; did you mean {close[0]}?" if close else ""
            raise UserError(f"unrecognized arguments: {' '.join(unknown)}{hint}")
        return config
