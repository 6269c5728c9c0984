"""Hook-recomputed last-token attention rows vs eager ``output_attentions=True`` (spec §8.8: within 1e-5)."""

import copy

import pytest
import torch
from transformers import (AutoModelForCausalLM, Gemma2Config, Gemma3TextConfig, GemmaConfig, GPT2Config,
                          LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config)

from tokenweight.weights.attention import rows
from tokenweight.weights.attention.rows import last_token_attention

COMMON = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=64, initializer_range=0.3)
WINDOW = 4  # shorter than the sequences, so sliding-window layers really cut keys


def _alternating(layers: int) -> list[str]:
    return ["sliding_attention", "full_attention"] * (layers // 2)


CONFIGS = {  # each builds a config with the given number of decoder layers
    "llama": lambda n: LlamaConfig(**COMMON, num_hidden_layers=n),
    "mistral": lambda n: MistralConfig(**COMMON, num_hidden_layers=n, sliding_window=WINDOW),
    "qwen2": lambda n: Qwen2Config(**COMMON, num_hidden_layers=n, use_sliding_window=True, sliding_window=WINDOW,
                                   max_window_layers=n // 2),
    "qwen3": lambda n: Qwen3Config(**COMMON, num_hidden_layers=n, head_dim=16, layer_types=_alternating(n),
                                   use_sliding_window=True, sliding_window=WINDOW),
    "gemma": lambda n: GemmaConfig(**COMMON, num_hidden_layers=n, head_dim=16),
    "gemma2": lambda n: Gemma2Config(**COMMON, num_hidden_layers=n, head_dim=16, query_pre_attn_scalar=8,
                                     attn_logit_softcapping=1.5, sliding_window=WINDOW),
    "gemma3_text": lambda n: Gemma3TextConfig(**COMMON, num_hidden_layers=n, head_dim=16, query_pre_attn_scalar=8,
                                              sliding_window=WINDOW, layer_types=_alternating(n)),
}
DEEP = 12
# Measured maxima over the architectures at 12 layers (docs/BENCHMARKS.md, "hook rows on a deep model"), with
# about 5× headroom: the recomputed row from identical layer inputs, and the hook on SDPA against eager.
RECOMPUTE_BOUND = 2e-6
SDPA_DRIFT_BOUND = 2e-5


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
    model = AutoModelForCausalLM.from_config(CONFIGS[model_type](2)).eval()
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


def _all_eager_rows(model, input_ids, mask):
    """``[layers, B, T]``: eager ``output_attentions`` head mean at each row's last real query, every layer."""
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    last = mask.shape[1] - 1 - mask.flip(1).argmax(1)
    with torch.no_grad():
        maps = model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                     output_attentions=True).attentions
    return torch.stack([torch.stack([m[b, :, last[b]].mean(0) for b in range(len(last))]) for m in maps])


@pytest.mark.parametrize("model_type", sorted(CONFIGS))
def test_deep_model_rows_eager_bit_exact_recompute_and_sdpa_drift_bounded(model_type):
    """12 layers: on an eager forward the hook row equals ``output_attentions`` bit for bit; recomputed from the
    same (eager) layer inputs it is within RECOMPUTE_BOUND; on an SDPA forward (drift of the hidden states through
    the layers included) within SDPA_DRIFT_BOUND."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(CONFIGS[model_type](DEEP), attn_implementation="eager").eval()
    input_ids, mask = _batch("left")
    want = _all_eager_rows(model, input_ids, mask)
    layers = [0, DEEP // 2, DEEP - 1]
    for layer in layers:
        assert torch.equal(last_token_attention(model, input_ids, mask, layers=[layer]), want[layer])
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        recomputed = rows._hook_rows(model, input_ids, mask, positions, layers, rows.attention_modules(model),
                                     recompute=True)
    assert max((got - want[i]).abs().max().item() for got, i in zip(recomputed, layers)) <= RECOMPUTE_BOUND
    if model_type == "gemma2":
        return  # transformers has no SDPA path for Gemma 2 (eager or flash only)
    model.set_attn_implementation("sdpa")
    drift = max((last_token_attention(model, input_ids, mask, layers=[i]) - want[i]).abs().max().item()
                for i in layers)
    assert drift <= SDPA_DRIFT_BOUND, f"{model_type}: hook on SDPA drifts {drift:.2e} from eager"


def test_sliding_window_really_cuts_keys():
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(CONFIGS["mistral"](2)).eval()
    input_ids, mask = _batch("right")
    row = last_token_attention(model, input_ids, mask)
    assert torch.count_nonzero(row[0]) == WINDOW  # row 0 has 11 tokens; the last query sees only 4 keys


def test_eager_method_matches_hook_and_padding_is_neutral():
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(CONFIGS["qwen3"](2)).eval()
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
    model = AutoModelForCausalLM.from_config(CONFIGS["llama"](2)).eval()
    input_ids, mask = _batch("left")
    with pytest.raises(ValueError, match="attention_layers: layer 5"):
        last_token_attention(model, input_ids, mask, layers=[5])
    with pytest.raises(ValueError, match="unknown attention method"):
        last_token_attention(model, input_ids, mask, method="flash")
