"""Hook-recomputed last-token attention rows vs eager ``output_attentions=True`` (spec §8.8: within 1e-5)."""

import copy

import pytest
import torch
from transformers import (AutoModelForCausalLM, Gemma2Config, Gemma3TextConfig, GemmaConfig, GPT2Config,
                          LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config)

from tokenweight.weights.attention.rows import last_token_attention

COMMON = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.3)
WINDOW = 4  # shorter than the sequences, so sliding-window layers really cut keys

CONFIGS = {
    "llama": lambda: LlamaConfig(**COMMON),
    "mistral": lambda: MistralConfig(**COMMON, sliding_window=WINDOW),
    "qwen2": lambda: Qwen2Config(**COMMON, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1),
    "qwen3": lambda: Qwen3Config(**COMMON, head_dim=16, layer_types=["sliding_attention", "full_attention"],
                                 use_sliding_window=True, sliding_window=WINDOW),
    "gemma": lambda: GemmaConfig(**COMMON, head_dim=16),
    "gemma2": lambda: Gemma2Config(**COMMON, head_dim=16, query_pre_attn_scalar=8, attn_logit_softcapping=1.5,
                                   sliding_window=WINDOW),
    "gemma3_text": lambda: Gemma3TextConfig(**COMMON, head_dim=16, query_pre_attn_scalar=8, sliding_window=WINDOW,
                                            layer_types=["sliding_attention", "full_attention"]),
}


def _batch(padding_side: str):
    """3 rows of lengths 11, 7, 12 in a [3, 12] batch, padded on ``padding_side``."""
    generator = torch.Generator().manual_seed(0)
    lengths, width = [11, 7, 12], 12
    input_ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids = torch.randint(1, 97, (n,), generator=generator)
        cols = slice(width - n, width) if padding_side == "left" else slice(0, n)
        input_ids[row, cols], mask[row, cols] = ids, 1
    return input_ids, mask


def _eager_oracle(model, input_ids, mask, layers):
    """Head mean of eager ``output_attentions`` at each row's last real query, averaged over ``layers``."""
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        attentions = eager(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                           output_attentions=True).attentions
    rows = []
    for b in range(input_ids.shape[0]):
        last = int(mask[b].nonzero().max())
        rows.append(torch.stack([attentions[i][b, :, last, :].mean(0) for i in layers]).mean(0))
    return torch.stack(rows)


@pytest.mark.parametrize("model_type", sorted(CONFIGS))
def test_hook_rows_match_eager(model_type):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(CONFIGS[model_type]()).eval()
    assert model.model.layers[0].self_attn.num_key_value_groups == 2  # GQA
    for padding_side in ("left", "right"):
        input_ids, mask = _batch(padding_side)
        for layers, oracle_layers in ((None, [1]), ([0, -1], [0, 1])):
            got = last_token_attention(model, input_ids, mask, layers=layers)
            want = _eager_oracle(model, input_ids, mask, oracle_layers)
            assert got.shape == (3, 12)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
            assert torch.all(got[mask == 0] == 0)
            torch.testing.assert_close(got.sum(1), torch.ones(3), atol=1e-5, rtol=0)


def test_sliding_window_really_cuts_keys():
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(CONFIGS["mistral"]()).eval()
    input_ids, mask = _batch("right")
    row = last_token_attention(model, input_ids, mask)
    assert torch.count_nonzero(row[0]) == WINDOW  # row 0 has 11 tokens; the last query sees only 4 keys


def test_eager_method_matches_hook_and_padding_is_neutral():
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(CONFIGS["qwen3"]()).eval()
    input_ids, mask = _batch("left")
    hook = last_token_attention(model, input_ids, mask, layers=[0, 1])
    eager = last_token_attention(model, input_ids, mask, layers=[0, 1], method="eager")
    torch.testing.assert_close(hook, eager, atol=1e-5, rtol=0)
    assert model.config._attn_implementation == "sdpa"  # restored after the eager pass
    alone = last_token_attention(model, input_ids[1:2, 5:], mask[1:2, 5:], layers=[0, 1])  # row 1 unpadded
    torch.testing.assert_close(hook[1:2, 5:], alone, atol=1e-5, rtol=0)


def test_unsupported_model_names_type_and_fallback():
    model = AutoModelForCausalLM.from_config(GPT2Config(vocab_size=50, n_embd=32, n_layer=1, n_head=2,
                                                        n_positions=32)).eval()
    input_ids = torch.randint(0, 50, (1, 6))
    mask = torch.ones_like(input_ids)
    with pytest.raises(NotImplementedError, match=r"'gpt2'.*method='eager'.*output_attentions=True"):
        last_token_attention(model, input_ids, mask)
    eager = last_token_attention(model, input_ids, mask, method="eager")
    torch.testing.assert_close(eager.sum(1), torch.ones(1))


def test_bad_layers_and_method_are_named():
    model = AutoModelForCausalLM.from_config(CONFIGS["llama"]()).eval()
    input_ids, mask = _batch("left")
    with pytest.raises(ValueError, match="attention_layers: layer 5"):
        last_token_attention(model, input_ids, mask, layers=[5])
    with pytest.raises(ValueError, match="unknown attention method"):
        last_token_attention(model, input_ids, mask, method="flash")
