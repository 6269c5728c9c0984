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

import json
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


def key_slot(tokenizer, row: dict, facts: Any = None, side: str = "chosen") -> tuple[int, int]:
    """``(index, length)``: the key slot within the ``side`` (``chosen`` or ``rejected``) completion ids of ``row``
    and the number of those ids, EOS included (``facts``: the row's facts file, ``None`` = built-in). The chosen
    token there is ``row["key"]`` and the rejected one ``row["wrong_key"]``, swapped for a noisy row."""
    return _key_slot(tokenizer, row, resolve_facts(facts), side)


def key_slots(tokenizer, rows, facts: Any = None, side: str = "chosen") -> list[tuple[int, int]]:
    """:func:`key_slot` of every row, with ``facts`` loaded and validated once."""
    facts = resolve_facts(facts)
    return [_key_slot(tokenizer, row, facts, side) for row in rows]


def key_word(row: dict, side: str = "chosen") -> str:
    """The word in the key slot of ``row``'s ``side`` answer: ``key`` in chosen and ``wrong_key`` in rejected,
    swapped for a noisy row."""
    if side not in ("chosen", "rejected"):
        raise ValueError(f"side must be 'chosen' or 'rejected', got {side!r}")
    return row["wrong_key"] if row["noisy"] == (side == "chosen") else row["key"]


def _key_slot(tokenizer, row: dict, facts: dict[str, Any], side: str) -> tuple[int, int]:
    word = key_word(row, side)
    key_char = key_char_offset(_answer_template(facts, row), row["subject"])
    _, completion_ids, index = _slot(tokenizer, row["prompt"], row[side][-1]["content"], key_char, word)
    return index, len(completion_ids)


def key_position(tokenizer, row: dict, facts: Any = None) -> int:
    """Index of the key slot within the chosen completion ids of ``row`` (:func:`key_slot`)."""
    return key_slot(tokenizer, row, facts)[0]


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


def _slot_contexts(tokenizer, rows: list[dict], facts: dict[str, Any]) -> tuple[list[list[int]], list[list[int]]]:
    """Per row, the ids before the key slot of the clean answer template (prompt + answer prefix) and the token ids
    of ``[key, *distractors]`` (``distractors[0]`` is the lure)."""
    contexts, candidates = [], []
    for row in rows:
        template, facts_row = _answer_template(facts, row), find_row(facts, row["family"], row["subject"])
        key_char = key_char_offset(template, row["subject"])
        slots = [_slot(tokenizer, row["prompt"], fill(template, row["subject"], word), key_char, word)
                 for word in [facts_row["key"], *facts_row["distractors"]]]
        prompt_ids, completion_ids, index = slots[0]  # the context before the slot is the same for every word
        contexts.append(prompt_ids + completion_ids[:index])
        candidates.append([completion[slot] for _, completion, slot in slots])
    return contexts, candidates


def _right_padded(sequences: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.tensor([s + [pad_id] * (width - len(s)) for s in sequences], device=device)
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences], device=device)
    return ids, mask


@torch.no_grad()
def answer_set_logps(model, tokenizer, rows: list[dict], facts: Any = None, batch_size: int = 64) -> list[torch.Tensor]:
    """Per row, ``[1 + D]`` log-probs at the key slot of the clean answer template, teacher-forced on the prompt and
    the answer's tokens before the key: the correct key first, then the row's distractors (the lure first)."""
    facts = resolve_facts(facts)
    was_training, device = model.training, _model_device(model)
    model.eval()
    contexts, candidates = _slot_contexts(tokenizer, rows, facts)
    out = []
    for begin in range(0, len(rows), batch_size):
        chunk = contexts[begin:begin + batch_size]
        input_ids, attention_mask = _right_padded(chunk, tokenizer.pad_token_id, device)
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
        last = torch.tensor([len(c) - 1 for c in chunk], device=device)
        logps = torch.log_softmax(logits[torch.arange(len(chunk), device=device), last], dim=-1)  # [b, V]
        out.extend(logps[b, ids].cpu() for b, ids in enumerate(candidates[begin:begin + batch_size]))
    model.train(was_training)
    return out


def key_margins(model, tokenizer, rows: list[dict], facts: Any = None, batch_size: int = 64) -> torch.Tensor:
    """``[N]`` log-prob margins at the key slot: ``log p(key) - max_d log p(d)`` over the row's distractors ``d``,
    given the prompt and the chosen answer's tokens before the key."""
    return torch.stack([s[0] - s[1:].max() for s in answer_set_logps(model, tokenizer, rows, facts, batch_size)])


@torch.no_grad()
def nonkey_kl(model, ref_model, tokenizer, rows: list[dict], facts: Any = None, batch_size: int = 64) -> torch.Tensor:
    """``[N]`` mean over the chosen completion's tokens other than the key slot (EOS included) of
    ``KL(π(·|y_<t) ‖ π_ref(·|y_<t))`` over the whole vocabulary, teacher-forced on the chosen answer."""
    facts = resolve_facts(facts)
    device = _model_device(model)
    training = [model.training, ref_model.training]
    model.eval()
    ref_model.eval()
    sequences, spans = [], []
    for row in rows:
        word = key_word(row)
        key_char = key_char_offset(_answer_template(facts, row), row["subject"])
        prompt_ids, completion_ids, key = _slot(tokenizer, row["prompt"], row["chosen"][-1]["content"], key_char, word)
        sequences.append(prompt_ids + completion_ids)
        spans.append((len(prompt_ids), len(completion_ids), key))
    out = []
    for begin in range(0, len(rows), batch_size):
        input_ids, attention_mask = _right_padded(sequences[begin:begin + batch_size], tokenizer.pad_token_id, device)
        logp = torch.log_softmax(model(input_ids=input_ids, attention_mask=attention_mask).logits.float(), dim=-1)
        logq = torch.log_softmax(ref_model(input_ids=input_ids, attention_mask=attention_mask).logits.float(), dim=-1)
        kl = (logp.exp() * (logp - logq)).sum(dim=-1)  # [b, L]: position p predicts token p + 1
        for b, (start, length, key) in enumerate(spans[begin:begin + batch_size]):
            positions = [start + t - 1 for t in range(length) if t != key]
            out.append(kl[b, positions].mean().cpu())
    model.train(training[0])
    ref_model.train(training[1])
    return torch.stack(out)


#: Greedy outcomes at the key slot, in the order of :func:`greedy_outcomes`.
OUTCOMES = ("correct", "lure", "other_answer", "outside", "format")


def greedy_outcomes(rows: list[dict], keys: list[str | None], facts: Any = None) -> list[str]:
    """Per row, what its greedy generation put in the key slot (``keys`` from :func:`generated_keys`): ``correct``,
    the ``lure`` (``distractors[0]``), an ``other_answer`` word (another distractor), a word ``outside`` the answer
    set, or ``format`` (the answer template was not followed up to the slot)."""
    facts = resolve_facts(facts)
    outcomes = []
    for row, key in zip(rows, keys, strict=True):
        distractors = find_row(facts, row["family"], row["subject"])["distractors"]
        outcomes.append("format" if key is None else "correct" if key == row["key"] else
                        "lure" if key == distractors[0] else "other_answer" if key in distractors else "outside")
    return outcomes


def keyfact_item_metrics(model, ref_model, tokenizer, rows, facts: Any = None, max_new_tokens: int = 48,
                         batch_size: int = 64) -> dict[str, list[float]]:
    """The two metric axes of KeyFact v2, per row (docs/KEYFACT.md), each a list of ``N`` floats:

    learning the key (teacher-forced on the clean answer template)
        ``forced_acc`` (1 when the key outscores every distractor), ``key_margin`` (key minus best distractor),
        ``lure_margin`` (key minus lure), in log-prob;
    collateral damage
        ``answer_mass`` (probability of the answer set — key and distractors — at the key slot), ``format_fail``,
        ``gen_len`` (greedy tokens before EOS), ``kl_nonkey`` (:func:`nonkey_kl`; 0 when ``ref_model`` is None);
    the combined outcome (greedy)
        ``key_acc`` and the indicators ``greedy_lure``, ``greedy_other``, ``greedy_outside`` (``format_fail`` is
        the fourth way to miss).

    Everything but ``kl_nonkey`` depends on the row's prompt only (its answer template, key and distractors follow
    from the question), so it is computed once per distinct prompt and copied to the rows that share it.
    """
    facts = resolve_facts(facts)
    rows = list(rows)
    first: dict[str, int] = {}  # prompt → the index of its first row
    firsts = [first.setdefault(json.dumps(row["prompt"], sort_keys=True), k) for k, row in enumerate(rows)]
    distinct_index = {k: n for n, k in enumerate(sorted(set(firsts)))}
    prompt_of = [distinct_index[k] for k in firsts]
    distinct = [rows[k] for k in sorted(set(firsts))]
    distinct_scores = answer_set_logps(model, tokenizer, distinct, facts, batch_size)
    distinct_generations = greedy_generations(model, tokenizer, distinct, max_new_tokens, batch_size)
    scores = [distinct_scores[k] for k in prompt_of]
    generations = [distinct_generations[k] for k in prompt_of]
    outcomes = greedy_outcomes(rows, generated_keys(tokenizer, rows, generations, facts), facts)
    kl = ([0.0] * len(rows) if ref_model is None else
          nonkey_kl(model, ref_model, tokenizer, rows, facts, batch_size).tolist())
    return {"forced_acc": [float(s[0] > s[1:].max()) for s in scores],
            "key_margin": [(s[0] - s[1:].max()).item() for s in scores],
            "lure_margin": [(s[0] - s[1]).item() for s in scores],
            "answer_mass": [s.exp().sum().item() for s in scores],
            "format_fail": [float(o == "format") for o in outcomes],
            "gen_len": [float(len(g)) for g in generations],
            "kl_nonkey": kl,
            "key_acc": [float(o == "correct") for o in outcomes],
            "greedy_lure": [float(o == "lure") for o in outcomes],
            "greedy_other": [float(o == "other_answer") for o in outcomes],
            "greedy_outside": [float(o == "outside") for o in outcomes]}


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


def key_weight_stats(weights: list[list[float]], key_positions: list[int]) -> tuple[list[float], list[float]]:
    """``(share, relative)`` of each chosen completion's key weight, one float per row each.

    ``share`` = the key's weight over the total weight from the key slot onward (the tokens before it are the same in
    chosen and rejected, so their log-ratios cancel); ``relative`` = the key's weight over the row's mean weight per
    completion token (uniform: 1; all of uniform's total ``n`` on the key: ``n``). ``weights`` holds one list per
    row, one weight per completion token (EOS included); raises for a row with zero weight from its key onward.
    """
    shares, relative = [], []
    for index, (row, key) in enumerate(zip(weights, key_positions, strict=True)):
        tail = sum(row[key:])
        if tail <= 0:
            raise ValueError(f"key_weight_stats: row {index} has zero weight from its key slot {key} onward")
        shares.append(row[key] / tail)
        relative.append(row[key] * len(row) / sum(row))
    return shares, relative


def key_weight_rank(weights: list[list[float]], key_positions: list[int]) -> list[float]:
    """The key's rank by weight within each chosen completion, one float per row: 1 = the heaviest token, tied
    tokens share the mean of their ranks (uniform weights: (n + 1) / 2 for n completion tokens, EOS included).
    ``weights`` and ``key_positions`` as :func:`key_weight_stats`. With TIS-DPO's ``rank_based`` weights it is the
    key's rank by token reward (ties in response order, as the transform ranks them)."""
    ranks = []
    for row, key in zip(weights, key_positions, strict=True):
        heavier = sum(w > row[key] for w in row)
        tied_others = sum(w == row[key] for w in row) - 1
        ranks.append(1 + heavier + tied_others / 2)
    return ranks


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
