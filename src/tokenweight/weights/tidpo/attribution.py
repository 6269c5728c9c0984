"""TI-DPO token weights: gradient attribution mixed with a Gaussian position prior (spec tidpo.md §2 Eqs. 5–8, §9).

For each row, the attribution of token ``i`` is ``I_i = ‖∂ max_v logit_last[v] / ∂ e_i‖₁`` (L1 norm over the
embedding dimension of the gradient of the largest logit at the row's last non-pad position with respect to the
input embedding ``e_i``). Over the weighted span of ``T`` tokens (the response, or prompt + response)::

    w = T · normalise(λ · I / ΣI + (1 − λ) · prior)
    prior_t ∝ exp(−½((t − μ)/σ)²),  t = 0..T−1,  μ = (T−1)/2,  σ = max(1, T / sigma_div)

so the weights have mean 1 over the span and are 0 elsewhere. Weights here are *unshifted* (``[2B, L]``, the
weight of the token at position ``t``); the scheme shifts them to the library's ``[2B, L-1]`` convention.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from tokenweight.head import output_head
from tokenweight.logps import backbone
from tokenweight.masks import last_index, position_ids_from_mask
from tokenweight.metrics import Count
from tokenweight.weights.tidpo.common import eval_mode

SPANS = ("response", "full")


@contextlib.contextmanager
def non_reentrant_checkpointing_kept(model: nn.Module) -> Iterator[None]:
    """Inside eval mode, let decoder layers with *non-reentrant* activation checkpointing keep checkpointing.

    Hugging Face layers checkpoint only when ``layer.training``; setting that flag on the layer modules alone (their
    submodules, dropout included, stay in eval) keeps the attribution pass's activation memory at the training
    level. Reentrant checkpointing cannot serve ``torch.autograd.grad`` and stays off.
    """
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing
              and getattr(getattr(m, "_gradient_checkpointing_func", None), "keywords", {}).get("use_reentrant")
              is False]
    for layer in layers:
        layer.training = True
    try:
        yield
    finally:
        for layer in layers:
            layer.training = False


def input_attribution(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Per-token attribution ``I`` ``[N, L]`` (fp32, 0 on padding) of the max last-position logit.

    The gradient is taken with ``torch.autograd.grad`` with respect to a detached ``inputs_embeds`` leaf only, so
    parameter ``.grad`` is never touched. The model runs in eval mode (restored afterwards); only the last non-pad
    position's logits ``[N, V]`` are materialised. Rows do not interact (the per-row targets are summed).
    Non-reentrant activation checkpointing, when enabled on the model, stays active for the pass.

    Args:
        model: an unwrapped Hugging Face causal LM.
        input_ids, attention_mask: ``[N, L]``; padding anywhere, position ids count real tokens only.
    """
    head = output_head(model)
    with eval_mode(model), non_reentrant_checkpointing_kept(model), torch.enable_grad():
        embeds = model.get_input_embeddings()(input_ids).detach().requires_grad_(True)
        hidden = backbone(model)(inputs_embeds=embeds, attention_mask=attention_mask,
                                 position_ids=position_ids_from_mask(attention_mask), use_cache=False).last_hidden_state
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        last_logits = head.logits(hidden[rows, last_index(attention_mask)])  # [N, V]
        target = last_logits.max(dim=-1).values.sum()
        (grad,) = torch.autograd.grad(target, embeds)
    scores = grad.float().abs().sum(dim=-1) * attention_mask
    bad_rows = (~torch.isfinite(scores)).any(dim=1).nonzero().flatten().tolist()
    if bad_rows:
        raise FloatingPointError(f"TI-DPO gradient attribution is non-finite in batch rows {bad_rows}")
    return scores


def gaussian_prior(span_mask: torch.Tensor, sigma_div: float) -> torch.Tensor:
    """Gaussian position prior ``[N, L]`` (fp32) summing to 1 over each row's span (Eq. 7, normalised).

    Span positions are ranked ``t = 0..T-1``; ``μ = (T−1)/2``, ``σ = max(1, T / sigma_div)``; 0 outside the span.
    """
    span = span_mask.float()
    length = span.sum(dim=1, keepdim=True)
    t = position_ids_from_mask(span_mask).float()
    sigma = (length / sigma_div).clamp(min=1.0)
    prior = torch.exp(-0.5 * ((t - (length - 1) / 2) / sigma) ** 2) * span
    return prior / prior.sum(dim=1, keepdim=True)


def tidpo_weights(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  completion_mask: torch.Tensor, lam: float = 0.7, sigma_div: float = 4.0,
                  span: str = "response", log: bool = False) -> torch.Tensor | tuple[torch.Tensor, dict[str, float]]:
    """TI-DPO token weights ``[2B, L]`` (fp32, detached, unshifted), with ``log=True`` also their statistics.

    Args:
        model: the current policy, unwrapped (run in eval mode for the attribution, training mode restored).
        input_ids, attention_mask, completion_mask: ``[2B, L]`` collated batch (completion = response incl. EOS).
        lam: λ, weight of the normalised attribution against the prior (λ = 0: prior only, no attribution pass).
        sigma_div: prior width divisor, ``σ = max(1, T / sigma_div)``.
        span: ``"response"`` (completion tokens) or ``"full"`` (prompt + response, as upstream).
        log: also return a dict of diagnostics (as POT's ``log=True``).

    Returns:
        ``weights``, or ``(weights, log)`` with ``log=True``: ``weights`` has mean 1 over each row's span and 0
        elsewhere; ``log`` holds
        ``tidpo/weight_on_last_token`` (mean weight of the last completion token), ``tidpo/weight_max`` and
        ``tidpo/zero_attribution_rows`` (rows whose attribution sums to 0 over the span: those use the prior alone).

    Raises:
        ValueError: bad ``lam``/``sigma_div``/``span`` or a row with no completion token.
        FloatingPointError: non-finite attribution (names the rows).
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"TI-DPO `tidpo_lambda` must be in [0, 1], got {lam}")
    if sigma_div <= 0:
        raise ValueError(f"TI-DPO `tidpo_sigma_div` must be > 0, got {sigma_div}")
    if span not in SPANS:
        raise ValueError(f"TI-DPO `tidpo_span` must be one of {SPANS}, got {span!r}")
    attention = attention_mask.bool()
    completion = completion_mask.bool() & attention
    empty_rows = (~completion.any(dim=1)).nonzero().flatten().tolist()
    if empty_rows:
        raise ValueError(f"TI-DPO needs at least one completion token per row; batch rows {empty_rows} have none")
    span_mask = completion if span == "response" else attention
    length = span_mask.sum(dim=1, keepdim=True).float()
    prior = gaussian_prior(span_mask, sigma_div)

    zero_rows = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    if lam > 0:
        scores = input_attribution(model, input_ids, attention_mask) * span_mask
        total = scores.sum(dim=1, keepdim=True)
        zero_rows = total.squeeze(1) == 0
        attribution = scores / torch.where(total == 0, 1.0, total)
        row_lam = torch.where(zero_rows, 0.0, lam).unsqueeze(1)
        mixed = row_lam * attribution + (1 - row_lam) * prior
    else:
        mixed = prior
    weights = (mixed / mixed.sum(dim=1, keepdim=True) * length * span_mask).detach()
    if not log:
        return weights
    rows = torch.arange(weights.shape[0], device=weights.device)
    metrics = {
        "tidpo/weight_on_last_token": weights[rows, last_index(completion)].mean().item(),
        "tidpo/weight_max": weights.max().item(),
        "tidpo/zero_attribution_rows": Count(float(zero_rows.sum().item())),
    }
    return weights, metrics
