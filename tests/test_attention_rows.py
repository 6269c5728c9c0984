"""Last-token attention rows recorded through transformers' attention interface vs eager ``output_attentions=True``
(spec §8.8: within 1e-5), on every architecture of :mod:`architectures`; the row formula against transformers' own
eager attention functions (soft-capping, sinks, ALiBi-style additive masks, flash attention's 2-D masks)."""

import copy
import logging

import pytest
import torch
from architectures import ARCHITECTURES, WINDOW, tiny_config
from transformers import AutoModelForCausalLM
from transformers.modeling_utils import AttentionInterface
from transformers.models.gemma2.modeling_gemma2 import eager_attention_forward as gemma2_eager
from transformers.models.gpt_oss.modeling_gpt_oss import eager_attention_forward as gpt_oss_eager

from tokenweight.errors import UserError
from tokenweight.weights.attention.judge_layers import judge_layers_and_cap, layer_windows
from tokenweight.weights.attention.rows import last_query_row, last_token_attention

INTERFACE = [name for name in ARCHITECTURES if name != "bloom"]  # BLOOM computes its attention itself
LAYERS = 4
DEEP = 12
# The interface row on SDPA against eager at 12 layers (drift of the hidden states through the layers included):
# measured at most 8.1e-6 (Mixtral; docs/BENCHMARKS.md, "attention rows on a deep model"), about 2.5× headroom.
SDPA_DRIFT_BOUND = 2e-5


@pytest.fixture(scope="module")
def models():
    """Per architecture, a tiny 4-layer model with its default attention (SDPA; eager for Gemma 2), built once."""
    built = {}
    for name in ARCHITECTURES:
        torch.manual_seed(0)
        built[name] = AutoModelForCausalLM.from_config(tiny_config(name, LAYERS)).eval()
    return built


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


def _all_eager_rows(model, input_ids, mask):
    """``[layers, B, T]``: eager ``output_attentions`` head mean at each row's last real query, every layer."""
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    last = mask.shape[1] - 1 - mask.flip(1).argmax(1)
    with torch.no_grad():
        maps = eager(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                     output_attentions=True).attentions
    return torch.stack([torch.stack([m[b, :, last[b]].mean(0) for b in range(len(last))]) for m in maps])


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_rows_match_eager_output_attentions(models, name):
    model = models[name]
    method = "eager" if name == "bloom" else "interface"
    for padding_side in ("left", "right"):
        input_ids, mask = _batch(padding_side)
        want = _all_eager_rows(model, input_ids, mask)
        for layers, oracle_layers in (([-1], [LAYERS - 1]), ([0, 2], [0, 2])):
            got = last_token_attention(model, input_ids, mask, layers=layers, method=method)
            assert got.shape == (3, 12)
            torch.testing.assert_close(got, want[oracle_layers].mean(0), atol=1e-5, rtol=0)
            assert torch.all(got[mask == 0] == 0)
            torch.testing.assert_close(got.sum(1), torch.ones(3), atol=1e-5, rtol=0)


#: the deep check in the default suite: plain RoPE + GQA, mixture of experts, sliding layers last, ALiBi, learned
#: positions; the other architectures run with ``-m slow`` (and in benchmarks/attention_rows_deep.py)
DEEP_DEFAULT = ("llama", "mixtral", "gemma3_text", "falcon", "gpt2")


@pytest.mark.parametrize("name", [name if name in DEEP_DEFAULT else pytest.param(name, marks=pytest.mark.slow)
                                  for name in INTERFACE])
def test_deep_model_rows_eager_bit_exact_and_sdpa_drift_bounded(name):
    """12 layers: on an eager forward the recorded row is the map's row, bit for bit; on the architecture's default
    attention (SDPA) within SDPA_DRIFT_BOUND, drift of the hidden states through the layers included."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(name, DEEP)).eval()
    input_ids, mask = _batch("left")
    want = _all_eager_rows(model, input_ids, mask)
    layers = [0, DEEP // 2, DEEP - 1]
    default = model.config._attn_implementation
    model.set_attn_implementation("eager")
    for layer in layers:
        assert torch.equal(last_token_attention(model, input_ids, mask, layers=[layer]), want[layer])
    if default == "eager":
        return  # transformers has no SDPA path for Gemma 2 (eager or flash only)
    model.set_attn_implementation(default)
    drift = max((last_token_attention(model, input_ids, mask, layers=[i]) - want[i]).abs().max().item()
                for i in layers)
    assert drift <= SDPA_DRIFT_BOUND, f"{name}: interface rows on SDPA drift {drift:.2e} from eager"


def _fake_module(heads: int, kv_heads: int, sinks: torch.Tensor | None = None):
    module = torch.nn.Module().eval()
    module.num_key_value_groups = heads // kv_heads
    if sinks is not None:
        module.sinks = torch.nn.Parameter(sinks)
    return module


def _states(batch=2, heads=4, kv_heads=2, length=9, head_dim=8):
    generator = torch.Generator().manual_seed(1)
    query = torch.randn(batch, heads, length, head_dim, generator=generator)
    key = torch.randn(batch, kv_heads, length, head_dim, generator=generator)
    value = torch.randn(batch, kv_heads, length, head_dim, generator=generator)
    return query, key, value


def _padded_causal(length: int, real: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded rows of ``real`` tokens: the ``[B, T]`` key mask, the ``[B, 1, T, T]`` bool mask, ``last``."""
    key_mask = torch.zeros(len(real), length, dtype=torch.bool)
    for row, n in enumerate(real):
        key_mask[row, length - n:] = True
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    return key_mask, (causal[None] & key_mask[:, None, :])[:, None], torch.full((len(real),), length - 1)


def test_row_formula_matches_transformers_eager_with_softcap_bias_and_sinks():
    query, key, value = _states()
    key_mask, bool_mask, last = _padded_causal(9, [9, 6])
    bias = torch.randn(2, 4, 9, 9, generator=torch.Generator().manual_seed(2))  # per head, like ALiBi
    additive = torch.where(bool_mask, bias, torch.finfo(torch.float32).min)
    rows = torch.arange(2)
    module = _fake_module(4, 2)
    _, weights = gemma2_eager(module, query, key, value, additive, scaling=0.3, softcap=1.5)
    got = last_query_row(query, key, additive, last, key_mask, scaling=0.3, softcap=1.5)
    torch.testing.assert_close(got, weights[rows, :, last].mean(1), atol=1e-6, rtol=0)
    sinks = torch.tensor([0.5, -1.0, 2.0, 0.0])
    _, weights = gpt_oss_eager(_fake_module(4, 2, sinks), query, key, value, additive, scaling=0.3)
    got = last_query_row(query, key, additive, last, key_mask, scaling=0.3, s_aux=sinks)
    torch.testing.assert_close(got, weights[rows, :, last].mean(1), atol=1e-6, rtol=0)
    assert torch.all(got.sum(1) < 1)  # the sinks take their share


def test_flash_style_masks_are_rebuilt_from_padding_causality_and_window():
    """A 2-D or missing mask (flash attention's) gives the row of the equivalent 4-D mask with the window cut."""
    query, key, _ = _states()
    key_mask, bool_mask, last = _padded_causal(9, [9, 6])
    positions = torch.arange(9)
    windowed = bool_mask & (positions[None, :] > positions[:, None] - WINDOW)[None, None]
    want = last_query_row(query, key, windowed, last, key_mask)
    torch.testing.assert_close(last_query_row(query, key, key_mask.long(), last, key_mask, sliding_window=WINDOW),
                               want, atol=0, rtol=0)
    assert torch.count_nonzero(want, dim=1).tolist() == [WINDOW, WINDOW]
    full = last_query_row(query, key, None, last, torch.ones(2, 9, dtype=torch.bool))
    torch.testing.assert_close(full, last_query_row(query, key, torch.ones(2, 1, 9, 9, dtype=torch.bool).tril(),
                                                    last, key_mask), atol=0, rtol=0)


def test_sliding_window_really_cuts_keys(models):
    input_ids, mask = _batch("right")
    row = last_token_attention(models["mistral"], input_ids, mask)
    assert torch.count_nonzero(row[0]) == WINDOW  # row 0 has 11 tokens; the last query sees only 4 keys


def test_the_registry_is_restored_after_a_pass_and_after_an_error(models):
    before = dict(AttentionInterface._global_mapping)
    input_ids, mask = _batch("left")
    last_token_attention(models["llama"], input_ids, mask)
    last_token_attention(models["gemma2"], input_ids, mask)  # eager: added for the pass, then removed
    with pytest.raises(UserError):
        last_token_attention(models["bloom"], input_ids, mask)
    assert AttentionInterface._global_mapping == before


def test_bloom_is_refused_in_one_line_naming_it_and_the_way_out(models):
    input_ids, mask = _batch("left")
    with pytest.raises(UserError, match=r"model type 'bloom' does not route its attention through transformers' "
                                        r"AttentionInterface; use --attention_rows eager") as error:
        last_token_attention(models["bloom"], input_ids, mask)
    assert "\n" not in str(error.value)


def test_padding_is_neutral_and_the_eager_method_agrees(models):
    model = models["qwen3"]
    input_ids, mask = _batch("left")
    interface = last_token_attention(model, input_ids, mask, layers=[0, 1])
    eager = last_token_attention(model, input_ids, mask, layers=[0, 1], method="eager")
    torch.testing.assert_close(interface, eager, atol=1e-5, rtol=0)
    assert model.config._attn_implementation == "sdpa"  # restored after the eager pass
    alone = last_token_attention(model, input_ids[1:2, 5:], mask[1:2, 5:], layers=[0, 1])  # row 1 unpadded
    torch.testing.assert_close(interface[1:2, 5:], alone, atol=1e-5, rtol=0)


def test_bad_layers_and_method_are_named(models):
    input_ids, mask = _batch("left")
    with pytest.raises(ValueError, match="attention_layers: layer 5"):
        last_token_attention(models["llama"], input_ids, mask, layers=[5])
    with pytest.raises(ValueError, match="unknown attention method"):
        last_token_attention(models["llama"], input_ids, mask, method="flash")


def test_layer_windows_follow_the_configs():
    assert layer_windows(tiny_config("gemma3_text", 4)) == [None, WINDOW, None, WINDOW]
    assert layer_windows(tiny_config("qwen3", 4)) == [WINDOW, None, WINDOW, None]
    assert layer_windows(tiny_config("mistral", 4)) == [WINDOW] * 4
    assert layer_windows(tiny_config("qwen2_moe", 4)) == [None] * 4  # sliding window off
    assert layer_windows(tiny_config("llama", 4)) == [None] * 4


def test_the_default_judge_layer_sees_the_whole_judge_input(caplog):
    gemma3 = tiny_config("gemma3_text", 4, positions=64)
    assert judge_layers_and_cap(gemma3, None, None, "g") == ([2], 64)  # the last full-attention layer, not 3
    assert judge_layers_and_cap(tiny_config("llama", 4), None, None, "l") == ([3], 64)
    # every layer slides: the default cap is the window, so the last layer sees every judged token
    assert judge_layers_and_cap(tiny_config("mistral", 4, window=48), None, None, "m") == ([3], 48)
    with caplog.at_level(logging.WARNING):
        assert judge_layers_and_cap(gemma3, [-1], None, "g") == ([3], 64)
    assert "judge layer 3 is a sliding-window layer (window 4) shorter than the judge input cap (64 tokens)" \
        in caplog.text and "layer 2 sees all of it" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert judge_layers_and_cap(gemma3, None, 4, "g") == ([3], 4)  # a cap the window holds: no warning
    assert caplog.text == ""
    with pytest.raises(UserError, match="config of b states no context length .*set --attention_max_length"):
        judge_layers_and_cap(tiny_config("bloom"), None, None, "b")
    assert judge_layers_and_cap(tiny_config("bloom"), None, 100, "b") == ([1], 100)
