"""Fingerprints of what a cache was computed from (a model, a tokenizer, tokenized rows), and how two differ.

Shared by the AttentionPO weight cache and the reference log-prob cache. The model part holds one SHA-256 per parameter (name, shape, dtype and every byte), so changing any single weight
is refused and the refusal names the parameter; the dataset part holds one short digest per row, so a changed
dataset is refused naming its first differing row.
"""

from __future__ import annotations

import hashlib
import json

import torch
from torch import nn

_ROW_DIGEST_CHARS = 16  # 64 bits per row: a changed row goes unnoticed with probability 2^-64
_LISTED = 3  # differing parameters named in a message


def digest(*chunks: bytes | str) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk.encode() if isinstance(chunk, str) else chunk)
    return digest.hexdigest()


def tensordigest(tensor: torch.Tensor) -> str:
    """SHA-256 of a tensor's bytes in row-major order (copied to the CPU one tensor at a time)."""
    data = tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy()
    return hashlib.sha256(memoryview(data)).hexdigest()


def model_fingerprint(model: nn.Module) -> dict:
    """``{"config": digest, "parameters": {name: [shape, dtype, digest of its bytes]}}`` for every parameter.

    The path the model was loaded from is not part of it (a copied checkpoint is the same judge); the attention
    implementation and other private config fields neither (they change the weights by less than 1e-5).
    """
    config = {k: v for k, v in model.config.to_dict().items()
              if not k.startswith("_") and k not in ("transformers_version", "attn_implementation")}
    parameters = {name: [list(p.shape), str(p.dtype).removeprefix("torch."), tensordigest(p)]
                  for name, p in model.named_parameters()}
    return {"config": digest(json.dumps(config, sort_keys=True, default=str)), "parameters": parameters}


def tokenizer_fingerprint(tokenizer) -> str:
    """Hash of the vocabulary, the special tokens and the chat template."""
    return digest(json.dumps(sorted(tokenizer.get_vocab().items())), json.dumps(tokenizer.all_special_tokens),
                   tokenizer.chat_template or "")


def dataset_fingerprint(rows) -> dict:
    """``{"rows": [digest per row]}`` of every row's ``prompt``, ``prompt_ids``, ``chosen_ids`` and ``rejected_ids``."""
    return {"rows": [digest(json.dumps([row["prompt"], list(row["prompt_ids"]), list(row["chosen_ids"]),
                                         list(row["rejected_ids"])]))[:_ROW_DIGEST_CHARS] for row in rows]}



def _count(names: list[str]) -> str:
    return f"{len(names)} parameter{'' if len(names) == 1 else 's'}"


def _model_difference(cached: dict, now: dict) -> str:
    notes = ["its config differs"] if cached.get("config") != now["config"] else []
    stored, current = cached.get("parameters", {}), now["parameters"]
    for label, names in (("only in the cache", [n for n in stored if n not in current]),
                         ("only in the model now", [n for n in current if n not in stored])):
        if names:
            notes.append(f"{_count(names)} {label} ({', '.join(names[:_LISTED])})")
    changed = []
    for name in (n for n in current if n in stored and stored[n] != current[n]):
        (shape, dtype, _), (new_shape, new_dtype, _) = stored[name], current[name]
        what = (f"shape {shape} vs {new_shape}" if shape != new_shape else
                f"dtype {dtype} vs {new_dtype}" if dtype != new_dtype else "bytes differ")
        changed.append(f"{name} ({what})")
    if changed:
        more = f" and {len(changed) - _LISTED} more" if len(changed) > _LISTED else ""
        notes.append(f"{_count(changed)} {'differs' if len(changed) == 1 else 'differ'}: "
                     f"{', '.join(changed[:_LISTED])}{more}")
    return "; ".join(notes)


def _dataset_difference(cached: dict, now: dict) -> str:
    stored, current = cached.get("rows", []), now["rows"]
    first = next((i for i, (a, b) in enumerate(zip(stored, current)) if a != b), min(len(stored), len(current)))
    return f"{len(stored)} rows cached vs {len(current)} now, first differing row {first}"


def describe_difference(part: str, cached, now) -> str:
    """One phrase saying how ``cached`` and ``now`` (two values of fingerprint ``part``) differ."""
    if part == "model" and isinstance(cached, dict):
        return _model_difference(cached, now)
    if part == "dataset" and isinstance(cached, dict):
        return _dataset_difference(cached, now)
    return f"cached {cached!r:.80} vs now {now!r:.80}"


def fingerprint_differences(stored: dict, expected: dict, parts: tuple[str, ...]) -> tuple[list[str], str]:
    """The parts of ``parts`` where fingerprint ``stored`` differs from ``expected``, and one phrase per part
    saying how (``"part: …; part: …"``); ``([], "")`` when they agree."""
    differing = [part for part in parts if stored.get(part) != expected.get(part)]
    details = "; ".join(f"{part}: {describe_difference(part, stored.get(part), expected.get(part))}"
                        for part in differing)
    return differing, details
