"""The run configuration: every ``transformers.TrainingArguments`` flag plus tokenweight's own.

Names follow TRL's ``DPOConfig`` where the meaning is the same (``beta``, ``loss_type``, ``label_smoothing``,
``max_length``, ``max_prompt_length``). Scheme settings carry the scheme's prefix (``otpo_``, ``tidpo_``,
``attention_``). TI-DPO settings left at ``None`` come from the chosen ``tidpo_preset``.

:class:`ConfigArgumentParser` is the ``tokenweight train`` parser: HfArgumentParser's flags, shown in the groups of
:data:`FLAG_GROUPS`, with errors raised as :class:`~tokenweight.errors.UserError`.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import os
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_type_hints

import torch
from transformers import HfArgumentParser, TrainingArguments

from tokenweight.errors import UserError

#: ``max_length`` when none is given: this, or the model's context when that is shorter.
DEFAULT_MAX_LENGTH = 1024
#: Suffixes of the data files a local dataset can be (a name ending so is a path, never a hub id).
DATA_FILE_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv")


@dataclass
class TokenweightConfig(TrainingArguments):
    # ---------------------------------------------------------------- model and data
    model_name_or_path: str | None = field(default=None, metadata={
        "help": "Policy model (hub id or local folder). Default: the built-in KeyFact tiny model."})
    ref_model_name_or_path: str | None = field(default=None, metadata={
        "help": "Frozen reference model. Default: a fresh copy loaded from model_name_or_path."})
    model_dtype: str = field(default="auto", metadata={
        "help": "dtype to load the models in: auto, float32, bfloat16 or float16."})
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
    # ---------------------------------------------------------------- objective
    weighting: str = field(default="uniform", metadata={
        "help": "Token-weighting scheme (uniform: plain DPO)."})
    beta: float | None = field(default=None, metadata={
        "help": "DPO temperature β. Default: 0.1 (TI-DPO: the preset's; an explicit value wins)."})
    loss_type: str = field(default="sigmoid", metadata={"help": "Pair loss: sigmoid (DPO), ipo or hinge."})
    label_smoothing: float = field(default=0.0, metadata={"help": "cDPO label smoothing (sigmoid loss only)."})
    precompute_ref_log_probs: bool = field(default=False, metadata={
        "help": "Score the data once with the reference before training and free it (not with TI-DPO's KL term)."})
    ref_log_probs: str | None = field(default=None, metadata={
        "help": "Folder of cached reference log-probs (`tokenweight precompute reference --output DIR`): no "
                "reference model is loaded; the cache must match the model, tokenizer, data and lengths."})
    precompute_ref_batch_size: int | None = field(default=None, metadata={
        "help": "Pairs per reference forward of the precompute (default: per_device_eval_batch_size)."})
    overwrite_output_dir: bool = field(default=False, metadata={
        "help": "Replace a previous run in output_dir (its checkpoint-* folders are removed first); without it, "
                "a non-empty output_dir is refused unless resume_from_checkpoint is given."})
    disable_dropout: bool = field(default=True, metadata={"help": "Turn dropout off in policy and reference."})
    logps_chunk_size: int = field(default=256, metadata={
        "help": "Sequence chunk of the memory-lean log-prob head (smaller: less memory)."})
    # ---------------------------------------------------------------- OTPO
    otpo_reg: float = field(default=1.0, metadata={"help": "OTPO entropic regulariser ε1 (POT `reg`)."})
    otpo_reg_m: list[float] = field(default_factory=lambda: [0.2], metadata={
        "help": "OTPO marginal relaxation ε2 (POT `reg_m`): one value, or two (rows, columns)."})
    # ---------------------------------------------------------------- TI-DPO (None: from the preset)
    tidpo_preset: str = field(default="paper", metadata={"help": "TI-DPO preset: paper or upstream."})
    tidpo_lambda: float | None = field(default=None, metadata={"help": "Attribution vs prior mix λ."})
    tidpo_sigma_div: float | None = field(default=None, metadata={"help": "Prior σ = T / sigma_div."})
    tidpo_span: str | None = field(default=None, metadata={"help": "Weighted span: response or full."})
    tidpo_kl_alpha: float | None = field(default=None, metadata={"help": "TDPO2 KL weight α (0: off)."})
    tidpo_gamma: float | None = field(default=None, metadata={"help": "Triplet loss weight γ (0: off)."})
    tidpo_margin: float | None = field(default=None, metadata={"help": "Triplet margin."})
    tidpo_anchor_top_k: int | None = field(default=None, metadata={"help": "Anchor sampling top-k (50)."})
    tidpo_anchor_top_p: float | None = field(default=None, metadata={"help": "Anchor sampling top-p (0.95)."})
    tidpo_anchor_temperature: float | None = field(default=None, metadata={"help": "Anchor temperature (0.8)."})
    tidpo_anchor_max_new_tokens: int | None = field(default=None, metadata={"help": "Anchor length cap (64)."})
    tidpo_on_failure: str | None = field(default=None, metadata={
        "help": "raise (default) on a non-finite attribution/KL/triplet; count: drop that part for the step and "
                "count it in tidpo/*_failures."})
    # ---------------------------------------------------------------- AttentionPO
    attention_weights: str | None = field(default=None, metadata={
        "help": "Folder of precomputed attention weights (computed there first when missing)."})
    attention_layers: list[int] | None = field(default=None, metadata={
        "help": "Judge layers whose attention rows are averaged (default: the last)."})
    attention_template: str | None = field(default=None, metadata={"help": "Judge template file."})
    attention_eos_weight: float = field(default=0.0, metadata={
        "help": "Weight of trailing end-of-turn/EOS completion tokens."})
    attention_max_length: int | None = field(default=None, metadata={
        "help": "Judge input cap in tokens (default: the model's context)."})
    attention_batch_size: int = field(default=4, metadata={"help": "Judge passes per batch."})
    # ---------------------------------------------------------------- built-in KeyFact task
    keyfact_facts: str | None = field(default=None, metadata={"help": "KeyFact facts JSON (default: built-in)."})
    keyfact_train_size: int = field(default=512, metadata={"help": "KeyFact training pairs."})
    keyfact_eval_size: int = field(default=128, metadata={"help": "KeyFact held-out pairs."})
    keyfact_chosen_longer: float = field(default=0.5, metadata={
        "help": "Probability that the chosen answer has more filler (0.8: verbosity trap)."})
    keyfact_label_noise: float = field(default=0.0, metadata={"help": "Fraction of swapped training pairs."})
    keyfact_seed: int = field(default=0, metadata={"help": "KeyFact data and base-model seed."})
    keyfact_model_size: str = field(default="default", metadata={
        "help": "KeyFact base model size: default, or small (seconds to build; for tests)."})

    def __post_init__(self):
        if self.output_dir is None:
            self.output_dir = "outputs/tokenweight"
        self.remove_unused_columns = False
        super().__post_init__()
        if self.dataloader_pin_memory and not accelerator_available():
            self.dataloader_pin_memory = False  # nothing to pin for; torch would warn on every dataloader
        if self.loss_type not in ("sigmoid", "ipo", "hinge"):
            raise UserError(f"config key `loss_type`: {self.loss_type!r} is not one of sigmoid, ipo, hinge")
        if self.label_smoothing and self.loss_type != "sigmoid":
            raise UserError("config key `label_smoothing`: only supported with loss_type=sigmoid")
        if not 0 <= self.label_smoothing < 0.5:
            raise UserError("config key `label_smoothing` must be in [0, 0.5)")
        if len(self.otpo_reg_m) not in (1, 2):
            raise UserError("config key `otpo_reg_m`: give one value or two (rows, columns)")
        if self.beta is not None and self.beta <= 0:
            raise UserError("config key `beta` must be positive")
        for key in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                    "max_length", "max_prompt_length"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise UserError(f"config key `{key}` must be at least 1, got {value}")
        from tokenweight.weights import SCHEMES
        if self.weighting not in SCHEMES:
            raise UserError(f"config key `weighting`: unknown scheme {self.weighting!r}; "
                            f"choose one of {', '.join(sorted(SCHEMES))}")
        for key in ("dataset_name", "model_name_or_path", "ref_model_name_or_path"):
            check_local_path(key, getattr(self, key))

    @property
    def effective_beta(self) -> float:
        """β of the run: the explicit value, else the scheme's default (TI-DPO: its preset's; others 0.1)."""
        if self.beta is not None:
            return self.beta
        from tokenweight.weights import SCHEMES
        return SCHEMES[self.weighting].default_beta(self)


def accelerator_available() -> bool:
    """True when torch sees an accelerator (CUDA, MPS, XPU …) that pinned host memory could feed."""
    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6
    return accelerator.is_available() if accelerator is not None else torch.cuda.is_available()


def looks_like_local_path(name: str) -> bool:
    """True when ``name`` can only mean a local file or folder, not a hub id (``name`` or ``namespace/name``):
    it starts with ``./``, ``../``, ``/`` or ``~``, ends in a data-file suffix, has more than one ``/`` (or an
    ``os.sep`` other than ``/``), or its first component is a folder here."""
    if name.startswith(("./", "../", "/", "~")) or name.lower().endswith(DATA_FILE_SUFFIXES):
        return True
    if name.count("/") > 1 or (os.sep != "/" and os.sep in name):
        return True
    return "/" in name and Path(name.split("/")[0]).is_dir()


def check_local_path(key: str, name: str | None) -> None:
    """Refuse a ``name`` that looks like a local path (:func:`looks_like_local_path`) but does not exist, before
    the hub is asked for it (which retries for half a minute)."""
    if name is not None and looks_like_local_path(name) and not Path(os.path.expanduser(name)).exists():
        raise UserError(f"config key `{key}`: {name} does not exist (looked in {Path.cwd()})")


def model_context(model_path: str) -> int | None:
    """The number of positions the model at ``model_path`` was built for (``max_position_embeddings`` or
    ``n_positions`` of its text config), or ``None`` when its config states none."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path).get_text_config()
    for key in ("max_position_embeddings", "n_positions"):
        if isinstance(getattr(config, key, None), int):
            return getattr(config, key)
    return None


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


#: ``tokenweight train --help`` groups: title -> config keys. Each registered scheme also gets a group of the keys
#: with its prefix (``otpo_`` …); other tokenweight keys go under "objective", the rest under the last title.
FLAG_GROUPS = {
    "model": ("model_name_or_path", "ref_model_name_or_path", "model_dtype", "attn_implementation", "use_peft",
              "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules"),
    "data": ("dataset_name", "dataset_split", "eval_split", "max_length", "max_prompt_length"),
    "objective": (),
}
KEYFACT_GROUP = "built-in KeyFact task (used when neither a model nor a dataset is named)"
TRAINING_ARGUMENTS_GROUP = "all transformers.TrainingArguments"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults after each flag's help; the description and the examples kept as written."""


class ConfigArgumentParser(HfArgumentParser):
    """HfArgumentParser of :class:`TokenweightConfig` (parsing unchanged) whose ``--help`` shows the flags in the
    groups of :data:`FLAG_GROUPS`, lists the registered schemes as ``--weighting`` choices, and whose errors are
    :class:`UserError` s."""

    def __init__(self, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(TokenweightConfig, **kwargs)

    def _add_dataclass_arguments(self, dtype) -> None:
        from tokenweight.weights import SCHEMES

        type_hints = get_type_hints(dtype)
        groups = {title: self.add_argument_group(title) for title in FLAG_GROUPS}
        groups.update({name: self.add_argument_group(f"{name} (--weighting {name})") for name in sorted(SCHEMES)})
        groups[KEYFACT_GROUP] = self.add_argument_group(KEYFACT_GROUP)
        groups[TRAINING_ARGUMENTS_GROUP] = self.add_argument_group(TRAINING_ARGUMENTS_GROUP)
        inherited = {f.name for f in dataclasses.fields(TrainingArguments)}
        for item in dataclasses.fields(dtype):
            if not item.init:
                continue
            item.type = type_hints[item.name]
            if item.name == "weighting":
                item = copy.copy(item)
                item.metadata = types.MappingProxyType({**item.metadata, "choices": sorted(SCHEMES)})
            self._parse_dataclass_field(groups[self._group_of(item.name, inherited, SCHEMES)], item)

    @staticmethod
    def _group_of(key: str, inherited: set[str], schemes) -> str:
        titled = [title for title, keys in FLAG_GROUPS.items() if key in keys]
        prefixed = [name for name in schemes if key.startswith(f"{name}_")]
        if titled or prefixed:
            return (titled or prefixed)[0]
        if key.startswith("keyfact_"):
            return KEYFACT_GROUP
        return TRAINING_ARGUMENTS_GROUP if key in inherited else "objective"

    def error(self, message: str):
        raise UserError(f"{message} (see `{self.prog} --help`)")

    def parse_config(self, args: list[str]) -> TokenweightConfig:
        """The config of ``args``; an unknown flag is a :class:`UserError` naming it (and the closest known one),
        and so is a setting that ``TrainingArguments`` rejects."""
        try:
            config, unknown = self.parse_args_into_dataclasses(args=args, return_remaining_strings=True)
        except ValueError as error:
            raise UserError(str(error)) from error
        if unknown:
            flags = [word for word in unknown if word.startswith("-")]
            known = [f"--{item.name}" for item in dataclasses.fields(TokenweightConfig)]
            close = difflib.get_close_matches(flags[0], known, n=1) if flags else []
            hint = f"; did you mean {close[0]}?" if close else ""
            raise UserError(f"unrecognized arguments: {' '.join(unknown)}{hint}")
        return config
