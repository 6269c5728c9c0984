"""cDPO's contrastive-estimation scores: per completion token, the probability of the token under the contrasted
logits (1 + c)·z₊ − c·z₋ of the positive and negative models (upstream ``pipeline.py``, ``calculate_ce_score``: c 1,
``cd_logits = (1 + 1) * pos_logits - 1 * neg_logits``, softmax over the vocabulary), computed once per split and
cached, fingerprinted (both models, the tokenizer, every row, c) as :mod:`tokenweight.weights.tisdpo.cache` does.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import datasets
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from tokenweight.data import PreferenceCollator
from tokenweight.fingerprint import dataset_fingerprint, model_fingerprint, tokenizer_fingerprint
from tokenweight.masks import from_shifted
from tokenweight.weights.tisdpo import cache
from tokenweight.weights.tisdpo.rewards import Contrast, load_scoring_model

CONTRAST = Contrast(models={"positive_model": "cdpo_positive_model", "negative_model": "cdpo_negative_model"},
                    batch_size_setting="cdpo_batch_size", cache_setting="cdpo_scores",
                    format="tokenweight-cdpo-scores/1", label="cDPO contrastive score", scheme="cdpo",
                    how="train them first: docs/SCHEMES_TOKEN_LEVEL.md, cDPO",
                    models_name="cDPO positive and negative models",
                    flags={"cdpo_positive_model": "--cdpo_positive_model",
                           "cdpo_negative_model": "--cdpo_negative_model"},
                    settings=("cdpo_contrast",))


@torch.no_grad()
def contrast_probs(positive, negative, rows: datasets.Dataset, pad_token_id: int, contrast: float, batch_size: int,
                   name: str) -> tuple[list[list[float]], list[list[float]]]:
    """Per-row ``(chosen, rejected)`` probabilities softmax((1 + c)·z₊ − c·z₋)[y_t] of every completion token of the
    tokenized ``rows`` (both models on the same device; full-vocabulary logits of one batch at a time)."""
    device = next(positive.parameters()).device
    loader = DataLoader(rows, batch_size=batch_size, collate_fn=PreferenceCollator(pad_token_id=pad_token_id))
    chosen, rejected = [], []
    for batch in tqdm(loader, desc=f"cDPO contrastive scores ({name})"):
        ids, attention = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        logits = [model(input_ids=ids, attention_mask=attention).logits[:, :-1].float()
                  for model in (positive, negative)]
        contrasted = (1 + contrast) * logits[0] - contrast * logits[1]
        probs = contrasted.softmax(-1).gather(2, ids[:, 1:, None])[..., 0].cpu()  # [2B, L-1], shifted
        scored = [row[m].tolist() for row, m in zip(from_shifted(probs), batch["completion_mask"].bool())]
        chosen.extend(scored[:len(scored) // 2])
        rejected.extend(scored[len(scored) // 2:])
    return chosen, rejected


def split_scores(config: Any, tokenizer, rows: datasets.Dataset, split: str,
                 folder: Path | None) -> tuple[list[list[float]], list[list[float]], str]:
    """``(chosen, rejected, source)`` scores of the tokenized ``rows`` (untruncated) of ``split``: from the cache in
    ``folder`` when its fingerprint is this run's, else computed (and written there unless ``folder`` is ``None``);
    a cache of other models, data or contrast is a :class:`UserError` naming its manifest."""
    manifest = cache.read_manifest(folder, CONTRAST) if folder is not None else None
    expected = {"tokenizer": tokenizer_fingerprint(tokenizer), "dataset": dataset_fingerprint(rows),
                "cdpo_contrast": config.cdpo_contrast}
    if manifest is not None:
        cache.check_fingerprint(manifest, expected, folder, ("tokenizer", "dataset", "cdpo_contrast"), CONTRAST)
    models = {part: load_scoring_model(config, key, CONTRAST, None) for part, key in CONTRAST.models.items()}
    expected.update({part: model_fingerprint(model) for part, model in models.items()})
    if manifest is not None:
        cache.check_fingerprint(manifest, expected, folder, None, CONTRAST)
        chosen, rejected = cache.read_rewards(folder, manifest, CONTRAST)
        return chosen, rejected, f"read from the cache {folder}"
    chosen, rejected = contrast_probs(models["positive_model"], models["negative_model"], rows,
                                      tokenizer.pad_token_id, config.cdpo_contrast, config.cdpo_batch_size, split)
    del models
    gc.collect()
    if folder is None:
        return chosen, rejected, "computed in memory"
    cache.write_rewards(folder, {part: expected[part] for part in CONTRAST.parts}, chosen, rejected, CONTRAST)
    return chosen, rejected, f"computed and cached in {folder}"
