"""File helpers of the on-disk caches (AttentionPO weights, reference log-probs): atomic writes, ragged rows."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: a reader sees the old file or the new one."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def flatten_rows(rows: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged per-token rows → ``(values [sum of lengths] float32, lengths [R] int64)``."""
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.int64)
    values = torch.tensor([w for r in rows for w in r], dtype=torch.float32)
    return values, lengths


def unflatten_rows(values: torch.Tensor, lengths: torch.Tensor) -> list[list[float]]:
    """The inverse of :func:`flatten_rows`."""
    return [chunk.tolist() for chunk in torch.split(values, lengths.tolist())]
