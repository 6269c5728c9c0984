"""The last query's attention row, without keeping attention maps (spec §8.8).

On an eager forward, a forward hook on each chosen layer's self-attention module keeps the last query's row of the
map the layer computes anyway (bit-exact to ``output_attentions``) and lets the map go with the layer. On any other
forward (SDPA, flash), a forward pre-hook receives that layer's (normed) input hidden states and its rotary position
embeddings, and recomputes from them the scores of the *last* query only against all keys, with the module's own
projections, q/k norms, rotary function, scaling and logit soft-capping, grouped key/value heads shared, the
causal / sliding-window / padding mask applied; softmax per head in fp32, mean over the query heads. The model
itself keeps its attention implementation (SDPA, flash, …); the extra memory is ``O(T · d)`` per layer instead of
eager ``output_attentions``'s ``O(layers · heads · T²)``. The forward stops after the deepest chosen layer (the
language-model head never runs)."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
from torch import nn

from tokenweight.masks import last_index, position_ids_from_mask


@dataclass(frozen=True)
class _AttentionKind:
    """How one attention class deviates from the plain Llama recipe.

    ``softcap``: the module's ``attn_logit_softcapping`` is applied to the scores (Gemma 2).
    ``config_window``: the sliding window comes from ``config.sliding_window`` (Mistral) instead of the module's
    own ``sliding_window`` attribute (``None`` on full-attention layers).
    """

    softcap: bool = False
    config_window: bool = False


SUPPORTED = {
    "LlamaAttention": _AttentionKind(),
    "MistralAttention": _AttentionKind(config_window=True),
    "Qwen2Attention": _AttentionKind(),
    "Qwen3Attention": _AttentionKind(),
    "GemmaAttention": _AttentionKind(),
    "Gemma2Attention": _AttentionKind(softcap=True),
    "Gemma3Attention": _AttentionKind(),
}
METHODS = ("hook", "eager")


class _StopForward(Exception):
    """Raised by the hook of the deepest chosen layer: the rest of the forward is not needed."""


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The self-attention modules of ``model``, ordered by ``layer_idx``; raise for an unsupported architecture."""
    modules = [m for m in model.modules() if type(m).__name__ in SUPPORTED]
    if not modules:
        model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise NotImplementedError(
            f"attention rows by hook are not implemented for model type {model_type!r} (supported attention "
            f"classes: {sorted(SUPPORTED)}); use method='eager' (eager attention with output_attentions=True), "
            "which works for any model but stores every layer's full [heads, T, T] attention map")
    return sorted(modules, key=lambda m: m.layer_idx)


def resolve_layers(layers: list[int] | None, num_layers: int) -> list[int]:
    """Layer indices (negative counts from the end; ``None`` = the last layer), checked and de-duplicated."""
    if layers is None:
        return [num_layers - 1]
    if not layers:
        raise ValueError("attention_layers is empty; give at least one layer index (or None for the last layer)")
    resolved = []
    for layer in layers:
        index = layer + num_layers if layer < 0 else layer
        if not 0 <= index < num_layers:
            raise ValueError(f"attention_layers: layer {layer} is out of range for a model with {num_layers} layers")
        if index not in resolved:
            resolved.append(index)
    return resolved


def last_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """``[B]`` index of the last real token of each row of ``attention_mask`` ``[B, T]`` (left or right padding)."""
    if not attention_mask.bool().any(dim=1).all():
        raise ValueError("attention_mask has a row without any token")
    return last_index(attention_mask)


def _allowed_keys(key_mask: torch.Tensor, last: torch.Tensor, window: int | None) -> torch.Tensor:
    """``[B, T]`` bool: keys the last query may see (real, not after it, inside the sliding window if any)."""
    positions = torch.arange(key_mask.shape[1], device=key_mask.device)[None, :]
    allowed = key_mask & (positions <= last[:, None])
    if window is not None:
        allowed &= positions > last[:, None] - window
    return allowed


def _last_query_row(module: nn.Module, kind: _AttentionKind, hidden: torch.Tensor,
                    position_embeddings: tuple[torch.Tensor, torch.Tensor], key_mask: torch.Tensor,
                    last: torch.Tensor) -> torch.Tensor:
    """Head-mean attention of the last query over all keys for one layer.

    Args:
        hidden: ``[B, T, d]`` the attention module's input (after the layer's input norm).
        position_embeddings: ``(cos, sin)``, each ``[B or 1, T, head_dim]``, as the model passed them.
        key_mask: ``[B, T]`` bool, real tokens.
        last: ``[B]`` index of each row's last real token (the query).
    Returns:
        ``[B, T]`` fp32, each row summing to 1 over its allowed keys, 0 elsewhere.
    """
    batch, length, _ = hidden.shape
    head_dim = module.head_dim
    rows = torch.arange(batch, device=hidden.device)
    query = module.q_proj(hidden[rows, last]).view(batch, 1, -1, head_dim)  # [B, 1, H, hd]
    key = module.k_proj(hidden).view(batch, length, -1, head_dim)  # [B, T, KV, hd]
    if hasattr(module, "q_norm"):
        query, key = module.q_norm(query), module.k_norm(key)
    query, key = query.transpose(1, 2), key.transpose(1, 2)  # [B, H, 1, hd], [B, KV, T, hd]
    cos, sin = (e.expand(batch, -1, -1) for e in position_embeddings)
    rotary = sys.modules[type(module).__module__].apply_rotary_pos_emb
    # The model's rotary function rotates a query and a key with the same cos/sin; here they differ in length,
    # so each call rotates one of them (the second output of the first call and the first of the second are unused).
    query = rotary(query, query, cos[rows, last][:, None], sin[rows, last][:, None])[0]
    key = rotary(key, key, cos, sin)[1]
    num_kv = key.shape[1]
    grouped = query.float().reshape(batch, num_kv, -1, head_dim)  # query head h uses key head h // group
    scores = torch.einsum("bkgd,bktd->bkgt", grouped, key.float()).reshape(batch, -1, length) * module.scaling
    if kind.softcap and module.attn_logit_softcapping is not None:
        cap = module.attn_logit_softcapping
        scores = torch.tanh(scores / cap) * cap
    window = module.config.sliding_window if kind.config_window else getattr(module, "sliding_window", None)
    allowed = _allowed_keys(key_mask, last, window)
    scores = scores.masked_fill(~allowed[:, None, :], float("-inf"))
    return torch.softmax(scores, dim=-1).mean(dim=1)


def _hook_rows(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               position_ids: torch.Tensor, layers: list[int], modules: list[nn.Module],
               recompute: bool) -> list[torch.Tensor]:
    """One ``[B, T]`` row per layer of ``layers``, captured by hooks on ``modules`` during one forward.

    ``recompute=False`` (eager attention, where every layer computes its full map anyway): a forward hook keeps the
    last query's row of the map the layer returns (bit-exact to ``output_attentions``) and lets the map go with
    the layer. ``recompute=True`` (SDPA, flash: no map is returned): a pre-hook recomputes the row from the
    layer's input.
    """
    key_mask, last = attention_mask.bool(), last_positions(attention_mask)
    batch_rows = torch.arange(input_ids.shape[0], device=input_ids.device)
    deepest = modules[max(layers)]
    rows: list[torch.Tensor] = []

    def recompute_row(module, args, kwargs):
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        if kwargs.get("position_embeddings") is None:
            raise RuntimeError(f"{type(module).__name__} received no position_embeddings; cannot recompute RoPE")
        rows.append(_last_query_row(module, SUPPORTED[type(module).__name__], hidden,
                                    kwargs["position_embeddings"], key_mask, last))
        if module is deepest:
            raise _StopForward

    def keep_eager_row(module, args, kwargs, output):
        rows.append(output[1][batch_rows, :, last].float().mean(dim=1))  # map [B, H, T, T] → [B, T]
        if module is deepest:
            raise _StopForward

    if recompute:
        handles = [modules[i].register_forward_pre_hook(recompute_row, with_kwargs=True) for i in layers]
    else:
        handles = [modules[i].register_forward_hook(keep_eager_row, with_kwargs=True) for i in layers]
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    if len(rows) != len(layers):
        raise RuntimeError(f"captured {len(rows)} attention rows for {len(layers)} layers; was a layer skipped?")
    return rows


def _eager_rows(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor, layers: list[int]) -> list[torch.Tensor]:
    last = last_positions(attention_mask)
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False,
                    output_attentions=True, logits_to_keep=1)
    finally:
        model.set_attn_implementation(previous)
    if out.attentions is None or any(out.attentions[i] is None for i in layers):
        raise RuntimeError(f"{type(model).__name__} returned no attention maps with eager attention and "
                           "output_attentions=True; method='eager' cannot be used for this model")
    return [out.attentions[i][rows, :, last, :].float().mean(dim=1) for i in layers]  # each [B, T]


@torch.no_grad()
def last_token_attention(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                         layers: list[int] | None = None, method: str = "hook") -> torch.Tensor:
    """Head-mean attention from each row's last real token to every position, averaged over ``layers``.

    Args:
        model: a causal LM (Llama, Mistral, Qwen2, Qwen3, Gemma, Gemma 2, Gemma 3 text for ``method="hook"``).
        input_ids: ``[B, T]``; attention_mask: ``[B, T]`` (left or right padding). Position ids are the
            cumulative count of real tokens, so a row's result does not depend on its padding.
        layers: decoder layer indices (negative from the end); ``None`` = the last layer. Several layers are
            averaged (their rows divided by their number).
        method: ``"hook"`` (keep the last row of each chosen layer: read from the map on an eager forward,
            recomputed otherwise; memory ``O(T · d)``) or ``"eager"`` (eager attention with
            ``output_attentions=True``: any model, but every layer's ``[B, heads, T, T]`` map is kept).
    Returns:
        ``[B, T]`` fp32; each row sums to 1, with 0 on padding.
    """
    if method not in METHODS:
        raise ValueError(f"unknown attention method {method!r}; expected one of {METHODS}")
    attention_mask = attention_mask.to(input_ids.device)
    position_ids = position_ids_from_mask(attention_mask)
    if method == "hook":
        modules = attention_modules(model)
        chosen = resolve_layers(layers, len(modules))
        rows = _hook_rows(model, input_ids, attention_mask, position_ids, chosen, modules,
                          recompute=model.config._attn_implementation != "eager")
    else:
        chosen = resolve_layers(layers, model.config.get_text_config().num_hidden_layers)
        rows = _eager_rows(model, input_ids, attention_mask, position_ids, chosen)
    return torch.stack(rows).mean(dim=0)
