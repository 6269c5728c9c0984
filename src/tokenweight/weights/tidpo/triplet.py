"""TI-DPO triplet loss on per-token log-ratios (spec tidpo.md §2 Eq. 13, §3 "Triplet", §9.6).

With ``d``, ``b``, ``c`` the log-ratios ``log π_θ − log π_ref`` of the anchor, chosen and rejected responses,
left-aligned to their first response token::

    dist_pos = Σ_{k < min(len_a, len_w)} (d_k − b_k)²,   dist_neg = Σ_{k < min(len_a, len_l)} (d_k − c_k)²
    L = mean_pairs relu(dist_pos − dist_neg + margin)

Squared distances over the overlapping prefix, no square root, no length normalisation; gradient flows into all
three legs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tokenweight.masks import pack_left


def left_align(values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's masked entries of ``values`` ``[N, M]`` packed to the front (order kept, :func:`pack_left`), zeros
    after them.

    Returns ``(aligned [N, W], lengths [N])`` with ``W`` the largest row length (≥ 1); differentiable in ``values``.
    """
    packed, packed_mask, _ = pack_left(values, mask)
    return packed.masked_fill(~packed_mask, 0.0), packed_mask.sum(dim=1)


def _prefix_sq_dist(x: torch.Tensor, y: torch.Tensor, len_x: torch.Tensor, len_y: torch.Tensor) -> torch.Tensor:
    """Σ_{k < min(len_x, len_y)} (x_k − y_k)² per row of left-aligned ``[B, Mx]``, ``[B, My]`` → ``[B]``."""
    width = max(x.shape[1], y.shape[1])
    x, y = F.pad(x, (0, width - x.shape[1])), F.pad(y, (0, width - y.shape[1]))
    overlap = torch.arange(width, device=x.device) < torch.minimum(len_x, len_y).unsqueeze(1)
    return ((x - y) ** 2 * overlap).sum(dim=1)


def triplet_loss(anchor: torch.Tensor, chosen: torch.Tensor, rejected: torch.Tensor, anchor_len: torch.Tensor,
                 chosen_len: torch.Tensor, rejected_len: torch.Tensor,
                 margin: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triplet loss of ``B`` pairs from left-aligned, zero-padded log-ratios.

    Args:
        anchor, chosen, rejected: ``[B, Ma]``, ``[B, Mw]``, ``[B, Ml]`` log-ratios (widths may differ).
        anchor_len, chosen_len, rejected_len: ``[B]`` numbers of valid tokens.
        margin: the hinge margin (``tidpo_margin``).

    Returns:
        ``(loss, dist_pos, dist_neg)``: the scalar mean hinge loss and the ``[B]`` distances.

    Raises:
        FloatingPointError: non-finite distances, naming the pairs.
    """
    dist_pos = _prefix_sq_dist(anchor, chosen, anchor_len, chosen_len)
    dist_neg = _prefix_sq_dist(anchor, rejected, anchor_len, rejected_len)
    bad_pairs = (~torch.isfinite(dist_pos) | ~torch.isfinite(dist_neg)).nonzero().flatten().tolist()
    if bad_pairs:
        raise FloatingPointError(f"TI-DPO triplet distances are non-finite for pairs {bad_pairs}")
    return torch.relu(dist_pos - dist_neg + margin).mean(), dist_pos, dist_neg
