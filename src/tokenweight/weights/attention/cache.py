"""On-disk cache of attention weights: fingerprint, manifest, shards (spec §8.1).

Layout of a cache folder::

    manifest.json            fingerprint parts, row count, shard size, completion flag, summed statistics
    shard-00000.safetensors  rows [0, S): flat fp32 weights + per-row lengths, statistics in the metadata
    shard-00001.safetensors  …

Every file is written to a temporary name and renamed, so a shard either exists complete or not at all; an
interrupted run resumes with the first missing shard and never rewrites finished ones. A cache is only read when
its fingerprint equals the expected one, part by part (model, tokenizer, dataset, template, layers, settings).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from tokenweight.weights.attention.normalize import WeightStats

FORMAT = "tokenweight-attention-weights/1"
MANIFEST = "manifest.json"
FINGERPRINT_PARTS = ("model", "tokenizer", "dataset", "template", "layers", "settings")
_PARAMETER_SAMPLE = 1 << 22  # elements hashed from each sampled parameter tensor


class CacheMismatchError(ValueError):
    """A cache folder holds weights computed for something else; the message names the differing parts."""


def _digest(*chunks: bytes | str) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk.encode() if isinstance(chunk, str) else chunk)
    return digest.hexdigest()


def model_fingerprint(model: nn.Module) -> str:
    """Hash of the model's configuration and of the bytes of its first, middle and last parameter tensors.

    The path the model was loaded from is not part of it (a copied checkpoint is the same judge); the attention
    implementation and other private config fields neither (they do not change the weights beyond 1e-5).
    """
    config = {k: v for k, v in model.config.to_dict().items()
              if not k.startswith("_") and k not in ("transformers_version", "attn_implementation")}
    chunks = [json.dumps(config, sort_keys=True, default=str)]
    named = list(model.named_parameters())
    for i in sorted({0, len(named) // 2, len(named) - 1}):
        name, tensor = named[i]
        sample = tensor.detach().flatten()[:_PARAMETER_SAMPLE].contiguous().cpu()
        chunks += [f"{name}:{tuple(tensor.shape)}:{tensor.dtype}", sample.view(torch.uint8).numpy().tobytes()]
    return _digest(*chunks)


def tokenizer_fingerprint(tokenizer) -> str:
    """Hash of the vocabulary, the special tokens and the chat template."""
    return _digest(json.dumps(sorted(tokenizer.get_vocab().items())), json.dumps(tokenizer.all_special_tokens),
                   tokenizer.chat_template or "")


def dataset_fingerprint(rows) -> str:
    """Hash of every row's question (``prompt``) and token ids (``prompt_ids``, ``chosen_ids``, ``rejected_ids``)."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps([row["prompt"], list(row["prompt_ids"]), list(row["chosen_ids"]),
                                  list(row["rejected_ids"])]).encode())
    return digest.hexdigest()


def fingerprint(model: nn.Module, tokenizer, rows, template: str, layers: list[int], settings: dict) -> dict:
    """The cache key: one entry per part of :data:`FINGERPRINT_PARTS`."""
    return {"model": model_fingerprint(model), "tokenizer": tokenizer_fingerprint(tokenizer),
            "dataset": dataset_fingerprint(rows), "template": _digest(template), "layers": list(layers),
            "settings": dict(sorted(settings.items()))}


def check_fingerprint(stored: dict, expected: dict, folder: Path) -> None:
    """Raise :class:`CacheMismatchError` naming every part where ``stored`` differs from ``expected``."""
    differing = [part for part in FINGERPRINT_PARTS if stored.get(part) != expected.get(part)]
    if differing:
        details = "; ".join(f"{part}: cached {stored.get(part)!r:.80} vs now {expected.get(part)!r:.80}"
                            for part in differing)
        raise CacheMismatchError(
            f"attention weight cache {folder} was computed for a different {', '.join(differing)} ({details}); "
            "delete the folder or choose another one to recompute")


@dataclass
class CachedWeights:
    """Per-row weights of a cache, in dataset order: one float per completion token."""

    chosen_weights: list[list[float]]
    rejected_weights: list[list[float]]
    stats: WeightStats


def _write_atomic(path: Path, write) -> None:
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    write(temporary)
    os.replace(temporary, path)


def write_manifest(folder: Path, manifest: dict) -> None:
    _write_atomic(folder / MANIFEST, lambda p: p.write_text(json.dumps(manifest, indent=1), encoding="utf-8"))


def read_manifest(folder: Path) -> dict | None:
    """The folder's manifest, ``None`` when there is none; raise for a file of another format."""
    path = Path(folder) / MANIFEST
    if not path.exists():
        return None
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT:
        raise CacheMismatchError(f"{path} is not a tokenweight attention weight cache (format "
                                 f"{manifest.get('format')!r}, expected {FORMAT!r})")
    return manifest


def shard_path(folder: Path, index: int) -> Path:
    return Path(folder) / f"shard-{index:05d}.safetensors"


def _flat(rows: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.int64)
    values = torch.tensor([w for r in rows for w in r], dtype=torch.float32)
    return values, lengths


def _unflat(values: torch.Tensor, lengths: torch.Tensor) -> list[list[float]]:
    return [chunk.tolist() for chunk in torch.split(values, lengths.tolist())]


def write_shard(folder: Path, index: int, chosen: list[list[float]], rejected: list[list[float]],
                stats: WeightStats) -> None:
    """Write one shard atomically (lists of per-row weights plus the shard's statistics)."""
    (chosen_values, chosen_lengths), (rejected_values, rejected_lengths) = _flat(chosen), _flat(rejected)
    tensors = {"chosen": chosen_values, "chosen_lengths": chosen_lengths,
               "rejected": rejected_values, "rejected_lengths": rejected_lengths}
    metadata = {"stats": json.dumps(asdict(stats))}
    _write_atomic(shard_path(folder, index), lambda p: save_file(tensors, str(p), metadata=metadata))


def read_shard(folder: Path, index: int) -> tuple[list[list[float]], list[list[float]], WeightStats]:
    with safe_open(str(shard_path(folder, index)), framework="pt") as handle:
        stats = WeightStats(**json.loads(handle.metadata()["stats"]))
        chosen = _unflat(handle.get_tensor("chosen"), handle.get_tensor("chosen_lengths"))
        rejected = _unflat(handle.get_tensor("rejected"), handle.get_tensor("rejected_lengths"))
    return chosen, rejected, stats


def load_attention_weights(output_dir: str | os.PathLike, expected_fingerprint: dict) -> CachedWeights:
    """Read a complete cache whose fingerprint equals ``expected_fingerprint`` (see :func:`fingerprint`).

    Raises :class:`CacheMismatchError` naming the differing parts, or ``FileNotFoundError`` for a missing or
    unfinished cache.
    """
    folder = Path(output_dir)
    manifest = read_manifest(folder)
    if manifest is None:
        raise FileNotFoundError(f"no attention weight cache in {folder} (missing {MANIFEST})")
    check_fingerprint(manifest["fingerprint"], expected_fingerprint, folder)
    if not manifest["complete"]:
        raise FileNotFoundError(f"attention weight cache {folder} is unfinished; run the precompute again to resume")
    return _read_shards(folder, manifest)


def finish_cache(output_dir: str | os.PathLike, manifest: dict) -> CachedWeights:
    """Read the shards of a cache whose shards are all written, then mark its manifest complete."""
    folder = Path(output_dir)
    weights = _read_shards(folder, manifest)
    write_manifest(folder, {**manifest, "complete": True, "stats": asdict(weights.stats)})
    return weights


def _read_shards(folder: Path, manifest: dict) -> CachedWeights:
    chosen, rejected, stats = [], [], WeightStats()
    for index in range(manifest["num_shards"]):
        if not shard_path(folder, index).exists():
            raise FileNotFoundError(f"attention weight cache {folder} lacks {shard_path(folder, index).name}")
        shard_chosen, shard_rejected, shard_stats = read_shard(folder, index)
        chosen += shard_chosen
        rejected += shard_rejected
        stats.add(shard_stats)
    if len(chosen) != manifest["num_rows"]:
        raise ValueError(f"attention weight cache {folder} holds {len(chosen)} rows, its manifest says "
                         f"{manifest['num_rows']}")
    return CachedWeights(chosen_weights=chosen, rejected_weights=rejected, stats=stats)
