"""What an attention weight cache was computed for (spec §8.1): model, tokenizer, dataset, template, layers, settings
(the generic parts are :mod:`tokenweight.fingerprint`'s)."""

from __future__ import annotations

from torch import nn

from tokenweight.fingerprint import dataset_fingerprint, digest, model_fingerprint, tokenizer_fingerprint

PARTS = ("model", "tokenizer", "dataset", "template", "layers", "settings")

def fingerprint(model: nn.Module, tokenizer, rows, template: str, layers: list[int], settings: dict) -> dict:
    """The cache key: one entry per part of :data:`PARTS`."""
    return {"model": model_fingerprint(model), "tokenizer": tokenizer_fingerprint(tokenizer),
            "dataset": dataset_fingerprint(rows), "template": digest(template), "layers": list(layers),
            "settings": dict(sorted(settings.items()))}
