"""TI-DPO anchors: a continuation sampled from the current policy given each pair's prompt (spec tidpo.md §9.5).

:func:`sample_anchors` left-pads the prompts and samples with Hugging Face ``generate`` (no grad, eval mode,
training flags restored; ``generate`` derives the position ids of left-padded prompts from the attention mask). It
returns an :class:`AnchorBatch` in the training layout (right padded, prompt then anchor tokens), ready to be
scored in one batch by :func:`anchor_token_logps`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tokenweight.logps import backbone, logps_from_hidden, output_head
from tokenweight.tidpo.common import eval_mode, position_ids_from_mask


@dataclass
class AnchorBatch:
    """``B`` anchor sequences in the training layout.

    Attributes:
        input_ids: ``[B, La]`` prompt tokens then anchor tokens, right padded with the pad id.
        attention_mask: ``[B, La]`` 1 on prompt and anchor tokens.
        completion_mask: ``[B, La]`` 1 on anchor tokens up to and including the first EOS.
        anchor_lengths: ``[B]`` number of anchor tokens per row (≥ 1).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor
    anchor_lengths: torch.Tensor


def _pack(values: torch.Tensor, keep: torch.Tensor, to_right: bool) -> torch.Tensor:
    """Move the kept entries of each row of ``values`` ``[N, M]`` to the left (or right), order preserved."""
    key = keep.long() if to_right else (~keep).long()
    return values.gather(1, torch.argsort(key, dim=1, stable=True))


def left_padded_prompts(input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_mask: torch.Tensor,
                        pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts (real tokens that are not completion tokens) of ``[B, L]`` rows → left-padded ``[B, P]`` ids, mask."""
    prompt = attention_mask.bool() & ~completion_mask.bool()
    width = int(prompt.sum(dim=1).max().item())
    empty_rows = (~prompt.any(dim=1)).nonzero().flatten().tolist()
    if empty_rows:
        raise ValueError(f"TI-DPO anchors need a prompt; batch rows {empty_rows} have no prompt tokens")
    ids = _pack(input_ids.masked_fill(~prompt, pad_token_id), prompt, to_right=True)[:, -width:]
    return ids, _pack(prompt, prompt, to_right=True)[:, -width:].long()


def assemble_anchor_batch(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, new_tokens: torch.Tensor,
                          eos_token_ids: list[int], pad_token_id: int) -> AnchorBatch:
    """Left-padded prompts ``[B, P]`` + generated tokens ``[B, G]`` → right-padded :class:`AnchorBatch`.

    Anchor tokens are the generated tokens up to and including the first EOS (tokens after it are dropped).
    """
    is_eos = torch.isin(new_tokens, torch.tensor(eos_token_ids, device=new_tokens.device))
    keep_new = (is_eos.long().cumsum(dim=1) - is_eos.long()) == 0
    keep = torch.cat([prompt_mask.bool(), keep_new], dim=1)
    ids = torch.cat([prompt_ids, new_tokens], dim=1).masked_fill(~keep, pad_token_id)
    completion = torch.cat([torch.zeros_like(prompt_mask, dtype=torch.bool), keep_new], dim=1)
    width = int(keep.sum(dim=1).max().item())
    return AnchorBatch(
        input_ids=_pack(ids, keep, to_right=False)[:, :width],
        attention_mask=_pack(keep, keep, to_right=False)[:, :width].long(),
        completion_mask=_pack(completion, keep, to_right=False)[:, :width].long(),
        anchor_lengths=keep_new.sum(dim=1),
    )


@torch.no_grad()
def sample_anchors(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   completion_mask: torch.Tensor, *, pad_token_id: int, eos_token_id: int | list[int],
                   top_k: int = 50, top_p: float = 0.95, temperature: float = 0.8, max_new_tokens: int = 64,
                   max_length: int | None = None) -> AnchorBatch:
    """Sample one anchor per row from ``model`` given the row's prompt.

    Args:
        model: the current policy, **unwrapped** (``generate`` needs the Hugging Face model itself).
        input_ids, attention_mask, completion_mask: ``[B, L]`` training-layout rows (the chosen rows of the
            batch); their prompt is every real token that is not a completion token.
        pad_token_id, eos_token_id: the tokenizer's ids (``eos_token_id`` may be a list).
        top_k, top_p, temperature: sampling settings.
        max_new_tokens: cap on anchor tokens, further limited to ``max_length`` − the longest prompt.
        max_length: the training ``max_length`` (``None``: no limit beyond ``max_new_tokens``).

    Raises:
        ValueError: a row without a prompt, or no room left under ``max_length``.
    """
    prompt_ids, prompt_mask = left_padded_prompts(input_ids, attention_mask, completion_mask, pad_token_id)
    budget = max_new_tokens if max_length is None else min(max_new_tokens, max_length - prompt_ids.shape[1])
    if budget < 1:
        raise ValueError(f"TI-DPO anchor: the longest prompt ({prompt_ids.shape[1]} tokens) leaves no room under "
                         f"`max_length`={max_length}")
    eos_ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    with eval_mode(model):
        generated = model.generate(
            input_ids=prompt_ids, attention_mask=prompt_mask,
            do_sample=True, top_k=top_k, top_p=top_p, temperature=temperature, max_new_tokens=budget,
            pad_token_id=pad_token_id, eos_token_id=eos_ids, use_cache=True)
    return assemble_anchor_batch(prompt_ids, prompt_mask, generated[:, prompt_ids.shape[1]:], eos_ids, pad_token_id)


def anchor_token_logps(model: nn.Module, anchor: AnchorBatch, chunk_size: int = 256) -> torch.Tensor:
    """Per-token log-probs ``[B, La-1]`` (shifted alignment, fp32) of the anchor batch under ``model``.

    Gradients flow when enabled (policy); wrap in ``torch.no_grad()`` for the reference.
    """
    hidden = backbone(model)(anchor.input_ids, attention_mask=anchor.attention_mask,
                             position_ids=position_ids_from_mask(anchor.attention_mask),
                             use_cache=False).last_hidden_state[:, :-1]
    return logps_from_hidden(hidden, anchor.input_ids[:, 1:], output_head(model), chunk_size)
