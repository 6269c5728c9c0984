"""Running the judge over tokenized preference rows: in memory, or into a resumable on-disk cache.

Rows are dicts with ``prompt`` (string or chat messages: the question text), ``prompt_ids``, ``chosen_ids`` and
``rejected_ids`` exactly as the trainer tokenized them (:func:`tokenweight.data.tokenize_preference_dataset`), so
the judged answers are the training completions token for token.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from tokenweight.weights.attention import cache
from tokenweight.weights.attention.fingerprint import fingerprint
from tokenweight.weights.attention.judge import JudgePair, default_template, judge_pair_for_row, template_pieces
from tokenweight.weights.attention.normalize import SINK_FIX_MIN_TOKENS, WeightStats, pair_weights
from tokenweight.errors import UserError
from tokenweight.weights.attention.judge_layers import judge_layers_and_cap
from tokenweight.weights.attention.rows import METHODS, last_token_attention, model_type

logger = logging.getLogger(__name__)


@dataclass
class JudgeSettings:
    """How the judge runs.

    Attributes:
        layers: judge layers (negative from the end; ``None``: the last layer that sees the whole judge input),
            averaged.
        template: judge template text (``None``: the library's ``judge.txt`` beside this module).
        eos_weight: weight of trailing end-of-turn/EOS completion tokens.
        max_length: judge input cap in tokens (``None``: the model's context, or its largest sliding window when no
            layer sees the whole context).
        batch_size: judge inputs per forward (each pair has two).
        method: ``"interface"`` or ``"eager"`` (see :func:`~tokenweight.weights.attention.rows.last_token_attention`).
    """

    layers: list[int] | None = None
    template: str | None = None
    eos_weight: float = 0.0
    max_length: int | None = None
    batch_size: int = 4
    method: str = "interface"

    def resolved(self, model: nn.Module) -> "JudgeSettings":
        """A copy with the template text, the layer indices and the length cap made explicit for ``model``
        (:func:`~tokenweight.weights.attention.judge_layers.judge_layers_and_cap`)."""
        if self.method not in METHODS:
            raise UserError(f"config key `attention_rows`: {self.method!r} is not one of {list(METHODS)}")
        layers, max_length = judge_layers_and_cap(model.config.get_text_config(), self.layers, self.max_length,
                                                  getattr(model.config, "name_or_path", "") or model_type(model))
        return JudgeSettings(layers=layers,
                             template=self.template if self.template is not None else default_template(),
                             eos_weight=float(self.eos_weight), max_length=max_length, batch_size=self.batch_size,
                             method=self.method)


def _pad_left(sequences: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        input_ids[row, width - len(sequence):] = torch.tensor(sequence, dtype=torch.long)
        mask[row, width - len(sequence):] = 1
    return input_ids.to(device), mask.to(device)


def _judge_rows(model: nn.Module, sequences: list[list[int]], settings: JudgeSettings,
                pad_id: int) -> list[torch.Tensor]:
    """Last-token attention row ``[len(s)]`` (CPU, fp32) of every judge input, batched by similar length."""
    device = next(model.parameters()).device
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    rows: list[torch.Tensor | None] = [None] * len(sequences)
    for start in range(0, len(order), settings.batch_size):
        chunk = order[start:start + settings.batch_size]
        input_ids, mask = _pad_left([sequences[i] for i in chunk], pad_id, device)
        attention = last_token_attention(model, input_ids, mask, settings.layers, settings.method).cpu()
        for row, i in enumerate(chunk):
            rows[i] = attention[row, attention.shape[1] - len(sequences[i]):]
    return rows


def _weigh(model: nn.Module, tokenizer, rows: Sequence[dict], first_index: int, settings: JudgeSettings,
           pieces: list[list[int]], stats: WeightStats) -> tuple[list[list[float]], list[list[float]]]:
    """Chosen and rejected weights of ``rows`` (``settings`` resolved; ``first_index`` names rows in errors)."""
    pairs: list[JudgePair] = [judge_pair_for_row(row, first_index + k, tokenizer, pieces, settings.max_length)
                              for k, row in enumerate(rows)]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    judged = _judge_rows(model, [ids for pair in pairs for ids in pair.inputs], settings, pad_id)
    chosen, rejected = [], []
    for k, pair in enumerate(pairs):
        weights = pair_weights(pair, (judged[2 * k], judged[2 * k + 1]), settings.eos_weight, stats)
        chosen.append(weights[0])
        rejected.append(weights[1])
    return chosen, rejected


def attention_weights(model: nn.Module, tokenizer, rows: dict | Sequence[dict], *, layers: list[int] | None = None,
                      template: str | None = None, eos_weight: float = 0.0, max_length: int | None = None,
                      batch_size: int = 4, method: str = "interface", log: bool = False,
                      ) -> dict | list[dict] | tuple[dict | list[dict], WeightStats]:
    """AttentionPO weights of one tokenized pair (a dict) or several (a sequence of dicts), in memory.

    Returns ``{"chosen_weights": [...], "rejected_weights": [...]}`` per pair, one float per completion token
    (mean 1 over the judged answer tokens, 1.0 beyond the judge cap, ``eos_weight`` on trailing EOS/end-of-turn
    tokens); with ``log=True`` (as POT's) also the :class:`WeightStats` counts of the pass.
    """
    single = isinstance(rows, dict)
    settings = JudgeSettings(layers, template, eos_weight, max_length, batch_size, method).resolved(model)
    model.eval()
    stats = WeightStats()
    chosen, rejected = _weigh(model, tokenizer, [rows] if single else rows, 0, settings,
                              template_pieces(tokenizer, settings.template), stats)
    result = [{"chosen_weights": c, "rejected_weights": r} for c, r in zip(chosen, rejected)]
    result = result[0] if single else result
    return (result, stats) if log else result


def cache_fingerprint(model: nn.Module, tokenizer, rows: Sequence[dict], settings: JudgeSettings) -> dict:
    """The fingerprint of a cache for these inputs (``settings`` resolved)."""
    return fingerprint(model, tokenizer, rows, settings.template, settings.layers,
                       {"eos_weight": settings.eos_weight, "max_length": settings.max_length, "rows": settings.method,
                        "sink_fix_min_tokens": SINK_FIX_MIN_TOKENS, "format": cache.FORMAT})


def _existing_manifest(folder: Path) -> dict | None:
    """The folder's manifest; ``None`` (with a warning: every shard is then recomputed) when it is damaged."""
    try:
        return cache.read_manifest(folder)
    except cache.CacheDamagedError as error:
        logger.warning("%s; rebuilding the whole cache", error)
        return None


def precompute_attention_weights(model: nn.Module, tokenizer, tokenized_rows: Sequence[dict],
                                 output_dir: str | os.PathLike, layers: list[int] | None = None,
                                 template: str | None = None, batch_size: int = 4, eos_weight: float = 0.0,
                                 max_length: int | None = None, progress: bool = True, shard_size: int = 256,
                                 method: str = "interface", on_shard_written: Callable[[int], None] | None = None,
                                 ) -> cache.CachedWeights:
    """Judge every pair (both orders) and write the weights to ``output_dir``; resume or repair a cache.

    Shards of ``shard_size`` rows are written atomically with their checksum; intact shards of a cache with the same
    fingerprint are kept, missing or damaged ones recomputed (a warning names each), a damaged manifest rebuilds
    the whole cache, as does one with another fingerprint but no shard written yet; a cache with another fingerprint
    and written shards is refused
    (:class:`~tokenweight.weights.attention.cache.CacheMismatchError`). ``on_shard_written(index)`` is called
    after each new shard. Returns the complete cache's weights.
    """
    if len(tokenized_rows) == 0:
        raise ValueError("no preference rows to judge")
    settings = JudgeSettings(layers, template, eos_weight, max_length, batch_size, method).resolved(model)
    model.eval()
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    expected = cache_fingerprint(model, tokenizer, tokenized_rows, settings)
    manifest = _existing_manifest(folder)
    if manifest is not None and not manifest["shards"] and manifest["fingerprint"] != expected:
        logger.warning("attention weight cache %s: no shard was written for its other settings; starting it anew",
                       folder)  # a refused or interrupted first pass: nothing computed to keep
        manifest = None
    if manifest is not None:
        cache.check_fingerprint(manifest["fingerprint"], expected, folder)  # resume with its shard size
    else:
        manifest = {"format": cache.FORMAT, "fingerprint": expected, "num_rows": len(tokenized_rows),
                    "shard_size": shard_size, "num_shards": -(-len(tokenized_rows) // shard_size),
                    "complete": False, "model": getattr(model.config, "name_or_path", ""), "stats": None,
                    "shards": {}}
        cache.write_manifest(folder, manifest)
    _fill_shards(model, tokenizer, tokenized_rows, folder, manifest, settings, progress, on_shard_written)
    result = cache.finish_cache(folder, manifest)
    logger.info("%s (cache %s)", result.stats.summary(), folder)
    if result.stats.zero_attention_sums:
        logger.warning("%d judge attention sums were zero and replaced by uniform weights",
                       result.stats.zero_attention_sums)
    return result


def _shards_to_compute(folder: Path, manifest: dict) -> list[int]:
    """Indices of the shards that are missing or damaged; a warning names each one a finished run had written."""
    todo = []
    for index in range(manifest["num_shards"]):
        problem = cache.shard_problem(folder, manifest, index)
        if problem is None:
            continue
        if manifest["complete"] or cache.shard_path(folder, index).exists():
            logger.warning("attention weight cache %s: %s %s; recomputing it", folder, cache.shard_name(index),
                           problem)
        todo.append(index)
    return todo


def _fill_shards(model, tokenizer, rows, folder: Path, manifest: dict, settings: JudgeSettings, progress: bool,
                 on_shard_written) -> None:
    size = manifest["shard_size"]
    todo = _shards_to_compute(folder, manifest)
    if not todo:
        return
    manifest["complete"] = False
    pieces = template_pieces(tokenizer, settings.template)
    done = len(rows) - sum(min(size, len(rows) - i * size) for i in todo)
    with tqdm(total=len(rows), initial=done, unit="pair", desc="attention judge", disable=not progress) as bar:
        for index in todo:
            start, stop = index * size, min((index + 1) * size, len(rows))
            stats = WeightStats()
            chosen, rejected = _weigh(model, tokenizer, [rows[i] for i in range(start, stop)], start, settings,
                                      pieces, stats)
            cache.write_shard(folder, manifest, index, chosen, rejected, stats)
            bar.update(stop - start)
            if on_shard_written is not None:
                on_shard_written(index)


def template_from_config(args) -> str | None:
    """The judge template text of the config key ``attention_template`` (a file), ``None`` for the built-in one."""
    return Path(args.attention_template).read_text(encoding="utf-8") if args.attention_template else None


def ensure_attention_cache(args, model_path: str, tokenizer, tokenized_dataset: Sequence[dict],
                           ) -> cache.CachedWeights:
    """Load the run's attention weight cache, computing (or finishing) it first with the frozen judge.

    Reads the config keys ``attention_weights`` (the cache folder, required), ``attention_layers``,
    ``attention_template`` (a file; default the built-in template), ``attention_eos_weight``,
    ``attention_max_length``, ``attention_batch_size``, ``attention_rows``, ``model_dtype``, ``attn_implementation``
    and ``device``.
    ``model_path`` is the judge: the initial policy / reference checkpoint. ``tokenized_dataset`` must be the
    rows the trainer trains on, before any completion truncation (one weight per completion token).
    """
    from tokenweight.models import freeze, load_causal_lm

    if not args.attention_weights:
        raise ValueError("weighting=attention needs the config key `attention_weights`: a folder for the judge's "
                         "weight cache (computed there when missing)")
    template = template_from_config(args)
    judge = freeze(load_causal_lm(model_path, args.model_dtype, args.attn_implementation))
    judge.to(getattr(args, "device", "cpu"))
    try:
        return precompute_attention_weights(judge, tokenizer, tokenized_dataset, args.attention_weights,
                                            layers=args.attention_layers, template=template,
                                            batch_size=args.attention_batch_size,
                                            eos_weight=args.attention_eos_weight,
                                            max_length=args.attention_max_length, method=args.attention_rows)
    finally:
        del judge
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
