"""The word-level KeyFact tokenizer with a chat template.

Text is lowercased and split on whitespace; every word of the facts file, of the filler pools and of the judge
template (``tokenweight/weights/attention/judge.txt``) is one token. A conversation renders as::

    <bos><|user|> what is the capital of france ? <|end|> <|assistant|> the capital of france is paris . <|end|>

``add_generation_prompt=True`` appends ``<|assistant|>``. Every turn closes with ``<|end|>``, which is the
tokenizer's ``eos_token`` (there is no separate ``<eos>`` token): generation stops right after the answer turn, and
a conversational completion (``render(prompt + answer)`` minus ``render(prompt, add_generation_prompt=True)``)
ends with exactly one EOS. The rendered prompt is always an exact token prefix of the rendered conversation,
because rendering is a concatenation of turns and the tokenizer splits only at whitespace and special tokens.
``<bos>`` is written by the chat template, not by a post-processor, so plain ``tokenizer(text)`` adds nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from ..weights.attention.judge import default_template
from .facts import facts_words, resolve_facts

PAD, UNK, BOS, END = "<pad>", "<unk>", "<bos>", "<|end|>"
ROLE_MARKERS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (PAD, UNK, BOS, *ROLE_MARKERS, END)
JUDGE_VERDICTS = ("a", "b")

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('KeyFact chat template: unknown role ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|> ' + message['content'] + ' <|end|> ' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|> ' }}{% endif %}"
)


def judge_template_words() -> set[str]:
    """Words of the library's judge template (placeholders removed), lowercased."""
    text = default_template()
    for placeholder in ("{question}", "{answer_a}", "{answer_b}"):
        text = text.replace(placeholder, " ")
    return set(text.lower().split())


def keyfact_vocabulary(facts: str | Path | dict[str, Any] | None = None) -> list[str]:
    """Special tokens first, then the sorted words of the facts, the judge template and the verdicts."""
    words = facts_words(resolve_facts(facts)) | judge_template_words() | set(JUDGE_VERDICTS)
    return list(SPECIAL_TOKENS) + sorted(words - set(SPECIAL_TOKENS))


def build_keyfact_tokenizer(facts: str | Path | dict[str, Any] | None = None,
                            model_max_length: int = 512) -> PreTrainedTokenizerFast:
    """The KeyFact tokenizer for ``facts`` (a path, a loaded dict, or ``None`` for the built-in facts).

    Unknown words map to ``<unk>``; ``pad_token`` is ``<pad>``, ``eos_token`` is ``<|end|>``, padding is on the
    right (batch generation pads on the left by itself).
    """
    vocab = {word: index for index, word in enumerate(keyfact_vocabulary(facts))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=BOS, eos_token=END, unk_token=UNK,
                                        pad_token=PAD, extra_special_tokens=list(ROLE_MARKERS),
                                        model_max_length=model_max_length, padding_side="right")
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
