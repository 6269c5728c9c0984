"""Memory-lean per-token log-probabilities and final-hidden-state capture.

A causal LM's forward builds ``[N, L, V]`` logits, and a naive ``log_softmax`` + ``gather`` keeps another
``[N, L, V]`` fp32 tensor alive for the backward. Here the backbone runs as usual, and the output head is applied
chunk by chunk over the sequence: each chunk computes ``logit[label] − logsumexp(logits)`` in fp32 under
non-reentrant activation checkpointing, so only ``[N, chunk, V]`` logits exist at any time, forward or backward.
On request the same chunks also give the statistics TRL logs (:class:`TokenStats`: entropy, mean logit, whether the
label is the top-1 token), without gradient and without a second pass over the logits.

:func:`enable_token_scoring` patches the *instance* forward of a model so that wrappers (DDP, FSDP, DeepSpeed,
PEFT) keep working: ``model(input_ids, attention_mask, score_tokens=True)`` returns :class:`TokenScores` instead
of logits; without ``score_tokens`` the forward (and so ``generate``) is the original one.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from tokenweight.masks import to_shifted


@dataclass
class TokenStats:
    """Per-token statistics of the next-token distributions ``p = softmax(logits)``, detached, ``[N, T]`` each.

    Attributes:
        entropy: fp32 ``−Σ_v p_v log p_v``.
        mean_logit: fp32 mean over the vocabulary of the (scaled, softcapped) logits.
        is_top1: bool, the label is the first arg-max of the logits.
        log_sum_sq_probs: fp32 ``log Σ_v p_v²`` (WPO's pair weights, ``use_weighting``).
    """

    entropy: torch.Tensor
    mean_logit: torch.Tensor
    is_top1: torch.Tensor
    log_sum_sq_probs: torch.Tensor


@dataclass
class TokenScores:
    """Output of a scoring forward over ``N`` rows of length ``L``.

    Attributes:
        token_logps: ``[N, L-1]`` fp32, ``log p(input_ids[:, t+1] | input_ids[:, :t+1])``.
        hidden: ``[N, L-1, d]`` final post-norm hidden states at positions ``0..L-2`` (the states that predict
            each token), in the model's dtype, with grad; ``None`` unless ``return_hidden=True``.
        stats: :class:`TokenStats` ``[N, L-1]`` of the same positions; ``None`` unless ``return_stats=True``.
        aux_loss: scalar, with grad: a mixture-of-experts model's router load-balancing loss over the batch's real
            tokens (the model's own ``aux_loss``); ``None`` unless ``router_aux_loss=True``.
    """

    token_logps: torch.Tensor
    hidden: torch.Tensor | None = None
    stats: TokenStats | None = None
    aux_loss: torch.Tensor | None = None


@dataclass(frozen=True)
class OutputHead:
    """How a model turns final hidden states into logits: ``softcap(scale · head(h))``."""

    module: nn.Module
    logit_scale: float = 1.0
    softcap: float | None = None

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[..., d]`` hidden → ``[..., V]`` fp32 logits."""
        logits = self.module(hidden).float()
        if self.logit_scale != 1.0:
            logits = logits * self.logit_scale
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


#: config keys that scale the output head's logits: multipliers (Cohere, Falcon-H1, …) and divisors (Granite)
_LOGIT_MULTIPLIERS = ("logit_scale", "lm_head_multiplier", "output_multiplier")
_LOGIT_DIVISORS = ("logits_scaling",)


def output_head(model: nn.Module) -> OutputHead:
    """The output head of a Hugging Face causal LM, with the final-logit scaling/softcapping of its config."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    scale = 1.0
    for key in _LOGIT_MULTIPLIERS + _LOGIT_DIVISORS:
        value = getattr(config, key, None)
        if value is not None:
            scale = scale * float(value) if key in _LOGIT_MULTIPLIERS else scale / float(value)
    return OutputHead(
        module=model.get_output_embeddings(),
        logit_scale=scale,
        softcap=getattr(config, "final_logit_softcapping", None),
    )


def _chunk_scores(hidden: torch.Tensor, labels: torch.Tensor, head: OutputHead,
                  with_stats: bool) -> tuple[torch.Tensor, ...]:
    """``(logps,)`` or ``(logps, entropy, mean_logit, is_top1, log_sum_sq_probs)`` of one chunk, each
    ``[N, chunk]``."""
    logits = head.logits(hidden)
    picked = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)  # before the logsumexp: a lower backward peak
    log_normaliser = torch.logsumexp(logits, dim=-1)
    logps = picked - log_normaliser
    if not with_stats:
        return (logps,)
    # After the last tensor the backward needs: the checkpoint's recomputation stops before reaching this.
    with torch.no_grad():
        logits, log_normaliser = logits.detach(), log_normaliser.detach()
        probs = torch.softmax(logits, dim=-1)
        entropy = log_normaliser - (probs * logits).sum(dim=-1)
        log_sum_sq_probs = probs.square().sum(dim=-1).log()  # Σ p² ≥ 1/V: no underflow in fp32
        return logps, entropy, logits.mean(dim=-1), logits.argmax(dim=-1) == labels, log_sum_sq_probs


def scores_from_hidden(hidden: torch.Tensor, labels: torch.Tensor, head: OutputHead, chunk_size: int = 256,
                       with_stats: bool = False) -> tuple[torch.Tensor, TokenStats | None]:
    """Per-token log-probs ``[N, T]`` (fp32) of ``labels`` ``[N, T]`` given aligned hidden states ``[N, T, d]``,
    and their :class:`TokenStats` ``[N, T]`` when ``with_stats`` (else ``None``).

    At most ``[N, chunk_size, V]`` logits are alive at once; when gradients are needed each chunk is
    recomputed in the backward (non-reentrant checkpoint) instead of being stored.
    """
    pieces = []
    for start in range(0, hidden.shape[1], chunk_size):
        h = hidden[:, start:start + chunk_size]
        y = labels[:, start:start + chunk_size]
        if torch.is_grad_enabled() and (h.requires_grad or any(p.requires_grad for p in head.module.parameters())):
            pieces.append(checkpoint(_chunk_scores, h, y, head, with_stats, use_reentrant=False))
        else:
            pieces.append(_chunk_scores(h, y, head, with_stats))
    columns = [torch.cat(column, dim=1) for column in zip(*pieces)]
    return columns[0], TokenStats(*columns[1:]) if with_stats else None


def logps_from_hidden(hidden: torch.Tensor, labels: torch.Tensor, head: OutputHead,
                      chunk_size: int = 256) -> torch.Tensor:
    """Per-token log-probs ``[N, T]`` (fp32): :func:`scores_from_hidden` without statistics."""
    return scores_from_hidden(hidden, labels, head, chunk_size)[0]


def backbone(model: nn.Module) -> nn.Module:
    """The decoder stack of a causal LM (``model.model`` for Llama-style models); PEFT wrappers are looked
    through (their adapters live inside the wrapped model's layers)."""
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    prefix = getattr(model, "base_model_prefix", "model")
    module = getattr(model, prefix, None)
    if module is None or module is model:
        raise TypeError(f"{type(model).__name__} exposes no backbone under `{prefix}`; tokenweight needs a "
                        "Hugging Face *ForCausalLM model")
    return module


def enable_token_scoring(model: nn.Module, chunk_size: int = 256) -> nn.Module:
    """Patch ``model.forward`` (this instance only) to accept ``score_tokens=True``; returns ``model``.

    ``model(input_ids, attention_mask, score_tokens=True, return_hidden=False, return_stats=False)`` runs the
    backbone once and returns :class:`TokenScores`. With ``router_aux_loss=True`` (mixture-of-experts models) the
    model's own forward runs instead, with ``output_router_logits=True`` and its head on one position only, for its
    ``aux_loss``; the backbone's final hidden states are taken from it by a forward hook. Idempotent.
    """
    if getattr(model, "_tokenweight_scoring", False):
        return model
    original_forward = model.forward

    @functools.wraps(type(model).forward)
    def forward(*args, score_tokens: bool = False, return_hidden: bool = False, return_stats: bool = False,
                router_aux_loss: bool = False, **kwargs):
        if not score_tokens:
            return original_forward(*args, **kwargs)
        input_ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        kwargs.pop("input_ids", None)
        kwargs["use_cache"] = False
        aux_loss = None
        if router_aux_loss:
            final = []
            handle = backbone(model).register_forward_hook(
                lambda module, inputs, output: final.append(output.last_hidden_state))
            try:
                outputs = original_forward(input_ids, *args[1:], output_router_logits=True, logits_to_keep=1,
                                           **kwargs)
            finally:
                handle.remove()
            hidden, aux_loss = final[0][:, :-1], outputs.aux_loss
        else:
            hidden = backbone(model)(input_ids, *args[1:], **kwargs).last_hidden_state[:, :-1]
        token_logps, stats = scores_from_hidden(hidden, to_shifted(input_ids), output_head(model), chunk_size,
                                                with_stats=return_stats)
        return TokenScores(token_logps=token_logps, hidden=hidden if return_hidden else None, stats=stats,
                           aux_loss=aux_loss)

    model.forward = forward
    model._tokenweight_scoring = True
    return model


def naive_token_logps(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Reference implementation: ``log_softmax(logits[:, :-1]).gather(input_ids[:, 1:])`` → ``[N, L-1]``."""
    logps = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return logps.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
