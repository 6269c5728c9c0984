"""Shared fixtures: a tiny word-level tokenizer with a chat template, a tiny Llama, small preference data.

Everything is built locally (no downloads)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

WORDS = ("what is the capital of france italy spain germany paris rome madrid berlin it a city with old streets "
         "and many sights people say weather there mild in spring . ? , yes no good bad answer question "
         "one two three four five plus equals hot cold big small up down").split()
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|> {% endif %}")


def make_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    specials = ["<pad>", "<unk>", "<bos>", "<eos>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(set(WORDS)))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>",
                                        bos_token="<bos>", eos_token="<eos>",
                                        additional_special_tokens=specials[4:])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def make_model(vocab_size: int, seed: int = 0, **overrides):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    settings = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                    pad_token_id=0, bos_token_id=2, eos_token_id=3, tie_word_embeddings=False)
    config = LlamaConfig(**{**settings, **overrides})
    return LlamaForCausalLM(config).eval()


#: A scored-model scheme's pipeline through the CLI (its models, precompute, train) on the small KeyFact task ...
TINY_KEYFACT_ARGS = ["--keyfact_model_size", "small", "--keyfact_train_size", "8", "--keyfact_eval_size", "4"]
#: ... one logged step of one batch each.
ONE_STEP_ARGS = ["--max_steps", "1", "--per_device_train_batch_size", "8", "--logging_steps", "1"]


def save_tiny_models(folder, tokenizer, seeds: dict[str, int]) -> dict[str, str]:
    """``{name: path}`` of :func:`make_model` models saved with ``tokenizer`` under ``folder/name``, one per
    ``seeds[name]`` (the models a scheme needs trained first, in the scheme tests)."""
    paths = {}
    for name, seed in seeds.items():
        paths[name] = str(folder / name)
        make_model(len(tokenizer), seed=seed).save_pretrained(paths[name])
        tokenizer.save_pretrained(paths[name])
    return paths


CAPITALS = [("france", "paris", "rome"), ("italy", "rome", "madrid"), ("spain", "madrid", "berlin"),
            ("germany", "berlin", "paris")]
FILLER = ["it is a city with old streets .", "people say the weather there is mild in spring .",
          "it is big and old .", "yes it is good ."]


def standard_rows(n: int = 8) -> list[dict]:
    rows = []
    for i in range(n):
        country, right, wrong = CAPITALS[i % len(CAPITALS)]
        rows.append({"prompt": f"what is the capital of {country} ?",
                     "chosen": f" the capital of {country} is {right} . {FILLER[i % 4]}",
                     "rejected": f" the capital of {country} is {wrong} . {FILLER[(i + 1) % 4]}"})
    return rows


def conversational_rows(n: int = 8) -> list[dict]:
    return [{"prompt": [{"role": "user", "content": r["prompt"]}],
             "chosen": [{"role": "assistant", "content": r["chosen"].strip()}],
             "rejected": [{"role": "assistant", "content": r["rejected"].strip()}]} for r in standard_rows(n)]


@pytest.fixture
def tokenizer():
    return make_tokenizer()


@pytest.fixture
def tiny_model_dir(tmp_path, tokenizer):
    """A saved tiny Llama + tokenizer folder, loadable like a hub model."""
    path = tmp_path / "tiny-llama"
    make_model(len(tokenizer)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
