"""Shared inputs of the AttentionPO tests: a byte-level BPE tokenizer trained on a few sentences (leading spaces,
words split into several tokens), a ChatML-like chat template, a tiny Llama judge and tokenized preference rows."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from tokenweight.weights.attention.judge import default_template
from tokenweight.data import tokenize_row

CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

SENTENCES = [
    "what is the capital of france ? paris is the capital of france .",
    "the capital of italy is rome , an old city with many streets .",
    "people say the weather in madrid is mild in spring and hot in summer .",
    "two plus two equals four ; three plus three equals six .",
    "a good answer is helpful , relevant and concise .",
]

STANDARD_ROWS = [
    {"prompt": "question : what is the capital of france ?", "chosen": " paris is the capital of france .",
     "rejected": " rome , i think ."},
    {"prompt": "what does two plus two equal ?", "chosen": " two plus two equals four .",
     "rejected": " it equals six , surely . \n"},
    {"prompt": "tell me about madrid", "chosen": " madrid has mild weather in spring and many old streets .",
     "rejected": " madrid is in italy ."},
]
CONVERSATIONAL_ROWS = [
    {"prompt": [{"role": "user", "content": "what is the capital of italy ?"}],
     "chosen": [{"role": "assistant", "content": "the capital of italy is rome ."}],
     "rejected": [{"role": "assistant", "content": "paris , an old city ."}]},
    {"prompt": [{"role": "system", "content": "be concise ."},
                {"role": "user", "content": "what is two plus two ?"},
                {"role": "assistant", "content": "four ."},
                {"role": "user", "content": "and three plus three ?"}],
     "chosen": [{"role": "assistant", "content": "six ."}],
     "rejected": [{"role": "assistant", "content": "three plus three equals four , people say ."}]},
]


def make_bpe_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE (≈330 tokens) trained on :data:`SENTENCES` and the judge template's words."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=330, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(SENTENCES + [default_template()], trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>",
                                        pad_token="<|endoftext|>", additional_special_tokens=SPECIALS[1:])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def make_judge(vocab_size: int, seed: int = 0, layers: int = 2, max_positions: int = 512) -> LlamaForCausalLM:
    """A tiny random Llama (GQA, RoPE) with peaky attention (large init)."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
                         initializer_range=0.2)
    return LlamaForCausalLM(config).eval()


def tokenized(rows: list[dict], tokenizer) -> list[dict]:
    """Rows tokenized exactly as the trainer does (:func:`tokenweight.data.tokenize_row`), raw fields kept."""
    return [{**row, **tokenize_row(row, index, tokenizer)} for index, row in enumerate(rows)]
