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

Given a second model's hidden states at the same positions (the reference's), the same tiles also give the
full-vocabulary ``KL(π_ref ‖ π_θ)`` per position (TDPO's and TI-DPO's): the reference's logits are computed beside the
policy's in each tile (forward and backward), so the KL shares the policy's logits and their backward recompute
instead of a pass of its own, and its gradient ``p_θ − p_ref`` is added to the same tile's ``dz``.
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


@dataclass(frozen=True)
class Reference:
    """A second model's view of the positions being scored: its hidden states ``[K, d]`` (no grad) and its head."""

    hidden: torch.Tensor
    head: OutputHead


class _OnlineKL:
    """Running sums of ``KL(π_ref ‖ π_θ)`` of ``k`` positions over vocabulary slices, all ``[k]`` fp32: the
    reference's running max ``m``, ``Σ e`` and ``Σ e·(z_ref − z_θ)`` with ``e = exp(z_ref − m)``."""

    def __init__(self, k: int, device: torch.device):
        self.max = torch.full((k,), -torch.inf, device=device)
        self.sum_exp = torch.zeros(k, device=device)
        self.cross = torch.zeros(k, device=device)

    def add(self, ref_logits: torch.Tensor, policy_logits: torch.Tensor) -> None:
        """Fold in both models' logits ``[k, S]`` of the same vocabulary slice."""
        new_max = torch.maximum(self.max, ref_logits.max(dim=-1).values)
        rescale = torch.exp(self.max - new_max)
        exp = torch.exp(ref_logits - new_max[:, None])
        self.sum_exp = self.sum_exp * rescale + exp.sum(dim=-1)
        self.cross = self.cross * rescale + (exp * (ref_logits - policy_logits)).sum(dim=-1)
        self.max = new_max

    def log_normaliser(self) -> torch.Tensor:
        return self.max + self.sum_exp.log()

    def kl(self, policy_log_normaliser: torch.Tensor) -> torch.Tensor:
        return self.cross / self.sum_exp - self.log_normaliser() + policy_log_normaliser


def _score_tiles(hidden, weight, bias, labels, head: OutputHead, tiling: Tiling, with_stats: bool,
                 reference: Reference | None = None):
    """``(logps [K], log_normaliser [K], stats, kl, ref_log_normaliser)`` with ``stats`` ``[entropy, mean_logit,
    is_top1, log_sum_sq_probs]`` (each ``[K]``) or ``[]``, and ``kl``, ``ref_log_normaliser`` ``[K]`` with a
    ``reference`` (else ``None``); no graph."""
    count, vocab = hidden.shape[0], weight.shape[0]
    columns = {name: [] for name in ("logps", "lse", "entropy", "mean", "top1", "sumsq", "kl", "ref_lse")}
    if reference is not None:
        ref_weight, ref_bias = reference.head.weight, reference.head.bias  # read (gathered) once
    for t0, t1 in _spans(count, tiling.tokens):
        online = _OnlineSoftmax(labels[t0:t1], with_stats)
        online_kl = None if reference is None else _OnlineKL(t1 - t0, hidden.device)
        for v0, v1 in _spans(vocab, tiling.vocab):
            logits = head.slice_logits(hidden[t0:t1], v0, v1, weight, bias)
            if online_kl is not None:
                online_kl.add(reference.head.slice_logits(reference.hidden[t0:t1], v0, v1, ref_weight, ref_bias),
                              logits)
            online.add(logits, v0)
        lse = online.log_normaliser()
        columns["logps"].append(online.picked - lse)
        columns["lse"].append(lse)
        if with_stats:
            columns["entropy"].append(lse - online.sum_exp_logit / online.sum_exp)
            columns["mean"].append(online.sum_logit / vocab)
            columns["top1"].append(online.argmax == online.labels)
            columns["sumsq"].append(online.sum_exp_sq.log() - 2 * online.sum_exp.log())  # Σp² ≥ 1/V: no underflow
        if online_kl is not None:
            columns["kl"].append(online_kl.kl(lse))
            columns["ref_lse"].append(online_kl.log_normaliser())

    def joined(name: str) -> torch.Tensor:
        if count:
            return torch.cat(columns[name])
        return torch.zeros(0, dtype=torch.bool if name == "top1" else torch.float32, device=hidden.device)

    stats = [joined(name) for name in (("entropy", "mean", "top1", "sumsq") if with_stats else ())]
    kl, ref_lse = (None, None) if reference is None else (joined("kl"), joined("ref_lse"))
    return joined("logps"), joined("lse"), stats, kl, ref_lse


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
    """``(logps [K], *stats[, kl [K]])`` of ``labels`` ``[K]`` given ``hidden`` ``[K, d]`` (and, with a reference's
    hidden states ``ref_hidden`` ``[K, d]``, ``KL(π_ref ‖ π_θ)`` per position); differentiable in ``logps`` and
    ``kl`` (w.r.t. ``hidden``, the head's weight and bias; the reference is a constant)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, head, tiling, with_stats, ref_hidden, ref_head):
        reference = None if ref_hidden is None else Reference(ref_hidden, ref_head)
        logps, lse, stats, kl, ref_lse = _score_tiles(hidden, weight, bias, labels, head, tiling, with_stats,
                                                      reference)
        ctx.save_for_backward(hidden, weight, bias, labels, lse, ref_hidden, ref_lse)
        ctx.head, ctx.ref_head, ctx.tiling = head, ref_head, tiling
        ctx.mark_non_differentiable(*stats)
        return (logps, *stats) if kl is None else (logps, *stats, kl)

    @staticmethod
    def backward(ctx, grad_logps, *grads):
        ctx.head.gather()
        hidden, weight, bias, labels, lse, ref_hidden, ref_lse = ctx.saved_tensors
        grad_kl = None
        if ref_hidden is not None:
            ctx.ref_head.gather()
            ref_weight, ref_bias = ctx.ref_head.weight, ctx.ref_head.bias  # read (gathered) once
            grad_kl = grads[-1]

        def logit_grad(t0, t1, v0, v1, logits):  # d logp / dz = onehot − p_θ; d KL / dz = p_θ − p_ref
            probs = torch.exp(logits - lse[t0:t1, None])
            if grad_kl is None:
                grad = -grad_logps[t0:t1, None] * probs
            else:
                ref_logits = ctx.ref_head.slice_logits(ref_hidden[t0:t1], v0, v1, ref_weight, ref_bias)
                ref_probs = torch.exp(ref_logits - ref_lse[t0:t1, None])
                grad = (grad_kl[t0:t1] - grad_logps[t0:t1])[:, None] * probs - grad_kl[t0:t1, None] * ref_probs
            local = labels[t0:t1] - v0
            inside = ((local >= 0) & (local < v1 - v0)).nonzero().squeeze(1)
            grad[inside, local[inside]] += grad_logps[t0:t1][inside]
            return grad

        grads = _head_backward(hidden, weight, bias, ctx.head, ctx.tiling, logit_grad, ctx.needs_input_grad[:3])
        return (*grads, None, None, None, None, None, None)


def tiled_token_scores(hidden: torch.Tensor, labels: torch.Tensor, head: OutputHead, tiling: Tiling = Tiling(),
                       with_stats: bool = False, reference: Reference | None = None,
                       ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor | None]:
    """Per-token ``log p(label)`` ``[K]`` fp32 of the positions ``hidden`` ``[K, d]``, ``labels`` ``[K]``;
    ``[entropy, mean_logit, is_top1, log_sum_sq_probs]`` ``[K]`` each (detached) when ``with_stats``, else ``[]``;
    and with a ``reference`` (its hidden states at the same positions, same vocabulary) ``KL(π_ref ‖ π_θ)`` ``[K]``
    fp32 with its gradient into the policy side, else ``None``."""
    ref_hidden, ref_head = (None, None) if reference is None else (reference.hidden.detach(), reference.head)
    logps, *rest = _TiledTokenScores.apply(hidden, head.weight, head.bias, labels, head, tiling, with_stats,
                                           ref_hidden, ref_head)
    return (logps, rest, None) if reference is None else (logps, rest[:-1], rest[-1])


def tiled_kl(policy_hidden: torch.Tensor, ref_hidden: torch.Tensor, policy_head: OutputHead, ref_head: OutputHead,
             tiling: Tiling = Tiling()) -> torch.Tensor:
    """``[K]`` fp32 ``Σ_v p_ref(v) (log p_ref(v) − log p_θ(v))`` of the positions ``[K, d]`` of both models (same
    vocabulary); gradient into the policy side only. (The trainer gets it from the policy's own scoring pass,
    :func:`tiled_token_scores` with a ``reference``; this is the same pass for callers that hold hidden states.)"""
    labels = torch.zeros(policy_hidden.shape[0], dtype=torch.long, device=policy_hidden.device)
    return tiled_token_scores(policy_hidden, labels, policy_head, tiling, reference=Reference(ref_hidden, ref_head))[2]
