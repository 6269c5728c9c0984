"""Pairwise-judge inputs built by splicing token ids (AttentionPO, spec §8.4).

The judge template is rendered once per tokenizer as one chat user turn (with the generation prompt) around
three sentinel strings; the rendered text is cut at the sentinels and each of the four text pieces is tokenized
without added special tokens. A judge input is then

    piece_0 + question ids + piece_1 + answer A ids + piece_2 + answer B ids + piece_3

where the answer ids are *exactly* the training completion ids minus their trailing end-of-turn/EOS tokens, so a
judge position maps 1:1 onto a training position and no alignment step exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

from tokenweight.errors import UserError

_PLACEHOLDERS = ("{question}", "{answer_a}", "{answer_b}")
_SENTINELS = ("\x00TW-QUESTION\x00", "\x00TW-ANSWER-A\x00", "\x00TW-ANSWER-B\x00")


def default_template() -> str:
    """The library's own judge wording (``judge.txt`` next to this module)."""
    return resources.files(__package__).joinpath("judge.txt").read_text(encoding="utf-8")


def check_template(template: str) -> None:
    """Raise unless ``template`` holds each placeholder exactly once, in the order question, answer A, answer B."""
    counts = {p: template.count(p) for p in _PLACEHOLDERS}
    if any(c != 1 for c in counts.values()):
        raise ValueError(f"judge template must contain each of {_PLACEHOLDERS} exactly once; found {counts}")
    if not template.index("{question}") < template.index("{answer_a}") < template.index("{answer_b}"):
        raise ValueError("judge template placeholders must appear in the order {question}, {answer_a}, {answer_b}")


def template_pieces(tokenizer, template: str) -> list[list[int]]:
    """Token ids of the four text pieces around the placeholders, after the chat template.

    The filled template is one user message rendered with ``add_generation_prompt=True`` (so the judge input ends
    where the model would start its reply); a tokenizer without a chat template gets the raw template text.
    Returns 4 lists of ids, each tokenized with ``add_special_tokens=False``.
    """
    check_template(template)
    text = template
    for placeholder, sentinel in zip(_PLACEHOLDERS, _SENTINELS):
        text = text.replace(placeholder, sentinel)
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
    pieces = []
    for sentinel in _SENTINELS:
        if text.count(sentinel) != 1:
            raise ValueError("the chat template altered the judge template's placeholders; cannot splice ids")
        head, text = text.split(sentinel)
        pieces.append(head)
    pieces.append(text)
    return [list(tokenizer(piece, add_special_tokens=False)["input_ids"]) for piece in pieces]


def question_text(prompt) -> str:
    """The text of the judge's user-prompt block.

    ``prompt`` is a string (standard row: used as is) or a list of chat messages (conversational row): a single
    message gives its content; several give a plain transcript, one ``Role: content`` paragraph per message.
    """
    if isinstance(prompt, str):
        return prompt
    if len(prompt) == 1:
        return prompt[0]["content"]
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in prompt)


def _special_ids(tokenizer) -> set[int]:
    ids = set(tokenizer.all_special_ids)
    ids.update(i for i, tok in getattr(tokenizer, "added_tokens_decoder", {}).items() if tok.special)
    return ids


def split_completion(completion_ids: list[int], tokenizer) -> tuple[list[int], int]:
    """Split training completion ids into ``(answer_ids, n_trailing)``.

    The trailing part is the longest suffix made only of special tokens (EOS, end-of-turn, …) and whitespace-only
    tokens that *starts* with a special token: whitespace after the last special token (e.g. the newline a chat
    template writes after ``<|im_end|>``) is trailing, whitespace before the first one belongs to the answer.
    """
    special = _special_ids(tokenizer)

    def is_space(token_id: int) -> bool:
        return tokenizer.decode([token_id]).strip() == ""

    start = len(completion_ids)
    while start > 0 and (completion_ids[start - 1] in special or is_space(completion_ids[start - 1])):
        start -= 1
    while start < len(completion_ids) and completion_ids[start] not in special:
        start += 1
    return list(completion_ids[:start]), len(completion_ids) - start


@dataclass
class JudgePair:
    """The two judge inputs of one preference pair and how its responses map onto them.

    Attributes:
        inputs: ``(cr, rc)`` judge input ids; order ``cr`` has answer A = chosen, ``rc`` answer A = rejected.
        spans: ``spans[o][k]`` = ``(start, end)`` of answer ``k`` (0 = chosen, 1 = rejected) in ``inputs[o]``.
        answer_lengths: answer tokens of (chosen, rejected), judged or not.
        trailing: trailing end-of-turn/EOS tokens of (chosen, rejected) completions.
    """

    inputs: tuple[list[int], list[int]]
    spans: tuple[tuple[tuple[int, int], tuple[int, int]], tuple[tuple[int, int], tuple[int, int]]]
    answer_lengths: tuple[int, int]
    trailing: tuple[int, int]

    @property
    def judged_lengths(self) -> tuple[int, int]:
        """Answer tokens of (chosen, rejected) that the judge saw (a prefix of each answer)."""
        return tuple(end - start for start, end in self.spans[0])


def _fair_lengths(lengths: list[int], budget: int) -> list[int]:
    """The largest common cap ``c`` with ``Σ min(n, c) ≤ budget``; returns ``[min(n, c) for n in lengths]``."""
    low, high = 0, max(lengths)
    while low < high:
        mid = (low + high + 1) // 2
        if sum(min(n, mid) for n in lengths) <= budget:
            low = mid
        else:
            high = mid - 1
    return [min(n, low) for n in lengths]


def build_judge_pair(pieces: list[list[int]], question_ids: list[int], chosen_answer: list[int],
                     rejected_answer: list[int], trailing: tuple[int, int], max_length: int | None,
                     index: int) -> JudgePair:
    """Assemble the two judge inputs of one pair (see the module docstring).

    When the input would exceed ``max_length`` tokens, the question, the chosen answer and the rejected answer are
    all cut to one common maximum length, the largest that fits: the question keeps its end, each answer its
    start (the same judged prefix in both orders). ``index`` names the row in errors.
    """
    for name, answer in (("chosen", chosen_answer), ("rejected", rejected_answer)):
        if not answer:
            raise ValueError(f"row {index}: the {name} completion has no answer tokens (only end-of-turn/EOS), "
                             "so the judge has nothing to weigh")
    answer_lengths = (len(chosen_answer), len(rejected_answer))
    fixed = sum(len(p) for p in pieces)
    if max_length is not None and fixed + len(question_ids) + len(chosen_answer) + len(rejected_answer) > max_length:
        if max_length < fixed + 2:
            raise UserError(f"judge max length {max_length} cannot hold the judge template ({fixed} tokens) and "
                            "one token per answer; raise --attention_max_length")
        n_q, n_c, n_r = _fair_lengths([len(question_ids), len(chosen_answer), len(rejected_answer)],
                                      max_length - fixed)
        question_ids = question_ids[len(question_ids) - n_q:]
        chosen_answer, rejected_answer = chosen_answer[:n_c], rejected_answer[:n_r]
    head = pieces[0] + question_ids + pieces[1]
    inputs, spans = [], []
    answers = (chosen_answer, rejected_answer)
    for order in (0, 1):  # 0: A = chosen, B = rejected; 1: A = rejected, B = chosen
        first, second = answers[order], answers[1 - order]
        a_start = len(head)
        b_start = a_start + len(first) + len(pieces[2])
        inputs.append(head + first + pieces[2] + second + pieces[3])
        span_a, span_b = (a_start, a_start + len(first)), (b_start, b_start + len(second))
        spans.append((span_a, span_b) if order == 0 else (span_b, span_a))
    return JudgePair(inputs=tuple(inputs), spans=tuple(spans), answer_lengths=answer_lengths, trailing=trailing)


def judge_pair_for_row(row: dict, index: int, tokenizer, pieces: list[list[int]],
                       max_length: int | None) -> JudgePair:
    """The :class:`JudgePair` of one tokenized row (``prompt``, ``chosen_ids``, ``rejected_ids``)."""
    for column in ("prompt", "chosen_ids", "rejected_ids"):
        if column not in row:
            raise ValueError(f"row {index}: missing column {column!r}; AttentionPO needs tokenized rows")
    chosen_answer, chosen_trailing = split_completion(row["chosen_ids"], tokenizer)
    rejected_answer, rejected_trailing = split_completion(row["rejected_ids"], tokenizer)
    question_ids = list(tokenizer(question_text(row["prompt"]), add_special_tokens=False)["input_ids"])
    return build_judge_pair(pieces, question_ids, chosen_answer, rejected_answer,
                            (chosen_trailing, rejected_trailing), max_length, index)
