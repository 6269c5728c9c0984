"""TDPO's sequential KL, shared by the ``tdpo`` scheme and TI-DPO's base loss (specs/related.md §3, tidpo.md §3).

    K(y) = Σ_{t ∈ response} KL(π_ref(·|s_t) ‖ π_θ(·|s_t)) = Σ_t Σ_v p_ref(v) (log p_ref(v) − log p_θ(v))

over the full vocabulary, unweighted; the margin offsets of TDPO1 (``K(y_l) − K(y_w)``) and TDPO2
(``α · (K(y_l) − sg K(y_w))``) are subtracted from Δ inside the pair loss. Both distributions use ``log_softmax`` in fp32 (softmax-then-log is
fp16-unsafe). Only response positions are evaluated, token-tiled, so at most one ``[tokens, vocab]`` tile of logits
per model exists at any time, forward or backward. In training the per-token KL comes from the policy's own scoring
pass (``LossContext.policy_kl``: the trainer hands the reference's hidden states to the policy forward, and the KL
shares the policy's head tiles); from hidden states alone, :func:`tdpo_kl` runs the same tiles.
"""

from __future__ import annotations

import torch
from accelerate.utils import extract_model_from_parallel

from tokenweight.head import OutputHead, output_head
from tokenweight.tiled_head import Tiling, tiled_kl


def tdpo_kl(policy_hidden: torch.Tensor, ref_hidden: torch.Tensor, policy_head: OutputHead, ref_head: OutputHead,
            loss_mask: torch.Tensor, tiling: Tiling = Tiling()) -> torch.Tensor:
    """Per-sequence KL ``K`` ``[N]`` (fp32) summed over the positions where ``loss_mask`` is set.

    Args:
        policy_hidden: ``[N, L-1, d]`` final hidden states of the policy (with grad), shifted alignment.
        ref_hidden: ``[N, L-1, d]`` final hidden states of the reference (treated as constants).
        policy_head, ref_head: the models' output heads (see :func:`tokenweight.logps.output_head`).
        loss_mask: ``[N, L-1]`` bool, the response positions.
        tiling: the head's tile sizes.

    Raises:
        FloatingPointError: a non-finite KL, naming the batch rows.
    """
    if policy_hidden.shape[:2] != loss_mask.shape or ref_hidden.shape[:2] != loss_mask.shape:
        raise ValueError(f"tdpo_kl: hidden states {tuple(policy_hidden.shape)} / {tuple(ref_hidden.shape)} do not "
                         f"match loss_mask {tuple(loss_mask.shape)}")
    mask = loss_mask.bool()
    return _summed_over_rows(tiled_kl(policy_hidden[mask], ref_hidden[mask], policy_head, ref_head, tiling), mask)


def _summed_over_rows(token_kl: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[N]`` sums of the per-token KLs ``[K]`` of the positions where ``mask`` ``[N, T]`` (bool) is set, in
    row-major order; raises :class:`FloatingPointError` naming the rows whose sum is not finite."""
    row_of_token = mask.nonzero()[:, 0]
    kl = torch.zeros(mask.shape[0], dtype=torch.float32, device=mask.device).index_add(0, row_of_token, token_kl)
    bad_rows = (~torch.isfinite(kl)).nonzero().flatten().tolist()
    if bad_rows:
        raise FloatingPointError(f"TDPO KL term is non-finite in batch rows {bad_rows}")
    return kl


def sequence_kl(ctx, setting: str) -> torch.Tensor:
    """``K`` ``[2B]`` of a batch's chosen then rejected rows from a :class:`~tokenweight.weights.base.LossContext`:
    the per-token KL of the policy's scoring pass (``policy_kl``) summed over the response, or, without it, computed
    from both models' final hidden states and output heads; ``setting`` names the flag that asked for the term in
    the error raised when the context has neither."""
    mask = ctx.inputs.loss_mask.bool()
    if ctx.policy_kl is not None:
        return _summed_over_rows(ctx.policy_kl[mask], mask)
    if ctx.policy_hidden is None or ctx.ref_hidden is None or ctx.ref_model is None:
        raise ValueError(f"the TDPO KL term ({setting}) needs a reference model and the final hidden states of both "
                         "models in the LossContext")
    heads = (output_head(extract_model_from_parallel(ctx.model)),
             output_head(extract_model_from_parallel(ctx.ref_model)))
    return tdpo_kl(ctx.policy_hidden, ctx.ref_hidden, *heads, mask)


def tdpo1_offset(kl: torch.Tensor) -> torch.Tensor:
    """TDPO1's margin offset ``K(y_l) − K(y_w)`` ``[B]`` from per-sequence KLs ``[2B]`` (chosen rows first); the
    gradient flows through both terms."""
    kl_chosen, kl_rejected = kl.chunk(2)
    return kl_rejected - kl_chosen


def tdpo2_offset(kl: torch.Tensor, alpha: float) -> torch.Tensor:
    """TDPO2's margin offset ``α · (K(y_l) − stopgrad K(y_w))`` ``[B]`` from per-sequence KLs ``[2B]`` (chosen rows
    first), to be subtracted from the margin inside ``−log σ(β · (Δ − offset))``."""
    kl_chosen, kl_rejected = kl.chunk(2)
    return alpha * (kl_rejected - kl_chosen.detach())
