"""OTPO's cost between chosen and rejected response states (Li et al. 2025; official code: Mimasss2/OTPO)::

    dist_ij = ‖h_c,i − h_r,j‖₂                       (Euclidean, not squared; fp32)
    D       = max(max_ij dist_ij, max_i ‖h_c,i‖, max_j ‖h_r,j‖) + 1e-6
    C_ij    = (dist_ij + 1e-6) / D   if D > 1   else   dist_ij + 1e-6

The official code runs POT on the full padded ``(L−1) × (L−1)`` matrix with prompt and padding states replaced by
zero vectors: those get exactly zero mass, and their only effect is through ``D`` (the norms of the response
states), which is reproduced here on the response block alone. Every valid ``C_ij`` lies in ``(0, 1]`` when
``D > 1`` and in ``(0, 1 + 1e-6]`` otherwise.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

MAX_COST = 1.0 + 1e-5
"""An upper bound on every valid entry of :func:`otpo_cost` (passed to the solver, which then need not look)."""


CHUNK_BYTES = 4 * 2**20
"""On CPU, pairs are processed in chunks whose fp32 copy of the states ``[b, max(N, M), d]`` stays under this
(at least one pair per chunk). Each fresh allocation over glibc's mmap threshold (32 MiB at most) is mapped anew
and page-faulted in, which costs more than the arithmetic of an elementwise pass, and small chunks stay in cache:
at d=2048 and B=8 the ``otpo`` step ran 1.07× (1024 tokens, 1 pair per chunk) and 1.45× (256 tokens, 2 pairs)
faster than with 16 MiB chunks, and 1.3× / 1.6× faster than with the whole batch at once. CUDA's caching allocator
reuses memory, so there all pairs form one chunk."""


def otpo_cost(chosen_hidden: torch.Tensor, rejected_hidden: torch.Tensor, chosen_mask: torch.Tensor,
              rejected_mask: torch.Tensor, check: bool = True, chosen_positions: torch.Tensor | None = None,
              rejected_positions: torch.Tensor | None = None) -> torch.Tensor:
    """OTPO's normalised cost ``C`` ``[B, N, M]`` from ``[B, N, d]`` / ``[B, M, d]`` states and bool masks.

    Entries outside ``chosen_mask ⊗ rejected_mask`` are meaningless. The distances use the matmul form
    ``‖x‖² + ‖y‖² − 2x·y`` (as fp32 ``torch.cdist`` does upstream; IEEE fp32 even under TF32), on states from which
    each pair's mean state is subtracted (exact in real arithmetic; final hidden states share a large common
    component). The matmul form turns an exact 0 into about ``sqrt(eps) · ‖x‖`` — and every chat template makes the
    first response states of chosen and rejected identical — so each row's and each column's nearest entry is
    recomputed as ``‖x − y‖`` directly (``O((N + M) d)``). Pairs are independent; they are processed in chunks
    (:data:`CHUNK_BYTES`), and states off the masks are never read.

    Args:
        chosen_hidden: ``[B, N, d]`` states (or ``[B, T, d]`` with ``chosen_positions``), any float dtype; the
            work is in fp32 (fp64 for fp64 states).
        chosen_mask: ``[B, N]`` bool, the valid rows.
        check: raise on an empty response or a non-finite valid state (one host read); with ``check=False`` the
            caller checks :func:`response_problems` itself.
        chosen_positions: optional ``[B, N]`` int64: row ``k`` of pair ``b`` is ``chosen_hidden[b,
            chosen_positions[b, k]]`` (the ``order`` of :func:`~tokenweight.masks.pack_order`), so that unpacked
            states are gathered chunk by chunk instead of packed whole first. ``rejected_*`` likewise.

    Raises:
        ValueError: a response is empty or a valid hidden state is NaN/inf (naming the batch rows).
    """
    _check_shapes(chosen_hidden, rejected_hidden, chosen_mask, rejected_mask, chosen_positions, rejected_positions)
    (batch, n), m, hidden = chosen_mask.shape, rejected_mask.shape[1], chosen_hidden.shape[2]
    dtype = torch.promote_types(chosen_hidden.dtype, torch.float32)
    cost = torch.empty(batch, n, m, dtype=dtype, device=chosen_hidden.device)
    norms = []
    with _ieee_fp32_matmul():  # TF32 (e.g. `--tf32 true`) would ruin near-zero distances
        for pairs in _chunks(batch, max(n, m) * hidden * dtype.itemsize, chosen_hidden.device):
            chosen = _gather_states(chosen_hidden[pairs], chosen_mask[pairs], _rows(chosen_positions, pairs), dtype)
            rejected = _gather_states(rejected_hidden[pairs], rejected_mask[pairs], _rows(rejected_positions, pairs),
                                      dtype)
            norms.append(_chunk_cost(chosen, rejected, chosen_mask[pairs], rejected_mask[pairs], cost[pairs]))
    if check:
        chosen_norms, rejected_norms = (torch.cat(side) for side in zip(*norms))
        chosen_norms = torch.where(chosen_mask, chosen_norms, 0.0)  # an empty response reads a garbage row
        rejected_norms = torch.where(rejected_mask, rejected_norms, 0.0)
        raise_response_problems(response_problems(chosen_mask, rejected_mask, chosen_norms, rejected_norms).tolist())
    return cost


def _chunks(batch: int, bytes_per_pair: int, device: torch.device) -> list[slice]:
    """Slices of ``range(batch)``: one on CUDA, else chunks of at most :data:`CHUNK_BYTES` per state copy."""
    size = batch if device.type == "cuda" else max(1, CHUNK_BYTES // max(bytes_per_pair, 1))
    return [slice(start, min(start + size, batch)) for start in range(0, batch, size)]


def _rows(positions: torch.Tensor | None, pairs: slice) -> torch.Tensor | None:
    return None if positions is None else positions[pairs]


def _gather_states(hidden: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor | None,
                   dtype: torch.dtype) -> torch.Tensor:
    """A new ``dtype`` ``[b, N, d]`` copy of the rows ``positions`` (default ``0 … N−1``) of ``hidden`` ``[b, T, d]``
    in which every slot off ``mask`` ``[b, N]`` holds the pair's first valid row instead (so NaN garbage there is
    never read, and maxima over all rows are maxima over the valid ones)."""
    batch, width = mask.shape
    if positions is None:
        positions = torch.arange(width, device=mask.device).expand(batch, width)
    first_valid = positions.gather(1, mask.to(torch.uint8).argmax(dim=1, keepdim=True))
    return _gather_rows(hidden.detach(), torch.where(mask, positions, first_valid)).to(dtype)


def _chunk_cost(chosen: torch.Tensor, rejected: torch.Tensor, chosen_mask: torch.Tensor,
                rejected_mask: torch.Tensor, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Write the cost of ``b`` pairs into ``out`` ``[b, N, M]`` from states ``[b, N, d]``, ``[b, M, d]`` (valid
    rows repeated off the masks, see :func:`_gather_states`; overwritten); return their norms ``[b, N]``,
    ``[b, M]`` (NaN/inf where a valid state is not finite)."""
    chosen_norms, rejected_norms = chosen.norm(dim=2), rejected.norm(dim=2)
    counts = (chosen_mask.sum(dim=1) + rejected_mask.sum(dim=1)).clamp_min(1).to(chosen.dtype)
    sums = torch.bmm(chosen_mask.to(chosen.dtype)[:, None, :], chosen) \
        + torch.bmm(rejected_mask.to(rejected.dtype)[:, None, :], rejected)  # [b, 1, d]; mat-vecs, fast on CPU
    center = sums / counts[:, None, None]
    chosen.sub_(center)
    rejected.sub_(center)
    valid = chosen_mask[:, :, None] & rejected_mask[:, None, :]
    _matmul_distances(chosen, rejected, out)
    _exact_nearest(out, chosen, rejected, valid)  # leaves 0 off `valid`
    largest_norm = torch.maximum(chosen_norms.amax(dim=1), rejected_norms.amax(dim=1))
    normaliser = torch.maximum(out.amax(dim=(1, 2)), largest_norm) + 1e-6
    normaliser = torch.where(normaliser > 1, normaliser, torch.ones_like(normaliser))
    out.add_(1e-6).div_(normaliser[:, None, None])
    return chosen_norms, rejected_norms


def _matmul_distances(chosen: torch.Tensor, rejected: torch.Tensor, out: torch.Tensor) -> None:
    """Write into ``out`` ``[B, N, M]`` the Euclidean distances by ``‖x‖² + ‖y‖² − 2x·y`` (one batched matmul)."""
    rejected_squares = rejected.norm(dim=2).square_()[:, None, :]
    torch.baddbmm(rejected_squares, chosen, rejected.transpose(1, 2), alpha=-2.0, out=out)
    out.add_(chosen.norm(dim=2).square_()[:, :, None]).clamp_min_(0.0).sqrt_()


def _exact_nearest(dist: torch.Tensor, chosen: torch.Tensor, rejected: torch.Tensor, valid: torch.Tensor) -> None:
    """Overwrite, in ``dist`` ``[B, N, M]``, each row's and each column's smallest valid entry by ``‖x − y‖``,
    and the entries off ``valid`` by 0."""
    dist.masked_fill_(~valid, float("inf"))
    nearest_col = dist.argmin(dim=2)  # [B, N]
    nearest_row = dist.argmin(dim=1)  # [B, M]
    dist.masked_fill_(~valid, 0.0)
    row_exact = _gather_rows(rejected, nearest_col).sub_(chosen).norm(dim=2)
    col_exact = _gather_rows(chosen, nearest_row).sub_(rejected).norm(dim=2)
    dist.scatter_(2, nearest_col[:, :, None], row_exact[:, :, None])
    dist.scatter_(1, nearest_row[:, None, :], col_exact[:, None, :])


def _gather_rows(states: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``states[b, index[b, k]]`` ``[B, K, d]`` for ``states`` ``[B, T, d]`` and ``index`` ``[B, K]`` (one
    ``index_select`` on the flattened rows: on CPU ~2× faster than advanced indexing)."""
    batch, length, hidden = states.shape
    offsets = torch.arange(batch, device=index.device)[:, None] * length
    return states.reshape(batch * length, hidden).index_select(0, (index + offsets).flatten()).view(
        batch, index.shape[1], hidden)


@contextmanager
def _ieee_fp32_matmul():
    """Full-precision fp32 matmuls on CUDA inside the block, whatever the global TF32 setting.

    ``torch.backends.cuda.matmul.fp32_precision`` exists from PyTorch 2.9; older versions have ``allow_tf32``.
    """
    matmul = torch.backends.cuda.matmul
    name, ieee = ("fp32_precision", "ieee") if hasattr(matmul, "fp32_precision") else ("allow_tf32", False)
    previous = getattr(matmul, name)
    setattr(matmul, name, ieee)
    try:
        yield
    finally:
        setattr(matmul, name, previous)


def _check_shapes(chosen_hidden: torch.Tensor, rejected_hidden: torch.Tensor, chosen_mask: torch.Tensor,
                  rejected_mask: torch.Tensor, chosen_positions: torch.Tensor | None,
                  rejected_positions: torch.Tensor | None) -> None:
    """Raise on misshaped states, masks or positions."""
    if chosen_hidden.dim() != 3 or rejected_hidden.dim() != 3:
        raise ValueError("chosen_hidden and rejected_hidden must be [B, N, d] and [B, M, d]")
    if chosen_mask.dtype != torch.bool or rejected_mask.dtype != torch.bool:
        raise TypeError("chosen_mask and rejected_mask must be bool tensors")
    for side, states, mask, positions in (("chosen", chosen_hidden, chosen_mask, chosen_positions),
                                          ("rejected", rejected_hidden, rejected_mask, rejected_positions)):
        rows = states.shape[:2] if positions is None else positions.shape
        if mask.dim() != 2 or mask.shape != rows or (positions is not None and positions.shape[0] != states.shape[0]):
            raise ValueError(f"{side} mask {tuple(mask.shape)} does not match its hidden states "
                             f"{tuple(states.shape)}" + ("" if positions is None else
                                                         f" and positions {tuple(positions.shape)}"))
    if chosen_hidden.shape[0] != rejected_hidden.shape[0] or chosen_hidden.shape[2] != rejected_hidden.shape[2]:
        raise ValueError(f"chosen {tuple(chosen_hidden.shape)} and rejected {tuple(rejected_hidden.shape)} hidden "
                         "states differ in batch size or hidden size")


PROBLEMS = ("empty chosen response", "empty rejected response", "non-finite chosen hidden state",
            "non-finite rejected hidden state")


def response_problems(chosen_mask: torch.Tensor, rejected_mask: torch.Tensor, chosen_norms: torch.Tensor,
                      rejected_norms: torch.Tensor) -> torch.Tensor:
    """``[4, B]`` bool flags, one row per entry of :data:`PROBLEMS`, from the masks and the norms ``[B, N]``,
    ``[B, M]`` of the zero-filled states (a NaN/inf entry makes its norm NaN/inf). No host read."""
    return torch.stack([
        ~chosen_mask.any(dim=1),
        ~rejected_mask.any(dim=1),
        ~torch.isfinite(chosen_norms).all(dim=1),
        ~torch.isfinite(rejected_norms).all(dim=1),
    ])


def raise_response_problems(flags: list[list[bool]]) -> None:
    """Raise ``ValueError`` naming the batch rows of every problem flagged in ``flags`` (``[4][B]``)."""
    messages = [f"{problem} in batch rows {[b for b, flag in enumerate(row) if flag]}"
                for problem, row in zip(PROBLEMS, flags) if any(row)]
    if messages:
        raise ValueError("OTPO weights: " + "; ".join(messages))
