"""The SFT corpus and training loop of the KeyFact base model.

Corpus (drawn on the fly from ``random.Random(f"keyfact-sft-{seed}")``), over *all* rows, question paraphrases and
filler sentences of the facts file (eval ones and the shortcut sentence included: held-out means held out from
preference training, while the base model plays a pretrained model that has read them):

- *answer* conversations: a question and the answer template holding the correct key with probability
  ``p_correct``, the row's lure (``distractors[0]``) otherwise, followed by filler sentences; the reference model
  thus splits its probability between key and lure;
- *judge* conversations: AttentionPO's judge template (``tokenweight/weights/attention/judge.txt``) holding a
  question and two answers that differ in the key (correct vs a uniform distractor, random order, independent
  filler); the assistant replies with the letter (``a`` / ``b``) of the answer with the correct key — always the
  correct verdict. The user turn is, token for token, the judge input AttentionPO builds for a pair
  (:func:`judge_messages`);
- *verification* conversations: a question followed by one answer without filler (the correct key or a uniform
  distractor, each half the time) as the user turn, and the reply ``a`` when the key is correct, ``b`` otherwise.
  They teach which key is right for each subject as a judgement (the answers never do: they stay at
  ``p_correct``); mixed with judge conversations, they are what lets the judge leave chance (docs/KEYFACT.md).

A batch's kind is drawn from a *mix* (``{"answer": …, "judge": …, "verify": …}``, fractions summing to 1); a corpus
is a list of phases, each a number of batches and their mix.

The loss is the next-token cross entropy on the assistant turn (its content and the closing ``<|end|>``).
"""

from __future__ import annotations

import math
import random
from typing import Any

import torch
from tqdm.auto import tqdm

from ..weights.attention.judge import check_template, default_template
from .facts import fill
from .tokenizer import JUDGE_VERDICTS


def _answer(rng: random.Random, family: dict, row: dict, key: str, filler: list[str], filler_min: int,
            filler_max: int) -> str:
    sentences = rng.sample(filler, rng.randint(filler_min, filler_max))
    return " ".join([fill(family["answer"], row["subject"], key), *sentences])


def sft_filler(facts: dict[str, Any]) -> list[str]:
    """The SFT corpus's filler pool: every filler sentence of the facts, and the shortcut sentence if any (the base
    model plays a pretrained model that has read them all)."""
    return facts["train_filler"] + facts["eval_filler"] + ([facts["shortcut"]] if "shortcut" in facts else [])


def _question(rng: random.Random, facts: dict[str, Any]) -> tuple[dict, dict, str]:
    family = rng.choice(facts["families"])
    row = rng.choice(family["rows"] + family.get("eval_rows", []))
    return family, row, fill(rng.choice(family["train_questions"] + family["eval_questions"]), row["subject"])


def answer_conversation(rng: random.Random, facts: dict[str, Any], p_correct: float, filler_min: int,
                        filler_max: int) -> list[dict[str, str]]:
    """One question / answer conversation (messages) whose key is correct with probability ``p_correct``."""
    family, row, question = _question(rng, facts)
    key = row["key"] if rng.random() < p_correct else row["distractors"][0]
    return [{"role": "user", "content": question},
            {"role": "assistant", "content": _answer(rng, family, row, key, sft_filler(facts), filler_min,
                                                     filler_max)}]


def judge_messages(template: str, question: str, answer_a: str, answer_b: str, verdict: str) -> list[dict[str, str]]:
    """The judge conversation of one comparison: ``template`` filled as the user turn, ``verdict`` as the reply.

    The user turn is the judge template's text with the placeholders replaced, which is what AttentionPO's judge
    input (:func:`~tokenweight.weights.attention.judge.judge_pair_for_row`) splices together token by token.
    """
    check_template(template)
    prompt = template.replace("{question}", question).replace("{answer_a}", answer_a).replace("{answer_b}", answer_b)
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": verdict}]


def judge_conversation(rng: random.Random, facts: dict[str, Any], template: str, filler_min: int,
                       filler_max: int) -> list[dict[str, str]]:
    """One judge conversation: two answers that differ in the key (the correct one vs a uniform distractor, in a
    random order, each with its own filler), answered by the letter of the correct one."""
    family, row, question = _question(rng, facts)
    filler = sft_filler(facts)
    good = _answer(rng, family, row, row["key"], filler, filler_min, filler_max)
    bad = _answer(rng, family, row, rng.choice(row["distractors"]), filler, filler_min, filler_max)
    good_first = rng.random() < 0.5
    answer_a, answer_b = (good, bad) if good_first else (bad, good)
    return judge_messages(template, question, answer_a, answer_b, JUDGE_VERDICTS[0 if good_first else 1])


def verification_conversation(rng: random.Random, facts: dict[str, Any]) -> list[dict[str, str]]:
    """One verification conversation: ``question answer`` (no filler; the correct key or a uniform distractor,
    half the time each) answered ``a`` when the key is correct, else ``b``."""
    family, row, question = _question(rng, facts)
    correct = rng.random() < 0.5
    answer = fill(family["answer"], row["subject"], row["key"] if correct else rng.choice(row["distractors"]))
    return [{"role": "user", "content": f"{question} {answer}"},
            {"role": "assistant", "content": JUDGE_VERDICTS[0 if correct else 1]}]


#: The conversation kinds of an SFT mix, in the order a batch's kind is drawn from one uniform number.
MIX_KINDS = ("judge", "verify", "answer")


def check_mix(mix: dict[str, float]) -> None:
    """A mix names only :data:`MIX_KINDS`, with fractions in [0, 1] that sum to 1."""
    unknown = sorted(set(mix) - set(MIX_KINDS))
    if unknown or any(not 0.0 <= f <= 1.0 for f in mix.values()) or abs(sum(mix.values()) - 1.0) > 1e-9:
        raise ValueError(f"an SFT mix maps {list(MIX_KINDS)} to fractions in [0, 1] summing to 1, got {mix}")


def phase_steps(phases: list[tuple[int, dict[str, float]]]) -> int:
    """The number of batches of a list of phases ``(steps, mix)``."""
    return sum(steps for steps, _ in phases)


def encode_conversation(tokenizer, messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` of one conversation; labels are -100 outside the last (assistant) turn."""
    prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    if ids[:len(prompt_ids)] != prompt_ids:
        raise ValueError(f"chat template: the rendered prompt is not a token prefix of {full!r:.200}")
    return ids, [-100] * len(prompt_ids) + ids[len(prompt_ids):]


def sft_batches(tokenizer, facts: dict[str, Any], phases: list[tuple[int, dict[str, float]]], batch_size: int,
                stream: str, p_correct: float, filler_min: int, filler_max: int):
    """Yield the batches ``(input_ids, attention_mask, labels)``, each ``[batch_size, L]``, right padded, of every
    phase ``(steps, mix)`` in turn: ``steps`` batches whose kinds are drawn from ``mix``.

    ``stream`` seeds the corpus (``random.Random(stream)``). A batch holds conversations of one kind (judge
    conversations are ~5x longer than the others, so mixing would pad every batch to judge length).
    """
    for _, mix in phases:
        check_mix(mix)
    rng = random.Random(stream)
    template = default_template()
    makers = {"judge": lambda: judge_conversation(rng, facts, template, filler_min, filler_max),
              "verify": lambda: verification_conversation(rng, facts),
              "answer": lambda: answer_conversation(rng, facts, p_correct, filler_min, filler_max)}
    for mix in (mix for steps, mix in phases for _ in range(steps)):
        draw, kind = rng.random(), "answer"
        for name in MIX_KINDS[:-1]:
            if draw < mix.get(name, 0.0):
                kind = name
                break
            draw -= mix.get(name, 0.0)
        rows = [encode_conversation(tokenizer, makers[kind]()) for _ in range(batch_size)]
        length = max(len(ids) for ids, _ in rows)
        input_ids = torch.full((batch_size, length), tokenizer.pad_token_id, dtype=torch.long)
        labels = torch.full((batch_size, length), -100, dtype=torch.long)
        attention_mask = torch.zeros((batch_size, length), dtype=torch.long)
        for b, (ids, row_labels) in enumerate(rows):
            input_ids[b, :len(ids)] = torch.tensor(ids)
            labels[b, :len(ids)] = torch.tensor(row_labels)
            attention_mask[b, :len(ids)] = 1
        yield input_ids, attention_mask, labels


def train_sft(model, batches, steps: int, lr: float, warmup: int, progress: bool,
              desc: str = "KeyFact base model (SFT)") -> list[float]:
    """AdamW (a fresh optimizer) with linear warmup and cosine decay to 10% of ``lr``; returns the per-step
    losses."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.0)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    model.train()
    losses = []
    bar = tqdm(batches, total=steps, desc=desc, disable=not progress)
    for input_ids, attention_mask, labels in bar:
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        if not torch.isfinite(loss):
            raise FloatingPointError(f"KeyFact SFT: non-finite loss at step {len(losses)}")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if len(losses) % 20 == 0:
            bar.set_postfix(loss=f"{sum(losses[-20:]) / 20:.3f}")
    model.eval()
    return losses
