"""TIS-DPO token rewards r̂_t = log π₊(y_t|s_t) − log π₋(y_t|s_t) of every completion token, from the two contrastive
models, in memory or through the fingerprinted cache (:mod:`.cache`). The same per-token log-ratio of two models is
SePO's oracle score (``weights/sepo``): a :class:`Contrast` names the two models' config keys, the cache's format and
flag, and the words of the messages.

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
from tokenweight.weights.tisdpo.cache import MODEL_KEYS, TISDPO_CONTRAST, Contrast  # noqa: F401  (re-exported)



def completion_logps(model, rows: datasets.Dataset, pad_token_id: int, batch_size: int,
                     name: str, models_name: str = "TIS-DPO contrastive models") -> tuple[list[list[float]],
                                                                                        list[list[float]]]:
    """Per-row ``(chosen, rejected)`` log-probs of ``model`` for every completion token of the tokenized ``rows``
    (longer rows than the model's context are a :class:`UserError` naming the first)."""
    from tokenweight.reference import precompute_reference_logps

    context = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    if context is not None:
        for row in rows:
            length = len(row["prompt_ids"]) + max(len(row["chosen_ids"]), len(row["rejected_ids"]))
            if length > context:
                raise UserError(f"{name}: row {row['row_index']} has {length} tokens, more than the {context} "
                                f"positions of the {models_name}; shorten or drop it")
    scored = precompute_reference_logps(model, rows, pad_token_id, batch_size, name=name)
    return scored["chosen_ref_logps"], scored["rejected_ref_logps"]


def token_rewards(positive: list[list[float]], negative: list[list[float]]) -> list[list[float]]:
    """Per row, ``log π₊ − log π₋`` of each token (two ragged lists of the same shape)."""
    return [[p - n for p, n in zip(row_p, row_n)] for row_p, row_n in zip(positive, negative)]


def load_scoring_model(config: Any, key: str, contrast: Contrast, default: str | None):
    """The frozen model that config key ``key`` names (``default`` when unset), on the config's device; a missing or
    absent model is a :class:`UserError` saying how to make it."""
    from tokenweight.models import freeze, load_causal_lm

    path = getattr(config, key) or default
    if not path:
        raise UserError(f"weighting={contrast.scheme} needs both of its models: "
                        f"{(contrast.flags or {}).get(key, '--' + key.removeprefix(contrast.scheme + '_'))} PATH "
                        f"(config key `{key}`; {contrast.how})")
    if looks_like_local_path(path) and not Path(path).expanduser().exists():
        raise UserError(f"config key `{key}`: {path} does not exist (looked in {Path.cwd()}); train it first "
                        f"({contrast.how})")
    model = freeze(load_causal_lm(path, config.model_dtype, config.attn_implementation))
    return model.to(getattr(config, "device", "cpu"))


def split_rewards(config: Any, tokenizer, rows: datasets.Dataset, split: str, folder: Path | None,
                  contrast: Contrast = TISDPO_CONTRAST,
                  defaults: dict | None = None) -> tuple[list[list[float]], list[list[float]], str]:
    """``(chosen r̂, rejected r̂, source)`` of the tokenized ``rows`` (untruncated) of ``split``: per completion token
    ``log π_a − log π_b`` of the two models of ``contrast`` (TIS-DPO's π₊ and π₋ by default); ``defaults``
    ``{config key: path}`` is read where a model's key is unset (SePO's oracle reference: the run's model).

    ``folder`` ``None``: computed in memory. Otherwise read from the cache in ``folder`` when its fingerprint equals
    this run's (positive and negative model parameters, tokenizer, every row's ids), computed and written there when
    the folder holds none; a cache for anything else is a :class:`UserError` naming its manifest. ``source`` says
    which of the three happened.
    """
    manifest = cache.read_manifest(folder, contrast) if folder is not None else None
    expected = {"tokenizer": tokenizer_fingerprint(tokenizer), "dataset": dataset_fingerprint(rows)}
    if manifest is not None:  # the cheap parts first: no model is loaded for a cache of other data
        cache.check_fingerprint(manifest, expected, folder, ("tokenizer", "dataset"), contrast)
    logps = {}
    name = contrast.label.split()[0]
    for part, key in contrast.models.items():
        model = load_scoring_model(config, key, contrast, (defaults or {}).get(key))
        expected[part] = model_fingerprint(model)
        if manifest is None:
            logps[part] = completion_logps(model, rows, tokenizer.pad_token_id,
                                           getattr(config, contrast.batch_size_setting),
                                           f"{name} {part.replace('_', ' ')} ({split})", contrast.models_name)
        del model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if manifest is not None:
        cache.check_fingerprint(manifest, expected, folder, None, contrast)
        chosen, rejected = cache.read_rewards(folder, manifest, contrast)
        return chosen, rejected, f"read from the cache {folder}"
    (a_chosen, a_rejected), (b_chosen, b_rejected) = (logps[part] for part in contrast.models)
    chosen, rejected = token_rewards(a_chosen, b_chosen), token_rewards(a_rejected, b_rejected)
    if folder is None:
        return chosen, rejected, "computed in memory"
    cache.write_rewards(folder, {part: expected[part] for part in contrast.parts}, chosen, rejected, contrast)
    return chosen, rejected, f"computed and cached in {folder}"
