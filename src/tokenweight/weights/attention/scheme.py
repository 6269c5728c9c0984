"""``attention``: AttentionPO / TwDPO weights, computed once by the frozen judge and cached (specs/attentionpo.md).

:meth:`AttentionScheme.prepare` (run on every split by the trainer, ``tokenweight eval``, ``weights``, ``bench`` and
``precompute attention``) adds per-row ``chosen_weights`` / ``rejected_weights`` (one float per completion token)
to the raw rows; the weights then reach the batch exactly like dataset-supplied ones: the collator lays them out as
``token_weights`` ``[2B, L-1]`` (shifted) and this scheme masks them like ``column`` does. Its flags are
:class:`AttentionSettings`.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
import sys
from pathlib import Path

import datasets

from tokenweight.errors import UserError
from tokenweight.weights.attention.normalize import WeightStats
from tokenweight.weights.attention.rows import METHODS
from tokenweight.weights.base import PrepareContext, register_scheme
from tokenweight.weights.column import ColumnScheme
from tokenweight.weights.tooling import PaperClaim, SchemeTooling


@dataclass
class AttentionSettings:
    """AttentionPO's flags: where the judge's weights are cached and how the judge runs."""

    attention_weights: str | None = field(default=None, metadata={
        "help": "Folder of precomputed attention weights (computed there first when missing)."})
    attention_layers: list[int] | None = field(default=None, metadata={
        "help": "Judge layers whose attention rows are averaged (default: the last layer that sees the whole judge "
                "input, not a shorter sliding-window layer)."})
    attention_template: str | None = field(default=None, metadata={"help": "Judge template file."})
    attention_eos_weight: float = field(default=0.0, metadata={
        "help": "Weight of trailing end-of-turn/EOS completion tokens."})
    attention_max_length: int | None = field(default=None, metadata={
        "help": "Judge input cap in tokens (default: the model's context, or its largest sliding window when no "
                "layer sees the whole context)."})
    attention_batch_size: int = field(default=4, metadata={"help": "Judge passes per batch."})
    attention_rows: str = field(default="interface", metadata={
        "choices": list(METHODS),
        "help": "How the judge's last-token attention rows are taken: interface (recorded through transformers' "
                "attention interface, the model's own attention kept) or eager (eager attention with "
                "output_attentions: every layer's full map; for architectures that compute attention themselves, "
                "such as BLOOM)."})

    def __post_init__(self):
        if self.attention_eos_weight < 0:
            raise UserError(f"config key `attention_eos_weight` must be >= 0, got {self.attention_eos_weight}")
        for key in ("attention_max_length", "attention_batch_size"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise UserError(f"config key `{key}` must be at least 1, got {value}")


@register_scheme
class AttentionScheme(ColumnScheme):
    name = "attention"
    needs_hidden_states = False
    settings_class = AttentionSettings
    tooling = SchemeTooling(cache_setting="attention_weights", claims=(
        PaperClaim("AttentionPO", "the judge's attention puts more weight on the key than uniform", "key_weight_rel",
                   +1),
        PaperClaim("AttentionPO", "… and the key gets a larger share of the chosen weight", "key_share", +1),
        PaperClaim("AttentionPO", "the gain follows (greedy key accuracy)", "key_acc", +1)))

    def prepare(self, raw: datasets.Dataset, split: str, context: PrepareContext) -> datasets.Dataset:
        """``raw`` with the judge's ``chosen_weights``/``rejected_weights``.

        The frozen initial model (``context.model_path``) judges the untruncated pairs, so tokenization afterwards
        truncates the weights with the completions. With ``context.output_dir`` the weights are cached (main process
        first; the others then load the cache) in ``attention_weights`` (default ``output_dir/attention-weights``)
        for the train split and in its sub-folder ``<split>`` for any other; without it they are computed in memory
        by ``context.model`` (or the model loaded from ``model_path``) and nothing is written. The judge's counts go
        to stderr and to ``context.summary[split]["attention"]``.
        """
        from tokenweight.data import tokenize_preference_dataset

        full, _ = tokenize_preference_dataset(raw, context.tokenizer, name=f"{split} (judge input)")
        if context.output_dir is None:
            judged, stats = _judge_in_memory(context, list(full))
            chosen, rejected = [w["chosen_weights"] for w in judged], [w["rejected_weights"] for w in judged]
        else:
            cached = _judge_into_cache(context, split, full)
            chosen, rejected, stats = cached.chosen_weights, cached.rejected_weights, cached.stats
        weighted = raw.remove_columns([c for c in ("chosen_weights", "rejected_weights") if c in raw.column_names])
        weighted = weighted.add_column("chosen_weights", chosen).add_column("rejected_weights", rejected)
        if context.summary is not None:
            context.summary.setdefault(split, {})["attention"] = dataclasses.asdict(stats)
        print(f"data {split}: {stats.summary()}", file=sys.stderr)
        return weighted


def _judge_into_cache(context: PrepareContext, split: str, full: datasets.Dataset):
    """The cached weights of the tokenized split ``full`` (computed there first when missing)."""
    from accelerate import PartialState

    from tokenweight.weights.attention.precompute import ensure_attention_cache

    config = copy.copy(context.config)
    folder = Path(config.attention_weights or Path(context.output_dir, "attention-weights"))
    config.attention_weights = str(folder if split == "train" else folder / split)
    with PartialState().main_process_first():
        return ensure_attention_cache(config, context.model_path, context.tokenizer, full)


def _judge_in_memory(context: PrepareContext, rows: list[dict]) -> tuple[list[dict], WeightStats]:
    """Per tokenized row, ``{"chosen_weights", "rejected_weights"}`` judged in memory, and the pass's counts."""
    from tokenweight.models import freeze, load_causal_lm
    from tokenweight.weights.attention.precompute import attention_weights, template_from_config

    config = context.config
    judge = context.model
    if judge is None:
        judge = freeze(load_causal_lm(context.model_path, config.model_dtype, config.attn_implementation))
    was_training = judge.training
    weights = attention_weights(judge, context.tokenizer, rows, layers=config.attention_layers,
                                template=template_from_config(config), eos_weight=config.attention_eos_weight,
                                max_length=config.attention_max_length, batch_size=config.attention_batch_size,
                                method=config.attention_rows, log=True)
    judge.train(was_training)
    return weights
