"""The last query's attention row, without keeping attention maps (spec §8.8).

``method="interface"`` (the default) records it through transformers' pluggable attention interface
(:data:`transformers.modeling_utils.ALL_ATTENTION_FUNCTIONS`), so it works on every architecture whose attention goes
through that interface, with no per-class code. For the judge's forward the model's own attention implementation
(``sdpa``, ``eager``, ``flash_attention_2``, …) is wrapped: every attention call still runs it for the layer's
output, and on a chosen layer the wrapper computes, from the query and key states and the mask the model passes it,
the softmax row of each sequence's last real query: the model's ``scaling``, logit ``softcap`` (Gemma 2), additive
mask biases (ALiBi: Falcon puts it into the mask), ``position_bias``, attention sinks (``s_aux``), grouped
key/value heads shared, the causal / sliding-window / padding mask as given (a 2-D or missing mask, as flash
attention gets, is rebuilt from the padding, causality and ``sliding_window``); softmax per head in fp32, mean over
the query heads. On an eager forward the row is read from the map the layer computes anyway (bit-exact to
``output_attentions``). The extra memory is ``O(heads · T)`` per layer instead of eager ``output_attentions``'s
``O(layers · heads · T²)``; the forward stops at the deepest chosen layer (its attention and the language-model head
never run).

``method="eager"`` runs the model with eager attention and ``output_attentions=True`` and keeps every layer's full
map: the way out for an architecture that computes attention itself (BLOOM, in transformers 5.25), which the
interface method refuses in one line naming it.
"""

from __future__ import annotations

import contextlib
import sys

import torch
from torch import nn
from transformers.modeling_utils import AttentionInterface

from tokenweight.errors import UserError
from tokenweight.masks import last_index, position_ids_from_mask

METHODS = ("interface", "eager")


class _StopForward(Exception):
    """Raised after the deepest chosen layer's row is recorded: the rest of the forward is not needed."""


def model_type(model: nn.Module) -> str:
    """The architecture's ``model_type`` (for messages)."""
    return getattr(getattr(model, "config", None), "model_type", None) or type(model).__name__


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


def last_query_row(query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None, last: torch.Tensor,
                   key_mask: torch.Tensor, scaling: float | None = None, softcap: float | None = None,
                   sliding_window: int | None = None, position_bias: torch.Tensor | None = None,
                   s_aux: torch.Tensor | None = None) -> torch.Tensor:
    """Head-mean attention of each row's last real query over all keys, from what an attention function receives.

    Args:
        query: ``[B, H, T, hd]`` (positional encoding applied); key: ``[B, KV, T, hd]``, ``H`` a multiple of ``KV``
            (query head ``h`` uses key head ``h // (H / KV)``).
        attention_mask: ``[B or 1, 1 or H, T, ≥T]`` bool (True: attend) or additive float (it may carry a bias, e.g.
            ALiBi); or ``None`` / ``[B, T]`` (flash attention's): rebuilt from ``key_mask``, causality and
            ``sliding_window``.
        last: ``[B]`` index of each row's last real token (the query); key_mask: ``[B, T]`` bool, real tokens.
        scaling: score scale (``None``: ``hd ** -0.5``); softcap: ``tanh`` logit cap; position_bias: additive
            ``[B or 1, H, T, T]``; s_aux: ``[H]`` attention-sink logits (in the softmax, not in the row).
    Returns:
        ``[B, T]`` fp32: each row sums to 1 (less the sinks' share) over its allowed keys, 0 elsewhere.
    """
    batch, heads, _, head_dim = query.shape
    num_kv, length = key.shape[1], key.shape[2]
    rows = torch.arange(batch, device=query.device)
    grouped = query[rows, :, last].float().reshape(batch, num_kv, heads // num_kv, head_dim)
    scores = torch.einsum("bkgd,bktd->bkgt", grouped, key.float()).reshape(batch, heads, length)
    scores = scores * (head_dim ** -0.5 if scaling is None else scaling)
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if position_bias is not None:
        scores = scores + position_bias.expand(batch, -1, -1, -1)[rows, :, last, :length].float()
    if attention_mask is not None and attention_mask.dim() == 4:
        mask = attention_mask.expand(batch, -1, -1, -1)[rows, :, last, :length]  # [B, 1 or H, T]
        scores = (scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.float())
    else:
        real = key_mask if attention_mask is None else attention_mask.bool()
        scores = scores.masked_fill(~_allowed_keys(real, last, sliding_window)[:, None, :], float("-inf"))
    if s_aux is not None:
        sinks = s_aux.float().reshape(1, heads, 1).expand(batch, -1, -1)
        return torch.softmax(torch.cat([scores, sinks], dim=-1), dim=-1)[..., :-1].mean(dim=1)
    return torch.softmax(scores, dim=-1).mean(dim=1)


class _RowRecorder:
    """Wraps the model's attention function for one forward; keeps the last query's row of the chosen layers.

    Attention calls are counted in forward order: call ``k`` is decoder layer ``k``. On an eager forward the row is
    read from the map the wrapped function returns; otherwise it is computed from the query/key states, and the
    deepest chosen layer's attention itself is not run (the forward stops there).
    """

    def __init__(self, layers: list[int], attention_mask: torch.Tensor, last: torch.Tensor, eager: bool):
        self.inner = None  # module -> the wrapped attention function; set by :func:`_recording`
        self.layers, self.deepest, self.eager = set(layers), max(layers), eager
        self.key_mask, self.last = attention_mask.bool(), last
        self.calls = 0
        self.rows: dict[int, torch.Tensor] = {}

    def __call__(self, module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        layer, self.calls = self.calls, self.calls + 1
        run = self.inner(module)
        if layer not in self.layers:
            return run(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
        if query.shape[2] != self.key_mask.shape[1]:
            raise RuntimeError(f"attention call {layer} got {query.shape[2]} queries for {self.key_mask.shape[1]} "
                               "tokens; the judge forward must run without a cache")
        output = None
        if self.eager:  # read the map the eager function computes anyway
            output = run(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
            batch_rows = torch.arange(query.shape[0], device=query.device)
            self.rows[layer] = output[1][batch_rows, :, self.last].float().mean(dim=1)
        else:
            if attention_mask is not None and not isinstance(attention_mask, torch.Tensor):
                raise UserError(f"attention rows: {type(module).__name__} got a {type(attention_mask).__name__} "
                                "mask (flex attention); run the judge with --attn_implementation sdpa or eager")
            self.rows[layer] = last_query_row(query, key, attention_mask, self.last, self.key_mask, scaling,
                                              kwargs.get("softcap"), kwargs.get("sliding_window"),
                                              kwargs.get("position_bias"), kwargs.get("s_aux"))
        if layer == self.deepest:
            raise _StopForward
        if output is None:
            output = run(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
        return output


def _module_eager(module: nn.Module):
    """The eager attention function of the module's own modeling file (what transformers falls back to)."""
    function = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if function is None:
        raise UserError(f"attention rows: {type(module).__name__} has no eager_attention_forward to wrap; run "
                        "the judge with --attn_implementation sdpa, or --attention_rows eager")
    return function


@contextlib.contextmanager
def _recording(implementation: str, recorder: _RowRecorder):
    """Route the attention implementation ``implementation`` through ``recorder`` (restored on exit).

    The registry's class-wide mapping is what ``ALL_ATTENTION_FUNCTIONS.get_interface`` reads; ``eager`` is not in
    it (each modeling file passes its own eager function as the default), so it is added for the pass and removed.
    """
    mapping = AttentionInterface._global_mapping
    had, previous = implementation in mapping, mapping.get(implementation)
    recorder.inner = (lambda module: previous) if had else _module_eager
    mapping[implementation] = recorder
    try:
        yield
    finally:
        if had:
            mapping[implementation] = previous
        else:
            del mapping[implementation]


def _interface_rows(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    position_ids: torch.Tensor, layers: list[int]) -> list[torch.Tensor]:
    """One ``[B, T]`` row per layer of ``layers``, recorded through the attention interface during one forward."""
    implementation = model.config.get_text_config()._attn_implementation or "eager"
    recorder = _RowRecorder(layers, attention_mask, last_positions(attention_mask), implementation == "eager")
    with _recording(implementation, recorder):
        try:
            model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
        except _StopForward:
            pass
    if len(recorder.rows) != len(layers):
        how = ("does not route its attention through transformers' AttentionInterface" if recorder.calls == 0 else
               f"made {recorder.calls} attention calls for layers {sorted(layers)}")
        raise UserError(f"attention rows: model type {model_type(model)!r} {how}; use --attention_rows eager (eager "
                        "attention with output_attentions=True, every layer's full [heads, T, T] map kept)")
    return [recorder.rows[i] for i in layers]


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
        raise UserError(f"attention rows: model type {model_type(model)!r} returned no attention maps with eager "
                        "attention and output_attentions=True; --attention_rows eager cannot serve it")
    return [out.attentions[i][rows, :, last, :].float().mean(dim=1) for i in layers]  # each [B, T]


@torch.no_grad()
def last_token_attention(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                         layers: list[int] | None = None, method: str = "interface") -> torch.Tensor:
    """Head-mean attention from each row's last real token to every position, averaged over ``layers``.

    Args:
        model: a causal LM.
        input_ids: ``[B, T]``; attention_mask: ``[B, T]`` (left or right padding). Position ids are the
            cumulative count of real tokens, so a row's result does not depend on its padding.
        layers: decoder layer indices (negative from the end); ``None`` = the last layer. Several layers are
            averaged (their rows divided by their number).
        method: ``"interface"`` (record the last row of each chosen layer through the attention interface; memory
            ``O(heads · T)``) or ``"eager"`` (eager attention with ``output_attentions=True``: every layer's
            ``[B, heads, T, T]`` map is kept).
    Returns:
        ``[B, T]`` fp32; each row sums to 1, with 0 on padding.
    """
    if method not in METHODS:
        raise ValueError(f"unknown attention method {method!r}; expected one of {METHODS}")
    attention_mask = attention_mask.to(input_ids.device)
    position_ids = position_ids_from_mask(attention_mask)
    chosen = resolve_layers(layers, model.config.get_text_config().num_hidden_layers)
    rows_of = _interface_rows if method == "interface" else _eager_rows
    return torch.stack(rows_of(model, input_ids, attention_mask, position_ids, chosen)).mean(dim=0)
