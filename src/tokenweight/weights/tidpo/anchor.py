"""TI-DPO anchors: a continuation sampled from the current policy given each pair's prompt (spec tidpo.md §9.5).

:func:`sample_anchors` left-pads the prompts and decodes with Hugging Face ``generate`` (no grad, eval mode,
training flags restored; ``generate`` derives the position ids of left-padded prompts from the attention mask).

* **Nothing comes from the checkpoint's ``generation_config``** (a ``repetition_penalty`` or ``min_new_tokens``
  saved there would silently change the anchors): ``generate`` gets an explicit :class:`GenerationConfig` built
  from the ``tidpo_anchor_*`` settings alone, and the model's own ``generation_config`` is replaced by a blank one
  for the call (``generate`` fills every unset field of the explicit config from it).
* **Each row draws from its own** ``torch.Generator``, seeded by the caller (:func:`anchor_seeds`: from the run's
  seed, the global step and the dataset row), so an anchor depends on its row and step only: not on the global RNG,
  the other rows of the batch, or how often the model was evaluated. :class:`RowSeededSampler` applies temperature,
  top-k and top-p (Hugging Face's warpers, in ``generate``'s order), samples per row and leaves only the sampled
  token finite, so ``generate``'s greedy step takes it.

The result is an :class:`AnchorBatch` in the training layout (right padded, prompt then anchor tokens), scored in
one batch by :func:`anchor_token_logps`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from transformers import (GenerationConfig, GenerationMixin, LogitsProcessor, LogitsProcessorList,
                          TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

from tokenweight.errors import UserError
from tokenweight.head import output_head
from tokenweight.logps import backbone, logps_from_hidden
from tokenweight.masks import pack_left, position_ids_from_mask, to_shifted
from tokenweight.models import generation_kwargs
from tokenweight.weights.base import row_seeds
from tokenweight.weights.tidpo.common import eval_mode


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


def anchor_seeds(seed: int, rows: list[int], step: int | None) -> list[int]:
    """One 63-bit generator seed per dataset row: a hash of ``(seed, step, row)``; ``step=None`` (evaluation)
    gives the same seed for a row at every evaluation."""
    return row_seeds("tidpo anchor", seed, rows, step)


class RowSeededSampler(LogitsProcessor):
    """Sample row ``r``'s next token from the warped distribution with ``torch.Generator(seeds[r])``.

    ``__call__(input_ids [B, t], scores [B, V]) -> [B, V]``: 0 at each row's sampled token, ``-inf`` elsewhere
    (used with greedy decoding, which then takes exactly the sampled token).
    """

    def __init__(self, seeds: list[int], temperature: float, top_k: int, top_p: float):
        self.seeds = seeds
        self.warpers = LogitsProcessorList(
            ([TemperatureLogitsWarper(temperature)] if temperature != 1.0 else [])
            + ([TopKLogitsWarper(top_k)] if top_k != 0 else [])
            + ([TopPLogitsWarper(top_p)] if top_p < 1.0 else []))
        self.generators: list[torch.Generator] | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if len(self.seeds) != scores.shape[0]:
            raise ValueError(f"RowSeededSampler has {len(self.seeds)} seeds for {scores.shape[0]} rows")
        if self.generators is None:
            self.generators = [torch.Generator(device=scores.device).manual_seed(s) for s in self.seeds]
        probs = torch.softmax(self.warpers(input_ids, scores).float(), dim=-1)
        tokens = torch.cat([torch.multinomial(row, 1, generator=gen) for row, gen in zip(probs, self.generators)])
        return torch.full_like(scores, float("-inf")).scatter_(1, tokens[:, None], 0.0)


@contextlib.contextmanager
def blank_generation_configs(model: nn.Module) -> Iterator[None]:
    """Give every Hugging Face model inside ``model`` (PEFT wrappers included) a blank ``generation_config``;
    restore the originals on exit."""
    models = [m for m in model.modules() if isinstance(m, GenerationMixin) and hasattr(m, "generation_config")]
    saved = [m.generation_config for m in models]
    for m in models:
        m.generation_config = GenerationConfig()
    try:
        yield
    finally:
        for m, config in zip(models, saved):
            m.generation_config = config


def pack_right(values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`~tokenweight.masks.pack_left` mirrored: each row's masked entries of ``[R, T]`` moved to the right
    end (order kept) → ``(packed [R, N], packed_mask [R, N])``."""
    packed, packed_mask, _ = pack_left(values.flip(1), mask.flip(1))
    return packed.flip(1), packed_mask.flip(1)


def left_padded_prompts(input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_mask: torch.Tensor,
                        pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts (real tokens that are not completion tokens) of ``[B, L]`` rows → left-padded ``[B, P]`` ids, mask."""
    prompt = attention_mask.bool() & ~completion_mask.bool()
    empty_rows = (~prompt.any(dim=1)).nonzero().flatten().tolist()
    if empty_rows:
        raise ValueError(f"TI-DPO anchors need a prompt; batch rows {empty_rows} have no prompt tokens")
    ids, mask = pack_right(input_ids.masked_fill(~prompt, pad_token_id), prompt)
    return ids, mask.long()


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
    packed, packed_mask, _ = pack_left(torch.stack([ids, completion.long()], dim=-1), keep)
    return AnchorBatch(input_ids=packed[..., 0], attention_mask=packed_mask.long(), completion_mask=packed[..., 1],
                       anchor_lengths=keep_new.sum(dim=1))


def anchor_generation_config(*, max_new_tokens: int, pad_token_id: int, eos_token_ids: list[int]) -> GenerationConfig:
    """The whole configuration of the anchor decode: greedy over :class:`RowSeededSampler`'s one-hot scores, with
    the KV cache, stopping at EOS or after ``max_new_tokens``."""
    return GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=max_new_tokens, pad_token_id=pad_token_id,
                            eos_token_id=eos_token_ids, use_cache=True)


@torch.no_grad()
def sample_anchors(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   completion_mask: torch.Tensor, *, seeds: list[int], pad_token_id: int,
                   eos_token_id: int | list[int], top_k: int = 50, top_p: float = 0.95, temperature: float = 0.8,
                   max_new_tokens: int = 64, max_length: int | None = None) -> AnchorBatch:
    """Sample one anchor per row from ``model`` given the row's prompt, row ``r`` with generator seed ``seeds[r]``.

    Args:
        model: the current policy, **unwrapped** (``generate`` needs the Hugging Face model itself; a PEFT model
            is fine).
        input_ids, attention_mask, completion_mask: ``[B, L]`` training-layout rows (the chosen rows of the
            batch); their prompt is every real token that is not a completion token.
        seeds: ``B`` generator seeds (see :func:`anchor_seeds`): the same seed and prompt give the same anchor.
        pad_token_id, eos_token_id: the tokenizer's ids (``eos_token_id`` may be a list).
        top_k, top_p, temperature: sampling settings (``top_k = 0`` and ``top_p = 1`` switch those filters off).
        max_new_tokens: cap on anchor tokens, further limited to ``max_length`` − the longest prompt.
        max_length: the training ``max_length`` (``None``: no limit beyond ``max_new_tokens``).

    Raises:
        UserError: no room left under ``max_length`` for an anchor.
        ValueError: a row without a prompt, or not one seed per row.
    """
    if len(seeds) != input_ids.shape[0]:
        raise ValueError(f"TI-DPO anchors: {len(seeds)} seeds for {input_ids.shape[0]} rows")
    prompt_ids, prompt_mask = left_padded_prompts(input_ids, attention_mask, completion_mask, pad_token_id)
    budget = max_new_tokens if max_length is None else min(max_new_tokens, max_length - prompt_ids.shape[1])
    if budget < 1:
        raise UserError(f"TI-DPO anchor: the longest prompt ({prompt_ids.shape[1]} tokens) leaves no room under "
                         f"`max_length`={max_length}")
    eos_ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    config = anchor_generation_config(max_new_tokens=budget, pad_token_id=pad_token_id, eos_token_ids=eos_ids)
    sampler = RowSeededSampler(seeds, temperature=temperature, top_k=top_k, top_p=top_p)
    with eval_mode(model), blank_generation_configs(model):
        generated = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=config,
                                   logits_processor=LogitsProcessorList([sampler]), **generation_kwargs(model))
    return assemble_anchor_batch(prompt_ids, prompt_mask, generated[:, prompt_ids.shape[1]:], eos_ids, pad_token_id)


def anchor_token_logps(model: nn.Module, anchor: AnchorBatch) -> torch.Tensor:
    """Per-token log-probs ``[B, La-1]`` (shifted alignment, fp32) of the anchor batch under ``model``.

    Gradients flow when enabled (policy); wrap in ``torch.no_grad()`` for the reference.
    """
    hidden = backbone(model)(anchor.input_ids, attention_mask=anchor.attention_mask,
                             position_ids=position_ids_from_mask(anchor.attention_mask),
                             use_cache=False).last_hidden_state[:, :-1]
    return logps_from_hidden(hidden, to_shifted(anchor.input_ids), output_head(model))
