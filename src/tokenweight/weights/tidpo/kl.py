"""The TDPO2 sequence KL used by TI-DPO's base loss (spec tidpo.md §3 "Weighted quantities").

    K(y) = Σ_{t ∈ response} KL(π_ref(·|s_t) ‖ π_θ(·|s_t)) = Σ_t Σ_v p_ref(v) (log p_ref(v) − log p_θ(v))

over the full vocabulary, unweighted. Both distributions use ``log_softmax`` in fp32 (softmax-then-log is
fp16-unsafe). Only response positions are evaluated: their hidden states are gathered into ``[K, d]`` and the
heads run over chunks of ``chunk_size`` tokens under non-reentrant activation checkpointing, so at most
``[chunk_size, V]`` logits per model exist at any time, forward or backward.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from tokenweight.logps import OutputHead


def _token_kl(policy_hidden: torch.Tensor, ref_hidden: torch.Tensor, policy_head: OutputHead,
              ref_head: OutputHead) -> torch.Tensor:
    """``[k, d]`` hidden states → ``[k]`` KL(π_ref ‖ π_θ) per token (gradient into the policy side only)."""
    policy_logp = torch.log_softmax(policy_head.logits(policy_hidden), dim=-1)
    with torch.no_grad():
        ref_logp = torch.log_softmax(ref_head.logits(ref_hidden), dim=-1)
    return (ref_logp.exp() * (ref_logp - policy_logp)).sum(dim=-1)


def tdpo_kl(policy_hidden: torch.Tensor, ref_hidden: torch.Tensor, policy_head: OutputHead, ref_head: OutputHead,
            loss_mask: torch.Tensor, chunk_size: int = 512) -> torch.Tensor:
    """Per-sequence KL ``K`` ``[N]`` (fp32) summed over the positions where ``loss_mask`` is set.

    Args:
        policy_hidden: ``[N, L-1, d]`` final hidden states of the policy (with grad), shifted alignment.
        ref_hidden: ``[N, L-1, d]`` final hidden states of the reference (treated as constants).
        policy_head, ref_head: the models' output heads (see :func:`tokenweight.logps.output_head`).
        loss_mask: ``[N, L-1]`` bool, the response positions.
        chunk_size: tokens per head evaluation.

    Raises:
        FloatingPointError: a non-finite KL, naming the batch rows.
    """
    if policy_hidden.shape[:2] != loss_mask.shape or ref_hidden.shape[:2] != loss_mask.shape:
        raise ValueError(f"tdpo_kl: hidden states {tuple(policy_hidden.shape)} / {tuple(ref_hidden.shape)} do not "
                         f"match loss_mask {tuple(loss_mask.shape)}")
    mask = loss_mask.bool()
    row_of_token = mask.nonzero()[:, 0]
    policy_tokens, ref_tokens = policy_hidden[mask], ref_hidden[mask].detach()
    needs_grad = torch.is_grad_enabled() and (
        policy_tokens.requires_grad or any(p.requires_grad for p in policy_head.module.parameters()))
    pieces = []
    for start in range(0, policy_tokens.shape[0], chunk_size):
        chunk = (policy_tokens[start:start + chunk_size], ref_tokens[start:start + chunk_size], policy_head, ref_head)
        pieces.append(checkpoint(_token_kl, *chunk, use_reentrant=False) if needs_grad else _token_kl(*chunk))
    token_kl = torch.cat(pieces) if pieces else policy_hidden.new_zeros(0, dtype=torch.float32)
    kl = torch.zeros(mask.shape[0], dtype=torch.float32, device=mask.device).index_add(0, row_of_token, token_kl)
    bad_rows = (~torch.isfinite(kl)).nonzero().flatten().tolist()
    if bad_rows:
        raise FloatingPointError(f"TDPO2 KL term is non-finite in batch rows {bad_rows}")
    return kl


def tdpo2_offset(kl: torch.Tensor, alpha: float) -> torch.Tensor:
    """TDPO2's margin offset ``α · (K(y_l) − stopgrad K(y_w))`` ``[B]`` from per-sequence KLs ``[2B]`` (chosen rows
    first), to be subtracted from the margin inside ``−log σ(β · (Δ − offset))``."""
    kl_chosen, kl_rejected = kl.chunk(2)
    return alpha * (kl_rejected - kl_chosen.detach())
