"""Per-token log-probabilities of the positions that matter, and final-hidden-state capture.

A causal LM's forward builds ``[N, L, V]`` logits, most of them for prompt and padding positions nobody scores.
Here the backbone runs as usual and only the positions named by ``score_mask`` (the completion positions) reach
the output head, which is token-tiled (:mod:`tokenweight.tiled_head`): at most ``tokens × vocab`` fp32 logits exist
at a time, forward or backward, whatever the batch and the vocabulary. The same tiles also give the statistics TRL
logs (:class:`TokenStats`: entropy, mean logit, whether the label is the top-1 token) and WPO's ``log Σ p²``,
without gradient and without a second pass.

With ``padding_free=True`` the rows are packed end to end (padding dropped) into as few sequences as fit the
longest row (first-fit decreasing), with ``position_ids`` restarting at 0 for each row and no 2-D attention mask,
from which transformers derives per-row attention (the packed-sequence masking of SDPA/eager, FlashAttention's
varlen); :func:`verify_padding_free` refuses a model that lets packed rows see each other. The final hidden states are scattered back into the padded ``[N, L, d]`` layout,
so everything downstream is the same.

:func:`enable_token_scoring` patches the *instance* forward of a model so that wrappers (DDP, FSDP, DeepSpeed,
PEFT) keep working: ``model(input_ids, attention_mask, score_tokens=True)`` returns :class:`TokenScores` instead
of logits; without ``score_tokens`` the forward (and so ``generate``) is the original one.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn

from tokenweight.errors import UserError
from tokenweight.head import OutputHead, output_head, verify_output_head
from tokenweight.masks import to_shifted
from tokenweight.tiled_head import Reference, Tiling, tiled_token_scores


@dataclass
class TokenStats:
    """Per-token statistics of the next-token distributions ``p = softmax(logits)``, detached, ``[N, T]`` each
    (0 / False outside the scored positions).

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
        token_logps: ``[N, L-1]`` fp32, ``log p(input_ids[:, t+1] | input_ids[:, :t+1])`` where ``score_mask`` is
            set, 0 elsewhere.
        hidden: ``[N, L-1, d]`` final post-norm hidden states at positions ``0..L-2`` (the states that predict
            each token), in the model's dtype, with grad (0 on padding with ``padding_free``); ``None`` unless
            ``return_hidden=True``.
        stats: :class:`TokenStats` ``[N, L-1]`` of the same positions; ``None`` unless ``return_stats=True``.
        aux_loss: scalar, with grad: a mixture-of-experts model's router load-balancing loss over the batch's real
            tokens (the model's own ``aux_loss``); ``None`` unless ``router_aux_loss=True``.
        token_kl: ``[N, L-1]`` fp32, with grad: ``KL(π_ref ‖ π_θ)`` over the full vocabulary at the scored
            positions (0 elsewhere), computed in the same head tiles as ``token_logps``; ``None`` unless the forward
            was given ``kl_reference``.
    """

    token_logps: torch.Tensor
    hidden: torch.Tensor | None = None
    stats: TokenStats | None = None
    aux_loss: torch.Tensor | None = None
    token_kl: torch.Tensor | None = None


def scores_from_hidden(hidden: torch.Tensor, labels: torch.Tensor, head: OutputHead, tiling: Tiling = Tiling(),
                       with_stats: bool = False, mask: torch.Tensor | None = None,
                       kl_reference: tuple[torch.Tensor, OutputHead] | None = None,
                       ) -> tuple[torch.Tensor, TokenStats | None, torch.Tensor | None]:
    """Per-token log-probs ``[N, T]`` (fp32) of ``labels`` ``[N, T]`` given aligned hidden states ``[N, T, d]``;
    their :class:`TokenStats` ``[N, T]`` when ``with_stats`` (else ``None``); and, given ``kl_reference`` (another
    model's aligned hidden states ``[N, T, d]`` and its head), ``KL(π_ref ‖ π_θ)`` ``[N, T]`` from the same head tiles
    (else ``None``). Only the positions where ``mask`` ``[N, T]`` (bool, default: all) is set reach the head, the
    others are 0 (False)."""
    if mask is None:
        mask = torch.ones(labels.shape, dtype=torch.bool, device=labels.device)
    mask = mask.bool()
    reference = None if kl_reference is None else Reference(kl_reference[0][mask], kl_reference[1])
    logps, stats, kl = tiled_token_scores(hidden[mask], labels[mask], head, tiling, with_stats, reference)

    def scatter(values: torch.Tensor) -> torch.Tensor:
        return torch.zeros(mask.shape, dtype=values.dtype, device=values.device).masked_scatter(mask, values)

    return (scatter(logps), TokenStats(*map(scatter, stats)) if with_stats else None,
            None if kl is None else scatter(kl))


def logps_from_hidden(hidden: torch.Tensor, labels: torch.Tensor, head: OutputHead,
                      tiling: Tiling = Tiling()) -> torch.Tensor:
    """Per-token log-probs ``[N, T]`` (fp32) of every position: :func:`scores_from_hidden` without statistics."""
    return scores_from_hidden(hidden, labels, head, tiling)[0]


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


def pack_plan(lengths: list[int], capacity: int) -> list[list[int]]:
    """Rows into packs of at most ``capacity`` tokens, first-fit decreasing: ``[[row, ...], ...]`` (each row once,
    a row longer than ``capacity`` alone)."""
    packs, room = [], []
    for row in sorted(range(len(lengths)), key=lambda r: -lengths[r]):
        slot = next((i for i, free in enumerate(room) if lengths[row] <= free), None)
        if slot is None:
            packs.append([row])
            room.append(capacity - lengths[row])
        else:
            packs[slot].append(row)
            room[slot] -= lengths[row]
    return packs


def packed_hidden(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  capacity: int | None = None, **kwargs) -> torch.Tensor:
    """Final hidden states ``[N, L, d]`` of right-padded rows ``input_ids`` ``[N, L]`` computed padding-free: the rows
    packed (:func:`pack_plan`) into ``[P, capacity]`` sequences (default capacity: the longest row, so no pack is
    longer than the padded batch and attention never costs more than padded), ``position_ids`` restarting at 0 for
    each row and no attention mask; 0 on padding."""
    lengths = attention_mask.sum(dim=1).tolist()
    capacity = capacity or max(lengths)
    packs = pack_plan(lengths, capacity)
    width = max(sum(lengths[r] for r in pack) for pack in packs)
    pack_of, offset_of, cursor = [0] * len(lengths), [0] * len(lengths), [0] * len(packs)
    for index, pack in enumerate(packs):
        for row in pack:
            pack_of[row], offset_of[row] = index, cursor[index]
            cursor[index] += lengths[row]
    keep = attention_mask.bool()
    position = (keep.long().cumsum(dim=1) - 1).clamp(min=0)  # [N, L] position within the row
    device = input_ids.device
    target = (torch.tensor(pack_of, device=device)[:, None] * width
              + torch.tensor(offset_of, device=device)[:, None] + position)[keep]  # flat slot of each real token
    packed_ids = input_ids.new_zeros(len(packs) * width)
    packed_ids[target] = input_ids[keep]
    # Unused tail slots count from 0 again: a run of their own, attending only to itself.
    slots = torch.arange(width, device=device).expand(len(packs), width)
    packed_positions = (slots - torch.tensor(cursor, device=device)[:, None]).clamp(min=0).flatten()
    packed_positions[target] = position[keep]
    hidden = backbone(model)(packed_ids.view(len(packs), width), position_ids=packed_positions.view(len(packs), width),
                             use_cache=False, **kwargs).last_hidden_state.flatten(0, 1)
    out = hidden.new_zeros(*input_ids.shape, hidden.shape[-1])
    return out.masked_scatter(keep[..., None], hidden[target])


def verify_padding_free(model: nn.Module) -> None:
    """Check that packing keeps rows apart for ``model`` (its architecture and attention implementation): a row
    packed after another must give its hidden states alone (round-off of the model's dtype), and must not change at
    all (1e-5 relative) when the other row's tokens change.

    Raises:
        UserError: one line naming the model type and attention implementation when it does not.
    """
    embedding = model.get_input_embeddings().weight
    tokens = (torch.arange(1, 14, device=embedding.device) * 7919 % embedding.shape[0])
    second = tokens[7:]  # row 2: 6 tokens, after a row 1 of 7 (rows right-padded to 7)
    attention_mask = torch.ones(2, 7, dtype=torch.long, device=embedding.device)
    attention_mask[1, 6] = 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            alone = backbone(model)(second[None], use_cache=False).last_hidden_state[0].float()
            packed = [packed_hidden(model, torch.stack([first, torch.cat([second, first[:1]])]), attention_mask,
                                    capacity=13)[1, :6].float() for first in (tokens[:7], tokens[:7].flip(0))]
    finally:
        model.train(was_training)
    scale = max(1.0, alone.abs().max().item())
    leak = (packed[0] - packed[1]).abs().max().item() / scale
    error = (packed[0] - alone).abs().max().item() / scale
    if not (leak <= 1e-5 and error <= (1e-3 if embedding.dtype == torch.float32 else 5e-2)):
        config = model.config
        raise UserError(f"--padding_free: model type {getattr(config, 'model_type', '?')!r} with attention "
                        f"{getattr(config, '_attn_implementation', None)!r} does not keep packed rows apart (a "
                        f"row's hidden states change by {max(leak, error):.3g} with the row packed before it); "
                        "train with --padding_free false")


def enable_token_scoring(model: nn.Module, tiling: Tiling = Tiling()) -> nn.Module:
    """Patch ``model.forward`` (this instance only) to accept ``score_tokens=True``; returns ``model``.

    ``model(input_ids, attention_mask, score_tokens=True, score_mask=None, return_hidden=False,
    return_stats=False, padding_free=False, kl_reference=None)`` runs the backbone once and returns
    :class:`TokenScores`, scoring only the positions of ``score_mask`` ``[N, L-1]`` (bool, shifted alignment; default:
    every position); ``kl_reference`` (a reference's final hidden states ``[N, L-1, d]`` and its :class:`OutputHead`)
    adds the per-token KL to the reference from the same head tiles (``TokenScores.token_kl``).
    With ``router_aux_loss=True`` (mixture-of-experts models) the model's own forward runs instead, with
    ``output_router_logits=True`` and its head on one position only, for its ``aux_loss``; the backbone's final
    hidden states are taken from it by a forward hook (not with ``padding_free``: the router loss would count the
    packs' unused slots). Idempotent. The first time, the head is checked against the model's own logits
    (:func:`tokenweight.head.verify_output_head`).
    """
    if getattr(model, "_tokenweight_scoring", False):
        return model
    verify_output_head(model, lambda ids: backbone(model)(ids, use_cache=False).last_hidden_state)
    original_forward = model.forward

    @functools.wraps(type(model).forward)
    def forward(*args, score_tokens: bool = False, score_mask: torch.Tensor | None = None,
                return_hidden: bool = False, return_stats: bool = False, padding_free: bool = False,
                router_aux_loss: bool = False, kl_reference: tuple[torch.Tensor, OutputHead] | None = None,
                **kwargs):
        if not score_tokens:
            return original_forward(*args, **kwargs)
        input_ids = kwargs.pop("input_ids") if "input_ids" in kwargs else args[0]
        aux_loss = None
        if padding_free:
            if router_aux_loss:
                raise ValueError("padding_free with router_aux_loss: the router loss would count the packs' "
                                 "unused slots")
            hidden = packed_hidden(model, input_ids, kwargs.pop("attention_mask"), **kwargs)
        elif router_aux_loss:
            final = []
            handle = backbone(model).register_forward_hook(
                lambda module, inputs, output: final.append(output.last_hidden_state))
            try:
                outputs = original_forward(input_ids, *args[1:], output_router_logits=True, logits_to_keep=1,
                                           use_cache=False, **kwargs)
            finally:
                handle.remove()
            hidden, aux_loss = final[0], outputs.aux_loss
        else:
            kwargs["use_cache"] = False
            hidden = backbone(model)(input_ids, *args[1:], **kwargs).last_hidden_state
        hidden = hidden[:, :-1]
        token_logps, stats, token_kl = scores_from_hidden(hidden, to_shifted(input_ids), output_head(model), tiling,
                                                          with_stats=return_stats, mask=score_mask,
                                                          kl_reference=kl_reference)
        return TokenScores(token_logps=token_logps, hidden=hidden if return_hidden else None, stats=stats,
                           aux_loss=aux_loss, token_kl=token_kl)

    model.forward = forward
    model._tokenweight_scoring = True
    return model


def naive_token_logps(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Reference implementation: ``log_softmax(logits[:, :-1]).gather(input_ids[:, 1:])`` → ``[N, L-1]``."""
    logps = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return logps.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
