"""TIS-DPO token rewards r̂_t = log π₊(y_t|s_t) − log π₋(y_t|s_t) of every completion token, from the two contrastive
models, in memory or through the fingerprinted cache (:mod:`.cache`).

The models score the tokenized rows exactly as the trainer tokenizes them before truncation (so the rewards are cut
with the completions afterwards), one model at a time (loaded, fingerprinted, run, freed), with the memory-lean
per-token log-prob head of :func:`tokenweight.reference.precompute_reference_logps`.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import datasets
import torch

from tokenweight.errors import UserError
from tokenweight.fingerprint import dataset_fingerprint, model_fingerprint, tokenizer_fingerprint
from tokenweight.sources import looks_like_local_path
from tokenweight.weights.tisdpo import cache

#: The config keys of the two contrastive models, in the order they are loaded.
MODEL_KEYS = {"positive_model": "tisdpo_positive_model", "negative_model": "tisdpo_negative_model"}


def completion_logps(model, rows: datasets.Dataset, pad_token_id: int, batch_size: int,
                     name: str) -> tuple[list[list[float]], list[list[float]]]:
    """Per-row ``(chosen, rejected)`` log-probs of ``model`` for every completion token of the tokenized ``rows``
    (longer rows than the model's context are a :class:`UserError` naming the first)."""
    from tokenweight.reference import precompute_reference_logps

    context = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    if context is not None:
        for row in rows:
            length = len(row["prompt_ids"]) + max(len(row["chosen_ids"]), len(row["rejected_ids"]))
            if length > context:
                raise UserError(f"{name}: row {row['row_index']} has {length} tokens, more than the {context} "
                                "positions of the TIS-DPO contrastive models; shorten or drop it")
    scored = precompute_reference_logps(model, rows, pad_token_id, batch_size, name=name)
    return scored["chosen_ref_logps"], scored["rejected_ref_logps"]


def token_rewards(positive: list[list[float]], negative: list[list[float]]) -> list[list[float]]:
    """Per row, ``log π₊ − log π₋`` of each token (two ragged lists of the same shape)."""
    return [[p - n for p, n in zip(row_p, row_n)] for row_p, row_n in zip(positive, negative)]


def _load(config: Any, key: str):
    from tokenweight.models import freeze, load_causal_lm

    path = getattr(config, key)
    if not path:
        raise UserError(f"weighting=tisdpo needs both contrastive models: --{key.removeprefix('tisdpo_')} PATH "
                        f"(config key `{key}`; see the TIS-DPO pipeline in the README)")
    if looks_like_local_path(path) and not Path(path).expanduser().exists():
        raise UserError(f"config key `{key}`: {path} does not exist (looked in {Path.cwd()}); train it first (see "
                        "the TIS-DPO pipeline in the README)")
    model = freeze(load_causal_lm(path, config.model_dtype, config.attn_implementation))
    return model.to(getattr(config, "device", "cpu"))


def split_rewards(config: Any, tokenizer, rows: datasets.Dataset, split: str,
                  folder: Path | None) -> tuple[list[list[float]], list[list[float]], str]:
    """``(chosen r̂, rejected r̂, source)`` of the tokenized ``rows`` (untruncated) of ``split``.

    ``folder`` ``None``: computed in memory. Otherwise read from the cache in ``folder`` when its fingerprint equals
    this run's (positive and negative model parameters, tokenizer, every row's ids), computed and written there when
    the folder holds none; a cache for anything else is a :class:`UserError` naming its manifest. ``source`` says
    which of the three happened.
    """
    manifest = cache.read_manifest(folder) if folder is not None else None
    expected = {"tokenizer": tokenizer_fingerprint(tokenizer), "dataset": dataset_fingerprint(rows)}
    if manifest is not None:  # the cheap parts first: no model is loaded for a cache of other data
        cache.check_fingerprint(manifest, expected, folder, ("tokenizer", "dataset"))
    logps = {}
    for part, key in MODEL_KEYS.items():
        model = _load(config, key)
        expected[part] = model_fingerprint(model)
        if manifest is None:
            logps[part] = completion_logps(model, rows, tokenizer.pad_token_id, config.tisdpo_batch_size,
                                           f"TIS-DPO {part.replace('_', ' ')} ({split})")
        del model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if manifest is not None:
        cache.check_fingerprint(manifest, expected, folder)
        chosen, rejected = cache.read_rewards(folder, manifest)
        return chosen, rejected, f"read from the cache {folder}"
    (positive_chosen, positive_rejected), (negative_chosen, negative_rejected) = (logps["positive_model"],
                                                                                  logps["negative_model"])
    chosen = token_rewards(positive_chosen, negative_chosen)
    rejected = token_rewards(positive_rejected, negative_rejected)
    if folder is None:
        return chosen, rejected, "computed in memory"
    cache.write_rewards(folder, {part: expected[part] for part in cache.PARTS}, chosen, rejected)
    return chosen, rejected, f"computed and cached in {folder}"
