"""Mask helpers shared by the schemes (shifted alignment: ``[R, L-1]`` masks over the predicting positions)."""

from __future__ import annotations

import torch


def pack_left(values: torch.Tensor, mask: torch.Tensor,
              width: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gather each row's masked positions to the left, in order.

    Args:
        values: ``[R, T, ...]`` per-position values (e.g. hidden states ``[R, T, d]``).
        mask: ``[R, T]`` bool, the positions to keep.
        width: the largest row count of ``mask`` when the caller knows it (saves a host read), else ``None``.

    Returns:
        ``(packed [R, N, ...], packed_mask [R, N], order [R, N])`` with ``N`` the largest row count (at least 1);
        ``order[r, k]`` is the position in ``[0, T)`` of packed entry ``k`` (distinct within a row, so values
        can be scattered back with ``scatter_(1, order, packed_values)`` when they are 0 off ``packed_mask``).
    """
    counts = mask.sum(dim=1)
    if width is None:
        width = int(counts.max()) if mask.numel() else 0
    width = max(width, 1)
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :width]
    packed = values[torch.arange(values.shape[0], device=values.device)[:, None], order]
    packed_mask = torch.arange(width, device=mask.device)[None, :] < counts[:, None]
    return packed, packed_mask, order
