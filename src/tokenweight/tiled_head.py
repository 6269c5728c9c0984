"""The token-tiled output head: per-token log-probs, their statistics and the full-vocabulary KL of two models,
over tiles of at most ``tokens × vocab`` logits, forward and backward.

The positions to score are first gathered into ``[K, d]`` (completion positions only, see :mod:`tokenweight.logps`).
The forward walks tiles of ``tokens`` positions and, inside each, slices of ``vocab`` vocabulary entries, keeping an
online (rescaled) softmax per position: the running max ``m``, ``Σ e``, ``Σ e·z``, ``Σ e²`` with ``e = exp(z − m)``,
``Σ z``, the running arg-max and the label's logit. It keeps only ``logsumexp`` per position for the backward, which
recomputes each tile's logits and adds ``dz = g · (onehot(label) − softmax(z))`` into the gradients of the hidden
states, the output weight and its bias (vocabulary-outer, so each weight slice's gradient is summed over every token
in fp32 before it is written once). At most one ``[tokens, vocab]`` fp32 tile (and a few temporaries of its size)
exists at a time, whatever the batch, the sequence length or the vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tokenweight.head import OutputHead

DEFAULT_TILE_TOKENS = 1024
DEFAULT_TILE_VOCAB = 8192  # one fp32 tile: 1024 × 8192 × 4 B = 32 MiB


@dataclass(frozen=True)
class Tiling:
    """At most ``tokens`` positions × ``vocab`` vocabulary entries of logits per tile."""

    tokens: int = DEFAULT_TILE_TOKENS
    vocab: int = DEFAULT_TILE_VOCAB

    def __post_init__(self):
        if self.tokens < 1 or self.vocab < 1:
            raise ValueError(f"tile sizes must be positive, got {self.tokens} tokens × {self.vocab} vocabulary")


def _spans(total: int, size: int) -> list[tuple[int, int]]:
    return [(start, min(start + size, total)) for start in range(0, total, size)]


class _OnlineSoftmax:
    """Running softmax sums of ``k`` positions over vocabulary slices (module docstring), all ``[k]`` fp32."""

    def __init__(self, labels: torch.Tensor, with_stats: bool):
        k, device = labels.shape[0], labels.device
        self.labels, self.with_stats = labels, with_stats
        self.max = torch.full((k,), -torch.inf, device=device)
        self.sum_exp = torch.zeros(k, device=device)
        self.picked = torch.zeros(k, device=device)
        if with_stats:
            self.sum_exp_logit = torch.zeros(k, device=device)
            self.sum_exp_sq = torch.zeros(k, device=device)
            self.sum_logit = torch.zeros(k, device=device)
            self.best = torch.full((k,), -torch.inf, device=device)
            self.argmax = torch.zeros(k, dtype=torch.long, device=device)

    def add(self, logits: torch.Tensor, start: int) -> None:
        """Fold in the logits ``[k, S]`` of vocabulary entries ``start..start+S-1``."""
        slice_max, slice_arg = logits.max(dim=-1)
        new_max = torch.maximum(self.max, slice_max)
        rescale = torch.exp(self.max - new_max)
        exp = torch.exp(logits - new_max[:, None])
        self.sum_exp = self.sum_exp * rescale + exp.sum(dim=-1)
        local = self.labels - start
        inside = (local >= 0) & (local < logits.shape[1])
        label_logit = logits.gather(1, local.clamp(0, logits.shape[1] - 1)[:, None]).squeeze(1)
        self.picked = torch.where(inside, label_logit, self.picked)
        if self.with_stats:
            self.sum_exp_logit = self.sum_exp_logit * rescale + (exp * logits).sum(dim=-1)
            self.sum_exp_sq = self.sum_exp_sq * rescale.square() + exp.square().sum(dim=-1)
            self.sum_logit += logits.sum(dim=-1)
            better = slice_max > self.best  # strict: the first arg-max over the whole vocabulary wins ties
            self.argmax = torch.where(better, slice_arg + start, self.argmax)
            self.best = torch.where(better, slice_max, self.best)
        self.max = new_max

    def log_normaliser(self) -> torch.Tensor:
        return self.max + self.sum_exp.log()


def _score_tiles(hidden, weight, bias, labels, head: OutputHead, tiling: Tiling, with_stats: bool):
    """``(logps [K], log_normaliser [K], stats)`` with ``stats`` ``[entropy, mean_logit, is_top1,
    log_sum_sq_probs]`` (each ``[K]``) or ``[]``; no graph."""
    count, vocab = hidden.shape[0], weight.shape[0]
    columns = {name: [] for name in ("logps", "lse", "entropy", "mean", "top1", "sumsq")}
    for t0, t1 in _spans(count, tiling.tokens):
        online = _OnlineSoftmax(labels[t0:t1], with_stats)
        for v0, v1 in _spans(vocab, tiling.vocab):
            online.add(head.slice_logits(hidden[t0:t1], v0, v1, weight, bias), v0)
        lse = online.log_normaliser()
        columns["logps"].append(online.picked - lse)
        columns["lse"].append(lse)
        if with_stats:
            columns["entropy"].append(lse - online.sum_exp_logit / online.sum_exp)
            columns["mean"].append(online.sum_logit / vocab)
            columns["top1"].append(online.argmax == online.labels)
            columns["sumsq"].append(online.sum_exp_sq.log() - 2 * online.sum_exp.log())  # Σp² ≥ 1/V: no underflow
    if count == 0:
        empty = hidden.new_zeros(0, dtype=torch.float32)
        stats = [empty, empty, torch.zeros(0, dtype=torch.bool, device=hidden.device), empty] if with_stats else []
        return empty, empty, stats
    names = ("entropy", "mean", "top1", "sumsq") if with_stats else ()
    return torch.cat(columns["logps"]), torch.cat(columns["lse"]), [torch.cat(columns[name]) for name in names]


def _head_backward(hidden, weight, bias, head: OutputHead, tiling: Tiling, logit_grad,
                   needs: tuple[bool, bool, bool]):
    """Gradients ``(d hidden [K, d], d weight [V, d], d bias [V])`` (``None`` where not needed) of a loss whose
    gradient w.r.t. the logits of tile ``[t0:t1] × [v0:v1]`` is ``logit_grad(t0, t1, v0, v1, logits)``; ``weight``
    and ``bias`` are the head's tensors the forward used."""
    grad_hidden = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device) if needs[0] else None
    grad_weight = torch.zeros_like(weight) if needs[1] else None
    grad_bias = torch.zeros_like(bias) if needs[2] and bias is not None else None
    for v0, v1 in _spans(weight.shape[0], tiling.vocab):
        slice_weight = torch.zeros((v1 - v0, weight.shape[1]), dtype=torch.float32, device=weight.device)
        for t0, t1 in _spans(hidden.shape[0], tiling.tokens):
            h = hidden[t0:t1]
            logits = head.slice_logits(h, v0, v1, weight, bias)
            pre_grad = logit_grad(t0, t1, v0, v1, logits) * head.transform_grad(logits)  # [k, S] fp32
            if grad_hidden is not None:
                grad_hidden[t0:t1] += pre_grad.to(weight.dtype).matmul(weight[v0:v1]).float()
            if grad_weight is not None:
                slice_weight += pre_grad.t().to(h.dtype).matmul(h).float()
            if grad_bias is not None:
                grad_bias[v0:v1] += pre_grad.sum(dim=0).to(bias.dtype)
        if grad_weight is not None:
            grad_weight[v0:v1] = slice_weight.to(weight.dtype)
    return (None if grad_hidden is None else grad_hidden.to(hidden.dtype)), grad_weight, grad_bias


class _TiledTokenScores(torch.autograd.Function):
    """``(logps [K], *stats)`` of ``labels`` ``[K]`` given ``hidden`` ``[K, d]``; differentiable in ``logps`` only
    (w.r.t. ``hidden``, the head's weight and bias)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, head, tiling, with_stats):
        logps, lse, stats = _score_tiles(hidden, weight, bias, labels, head, tiling, with_stats)
        ctx.save_for_backward(hidden, weight, bias, labels, lse)
        ctx.head, ctx.tiling = head, tiling
        ctx.mark_non_differentiable(*stats)
        return (logps, *stats)

    @staticmethod
    def backward(ctx, grad_logps, *unused):
        ctx.head.gather()
        hidden, weight, bias, labels, lse = ctx.saved_tensors

        def logit_grad(t0, t1, v0, v1, logits):
            grad = -grad_logps[t0:t1, None] * torch.exp(logits - lse[t0:t1, None])
            local = labels[t0:t1] - v0
            inside = ((local >= 0) & (local < v1 - v0)).nonzero().squeeze(1)
            grad[inside, local[inside]] += grad_logps[t0:t1][inside]
            return grad

        grads = _head_backward(hidden, weight, bias, ctx.head, ctx.tiling, logit_grad, ctx.needs_input_grad[:3])
        return (*grads, None, None, None, None)


def tiled_token_scores(hidden: torch.Tensor, labels: torch.Tensor, head: OutputHead, tiling: Tiling = Tiling(),
                       with_stats: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Per-token ``log p(label)`` ``[K]`` fp32 of the positions ``hidden`` ``[K, d]``, ``labels`` ``[K]``, and, when
    ``with_stats``, ``[entropy, mean_logit, is_top1, log_sum_sq_probs]`` ``[K]`` each (detached), else ``[]``."""
    logps, *stats = _TiledTokenScores.apply(hidden, head.weight, head.bias, labels, head, tiling, with_stats)
    return logps, stats


class _TiledKL(torch.autograd.Function):
    """``KL(π_ref ‖ π_θ)`` ``[K]`` per position from both models' hidden states ``[K, d]``; differentiable w.r.t. the
    policy side (its hidden states, weight and bias)."""

    @staticmethod
    def forward(ctx, policy_hidden, weight, bias, ref_hidden, policy_head, ref_head, tiling):
        kl, policy_lse, ref_lse = [], [], []
        ref_weight, ref_bias = ref_head.weight, ref_head.bias
        vocab = weight.shape[0]
        for t0, t1 in _spans(policy_hidden.shape[0], tiling.tokens):
            k = t1 - t0
            ref_max = torch.full((k,), -torch.inf, device=policy_hidden.device)
            policy_max = ref_max.clone()
            ref_sum, policy_sum, cross = (torch.zeros(k, device=policy_hidden.device) for _ in range(3))
            for v0, v1 in _spans(vocab, tiling.vocab):
                policy_logits = policy_head.slice_logits(policy_hidden[t0:t1], v0, v1, weight, bias)
                ref_logits = ref_head.slice_logits(ref_hidden[t0:t1], v0, v1, ref_weight, ref_bias)
                new_ref_max = torch.maximum(ref_max, ref_logits.max(dim=-1).values)
                new_policy_max = torch.maximum(policy_max, policy_logits.max(dim=-1).values)
                ref_rescale = torch.exp(ref_max - new_ref_max)
                ref_exp = torch.exp(ref_logits - new_ref_max[:, None])
                ref_sum = ref_sum * ref_rescale + ref_exp.sum(dim=-1)
                cross = cross * ref_rescale + (ref_exp * (ref_logits - policy_logits)).sum(dim=-1)
                policy_sum = policy_sum * torch.exp(policy_max - new_policy_max) + torch.exp(
                    policy_logits - new_policy_max[:, None]).sum(dim=-1)
                ref_max, policy_max = new_ref_max, new_policy_max
            ref_lse.append(ref_max + ref_sum.log())
            policy_lse.append(policy_max + policy_sum.log())
            kl.append(cross / ref_sum - ref_lse[-1] + policy_lse[-1])
        empty = policy_hidden.new_zeros(0, dtype=torch.float32)
        policy_lse, ref_lse = (torch.cat(x) if x else empty for x in (policy_lse, ref_lse))
        ctx.save_for_backward(policy_hidden, weight, bias, ref_hidden, policy_lse, ref_lse)
        ctx.heads, ctx.tiling = (policy_head, ref_head), tiling
        return torch.cat(kl) if kl else empty

    @staticmethod
    def backward(ctx, grad_kl):
        policy_head, ref_head = ctx.heads
        policy_head.gather()
        ref_head.gather()
        policy_hidden, weight, bias, ref_hidden, policy_lse, ref_lse = ctx.saved_tensors

        ref_weight, ref_bias = ref_head.weight, ref_head.bias  # read (gathered) once

        def logit_grad(t0, t1, v0, v1, logits):  # d KL / d z_θ = p_θ − p_ref
            ref_logits = ref_head.slice_logits(ref_hidden[t0:t1], v0, v1, ref_weight, ref_bias)
            ref_probs = torch.exp(ref_logits - ref_lse[t0:t1, None])
            return grad_kl[t0:t1, None] * (torch.exp(logits - policy_lse[t0:t1, None]) - ref_probs)

        grads = _head_backward(policy_hidden, weight, bias, policy_head, ctx.tiling, logit_grad,
                               ctx.needs_input_grad[:3])
        return (*grads, None, None, None, None)


def tiled_kl(policy_hidden: torch.Tensor, ref_hidden: torch.Tensor, policy_head: OutputHead, ref_head: OutputHead,
             tiling: Tiling = Tiling()) -> torch.Tensor:
    """``[K]`` fp32 ``Σ_v p_ref(v) (log p_ref(v) − log p_θ(v))`` of the positions ``[K, d]`` of both models (same
    vocabulary); gradient into the policy side only."""
    return _TiledKL.apply(policy_hidden, policy_head.weight, policy_head.bias, ref_hidden.detach(), policy_head,
                          ref_head, tiling)
