"""File helpers of the on-disk caches (AttentionPO weights, TIS-DPO rewards, reference log-probs): atomic writes,
JSON manifests, ragged rows."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load, save


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: a reader sees the old file or the new one."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def read_json_manifest(path: Path, format_name: str, damaged: Callable[[Exception], Exception],
                       mismatch: Callable[[object], Exception]) -> dict | None:
    """The JSON manifest at ``path``, ``None`` when there is none. A file that is not JSON raises ``damaged(error)``;
    one whose ``format`` is not ``format_name`` raises ``mismatch(found format or None)``."""
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise damaged(error) from None
    if not isinstance(manifest, dict) or manifest.get("format") != format_name:
        raise mismatch(manifest.get("format") if isinstance(manifest, dict) else None)
    return manifest


def write_json_manifest(path: Path, manifest: dict) -> None:
    """Write ``manifest`` to ``path`` atomically (:func:`write_atomic`)."""
    write_atomic(path, json.dumps(manifest, indent=1).encode())


def flatten_rows(rows: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged per-token rows → ``(values [sum of lengths] float32, lengths [R] int64)``."""
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.int64)
    values = torch.tensor([w for r in rows for w in r], dtype=torch.float32)
    return values, lengths


def unflatten_rows(values: torch.Tensor, lengths: torch.Tensor) -> list[list[float]]:
    """The inverse of :func:`flatten_rows`."""
    return [chunk.tolist() for chunk in torch.split(values, lengths.tolist())]


def encode_pair_rows(chosen: list[list[float]], rejected: list[list[float]]) -> bytes:
    """Per-row chosen and rejected values as safetensors bytes (tensors ``chosen``, ``chosen_lengths``, ``rejected``,
    ``rejected_lengths``: :func:`flatten_rows`)."""
    (chosen_values, chosen_lengths), (rejected_values, rejected_lengths) = flatten_rows(chosen), flatten_rows(rejected)
    return save({"chosen": chosen_values, "chosen_lengths": chosen_lengths,
                 "rejected": rejected_values, "rejected_lengths": rejected_lengths})


def decode_pair_rows(data: bytes) -> tuple[list[list[float]], list[list[float]]]:
    """The inverse of :func:`encode_pair_rows`; bytes that are not such a file raise ``SafetensorError``,
    ``KeyError`` or ``RuntimeError``."""
    tensors = load(data)
    return (unflatten_rows(tensors["chosen"], tensors["chosen_lengths"]),
            unflatten_rows(tensors["rejected"], tensors["rejected_lengths"]))
