"""``attention``: AttentionPO / TwDPO weights, computed once by the frozen judge and cached (specs/attentionpo.md).

:meth:`AttentionScheme.prepare` (run on every split by the trainer, ``tokenweight eval``, ``weights``, ``bench`` and
``precompute attention``) adds per-row ``chosen_weights`` / ``rejected_weights`` (one float per completion token)
to the raw rows; the weights then reach the batch exactly like dataset-supplied ones: the collator lays them out as
``token_weights`` ``[2B, L]`` and this scheme shifts and masks them like ``column`` does.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
from pathlib import Path

import datasets

from tokenweight.weights.attention.normalize import WeightStats
from tokenweight.weights.base import PrepareContext, register_scheme
from tokenweight.weights.column import ColumnScheme


@register_scheme
class AttentionScheme(ColumnScheme):
    name = "attention"
    needs_hidden_states = False
    needs_weight_columns = False
    cache_setting = "attention_weights"

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
                                log=True)
    judge.train(was_training)
    return weights
