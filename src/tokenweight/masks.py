"""The shared mask helpers: the shift to the predicting-position alignment and back, pack-left, last set
position, position ids of padded rows.

Masks are ``[R, T]`` (bool or 0/1); rows are independent. *Token* alignment ``[R, L]``: index ``t`` is token
``t``. *Shifted* alignment ``[R, L-1]`` (log-probs, loss mask, token weights): index ``t`` is token ``t + 1``, the
token that position ``t`` predicts.
"""

from __future__ import annotations

import torch


def to_shifted(values: torch.Tensor) -> torch.Tensor:
    """Token alignment ``[R, L, ...]`` → shifted alignment ``[R, L-1, ...]`` (token 0 is predicted by no position)."""
    return values[:, 1:]


def from_shifted(values: torch.Tensor) -> torch.Tensor:
    """Shifted alignment ``[R, L-1]`` → token alignment ``[R, L]``, with 0 for token 0 (no position predicts it)."""
    return torch.nn.functional.pad(values, (1, 0))


def pack_left(values: torch.Tensor, mask: torch.Tensor,
              width: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gather each row's masked positions to the left, in order.

    Args:
        values: ``[R, T, ...]`` (any trailing dims, e.g. ``[R, T, d]`` states or ``[R, T]`` scalars).
        mask: ``[R, T]`` bool, the positions to keep.
        width: the largest row count of ``mask`` when the caller knows it (saves a host read), else ``None``.

    Returns:
        ``(packed [R, N, ...], packed_mask [R, N], order [R, N])`` with ``N`` the largest row count (at least 1);
        ``order[r, k]`` is the position in ``[0, T)`` of packed entry ``k``. The kept entries come first, then the
        row's other positions in order (``packed`` is *not* zeroed past ``packed_mask``). The positions are distinct
        within a row, so weights can be scattered back with ``scatter_(1, order, packed_weights)`` when they are 0
        off ``packed_mask``.
    """
    order, packed_mask = pack_order(mask, width)
    packed = values[torch.arange(values.shape[0], device=values.device)[:, None], order]
    return packed, packed_mask, order


def pack_order(mask: torch.Tensor, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(order [R, N], packed_mask [R, N])`` of :func:`pack_left`, without gathering any values (for a caller
    that gathers them itself, e.g. chunk by chunk)."""
    mask = mask.bool()
    counts = mask.sum(dim=1)
    if width is None:
        width = int(counts.max()) if mask.numel() else 0
    width = max(width, 1)
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :width]
    packed_mask = torch.arange(width, device=mask.device)[None, :] < counts[:, None]
    return order, packed_mask


def last_index(mask: torch.Tensor) -> torch.Tensor:
    """``[R, T]`` mask → ``[R]`` index of the last set position (-1 for an empty row)."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), positions, -1).max(dim=1).values


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """``[R, T]`` 0/1 mask → ``[R, T]`` position ids counting real tokens only (0 on leading padding)."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)
