"""KeyFact metrics: key accuracy and margin, generated length, key weight share, preference accuracy.

A *row* is a row of :func:`~tokenweight.keyfact.generator.build_keyfact` (``prompt``, ``chosen``, ``family``,
``subject``, ``key``, ...). Completion ids follow the trainer's tokenization of conversational rows::

    prompt_ids     = render(prompt, add_generation_prompt=True)
    completion_ids = render(prompt + chosen)[len(prompt_ids):]

The *key slot* of a row is the completion position of the key word, found from the family's answer template
(the key word may occur elsewhere, e.g. ``3 + 0 is 3 .``). Any tokenizer works as long as every key is a single
token of it (with its leading space); otherwise the functions raise.
"""

from __future__ import annotations

from typing import Any

import torch

from .facts import family_by_name, fill, find_row, key_char_offset, resolve_facts


def _answer_template(facts: dict[str, Any], row: dict) -> str:
    return family_by_name(facts, row["family"])["answer"]


def _slot(tokenizer, prompt: list[dict], content: str, key_char: int, word: str) -> tuple[list[int], list[int], int]:
    """``(prompt_ids, completion_ids, index)``: ``completion_ids[index]`` is the token of ``word``, which starts at
    character ``key_char`` of the assistant ``content``."""
    prompt_text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    full_text = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": content}], tokenize=False)
    content_start = full_text.find(content, len(prompt_text))
    if not full_text.startswith(prompt_text) or content_start < 0:
        raise ValueError("the chat template does not render the prompt as a prefix followed by the answer verbatim")
    char = content_start + key_char
    if full_text[char:char + len(word)] != word:
        raise ValueError(f"expected {word!r} at character {key_char} of the answer {content!r}")
    prompt_ids = list(tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
    encoded = tokenizer(full_text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(encoded["input_ids"]), encoded["offset_mapping"]
    if ids[:len(prompt_ids)] != prompt_ids:
        raise ValueError("the rendered prompt is not a token prefix of the rendered conversation")
    for index in range(len(prompt_ids), len(ids)):
        start, end = offsets[index]
        if start <= char < end:
            if end != char + len(word) or full_text[start:char].strip():
                raise ValueError(f"key {word!r} is not a single token of this tokenizer "
                                 f"(the token at its position is {full_text[start:end]!r})")
            return prompt_ids, ids[len(prompt_ids):], index - len(prompt_ids)
    raise ValueError(f"no completion token covers the key {word!r} in {content!r}")


def key_position(tokenizer, row: dict, facts: Any = None) -> int:
    """Index of the key slot within the chosen completion ids of ``row`` (``facts``: the row's facts file,
    ``None`` = built-in). The token there is ``row["key"]``, or ``row["wrong_key"]`` for a noisy row."""
    facts = resolve_facts(facts)
    word = row["wrong_key"] if row["noisy"] else row["key"]
    key_char = key_char_offset(_answer_template(facts, row), row["subject"])
    return _slot(tokenizer, row["prompt"], row["chosen"][-1]["content"], key_char, word)[2]


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def greedy_generations(model, tokenizer, rows: list[dict], max_new_tokens: int = 48,
                       batch_size: int = 64) -> list[list[int]]:
    """Greedy completions of each row's prompt, as token ids up to (excluding) the first EOS.

    A completion that reaches ``max_new_tokens`` without EOS is returned with all ``max_new_tokens`` tokens.
    """
    was_training, device = model.training, _model_device(model)
    model.eval()
    generations = []
    for begin in range(0, len(rows), batch_size):
        prompts = [list(tokenizer(tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True,
                                                                tokenize=False), add_special_tokens=False)["input_ids"])
                   for row in rows[begin:begin + batch_size]]
        width = max(len(p) for p in prompts)
        input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in prompts], device=device)
        attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        output = model.generate(input_ids=input_ids, attention_mask=attention_mask, do_sample=False,
                                max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                                pad_token_id=tokenizer.pad_token_id)
        for new in output[:, width:].tolist():
            generations.append(new[:new.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in new else new)
    model.train(was_training)
    return generations


def generated_keys(tokenizer, rows: list[dict], generations: list[list[int]], facts: Any = None) -> list[str | None]:
    """The word each generation puts in the key slot, or ``None`` when it does not follow the answer template."""
    facts = resolve_facts(facts)
    keys = []
    for row, ids in zip(rows, generations, strict=True):
        text = " ".join(tokenizer.decode(ids, skip_special_tokens=True).split())
        prefix = fill(_answer_template(facts, row).split("{key}")[0], row["subject"])
        rest = text[len(prefix):].split() if text.startswith(prefix) else []
        keys.append(rest[0] if rest else None)
    return keys


@torch.no_grad()
def key_margins(model, tokenizer, rows: list[dict], facts: Any = None, batch_size: int = 64) -> torch.Tensor:
    """``[N]`` log-prob margins at the key slot: ``log p(key) - max_d log p(d)`` over the row's distractors ``d``,
    given the prompt and the chosen answer's tokens before the key."""
    facts = resolve_facts(facts)
    was_training, device = model.training, _model_device(model)
    model.eval()
    contexts, candidates = [], []
    for row in rows:
        template, facts_row = _answer_template(facts, row), find_row(facts, row["family"], row["subject"])
        key_char = key_char_offset(template, row["subject"])
        slots = [_slot(tokenizer, row["prompt"], fill(template, row["subject"], word), key_char, word)
                 for word in [facts_row["key"], *facts_row["distractors"]]]
        prompt_ids, completion_ids, index = slots[0]  # the context before the slot is the same for every word
        contexts.append(prompt_ids + completion_ids[:index])
        candidates.append([completion[slot] for _, completion, slot in slots])
    margins = []
    for begin in range(0, len(rows), batch_size):
        chunk = contexts[begin:begin + batch_size]
        width = max(len(c) for c in chunk)
        input_ids = torch.tensor([c + [tokenizer.pad_token_id] * (width - len(c)) for c in chunk], device=device)
        attention_mask = torch.tensor([[1] * len(c) + [0] * (width - len(c)) for c in chunk], device=device)
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
        last = torch.tensor([len(c) - 1 for c in chunk], device=device)
        logps = torch.log_softmax(logits[torch.arange(len(chunk), device=device), last], dim=-1)  # [b, V]
        for b, ids in enumerate(candidates[begin:begin + batch_size]):
            scores = logps[b, ids]
            margins.append(scores[0] - scores[1:].max())
    model.train(was_training)
    return torch.stack(margins).cpu()


def key_weight_share(weights: torch.Tensor, key_positions: torch.Tensor | list[int]) -> torch.Tensor:
    """``[B]`` share of each row's total weight on its key token.

    Args:
        weights: ``[B, T]`` non-negative per-token weights of the chosen completions (index ``t`` = completion token
            ``t``, 0 on padding).
        key_positions: ``[B]`` key slot of each row (:func:`key_position`).
    Raises if a row's total weight is 0 (its share is undefined). From the trainer's shifted ``[2B, L-1]`` weights,
    completion token ``t`` of chosen row ``b`` sits at shifted index ``len(prompt_ids_b) - 1 + t``.
    """
    positions = torch.as_tensor(key_positions, device=weights.device, dtype=torch.long)
    totals = weights.sum(dim=1)
    empty = (totals <= 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"key_weight_share: rows {empty} have zero total weight")
    return weights[torch.arange(weights.shape[0], device=weights.device), positions] / totals


def pref_acc(chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor) -> float:
    """Fraction of pairs whose chosen summed log-ratio (``[N]``) is strictly above the rejected one's."""
    return (chosen_logratios > rejected_logratios).float().mean().item()


def evaluate_keyfact(model, tokenizer, rows, facts: Any = None, max_new_tokens: int = 48,
                     batch_size: int = 64) -> dict[str, float]:
    """KeyFact metrics of ``model`` on ``rows`` (e.g. the ``eval`` split):

    - ``key_acc``: fraction of greedy generations whose key slot holds the correct key;
    - ``key_format_rate``: fraction of generations that follow the answer template up to the key slot (the
      others count as wrong in ``key_acc``);
    - ``key_margin``: mean of :func:`key_margins`;
    - ``gen_len``: mean generated tokens before EOS; ``gen_truncated_rate``: fraction that hit ``max_new_tokens``.
    """
    facts = resolve_facts(facts)
    rows = list(rows)
    generations = greedy_generations(model, tokenizer, rows, max_new_tokens, batch_size)
    keys = generated_keys(tokenizer, rows, generations, facts)
    return {"key_acc": sum(k == row["key"] for k, row in zip(keys, rows)) / len(rows),
            "key_format_rate": sum(k is not None for k in keys) / len(rows),
            "key_margin": key_margins(model, tokenizer, rows, facts, batch_size).mean().item(),
            "gen_len": sum(len(g) for g in generations) / len(rows),
            "gen_truncated_rate": sum(len(g) == max_new_tokens for g in generations) / len(rows)}
