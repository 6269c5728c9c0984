"""Tiny random configurations of the decoder architectures users train (issue 25), built from the installed
transformers: grouped-query attention where the architecture has it, sliding windows shorter than the inputs where it
has them (``window``), so every feature the attention rows must reproduce is exercised."""

from __future__ import annotations

from transformers import (BloomConfig, FalconConfig, FalconH1Config, Gemma2Config, Gemma3TextConfig, GemmaConfig,
                          GPT2Config, GPTNeoXConfig, GraniteConfig, LlamaConfig, MistralConfig, MixtralConfig,
                          Olmo2Config, Phi3Config, Qwen2Config, Qwen2MoeConfig, Qwen3Config, Qwen3MoeConfig)

WINDOW = 4  # the default sliding window: shorter than the rows tests' sequences, so sliding layers really cut keys
MOE = ("mixtral", "qwen2_moe", "qwen3_moe")
TIED = ("gpt2", "falcon", "bloom")  # input and output embeddings tied (their configs' default)


def _alternating(layers: int, last: str) -> list[str]:
    other = "sliding_attention" if last == "full_attention" else "full_attention"
    return [other, last] * (layers // 2)


def _builders(v: int, p: int, w: int) -> dict:
    """name -> (number of decoder layers, even) -> config, for vocabulary ``v``, ``p`` positions and window ``w``."""
    attention = dict(vocab_size=v, hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
                     max_position_embeddings=p, initializer_range=0.3, pad_token_id=0)
    moe = dict(num_experts_per_tok=2, output_router_logits=True, router_aux_loss_coef=0.02)
    return {
        "llama": lambda n: LlamaConfig(**attention, num_hidden_layers=n),
        "mistral": lambda n: MistralConfig(**attention, num_hidden_layers=n, sliding_window=w),
        "qwen2": lambda n: Qwen2Config(**attention, num_hidden_layers=n, use_sliding_window=True, sliding_window=w,
                                       max_window_layers=n // 2),
        "qwen3": lambda n: Qwen3Config(**attention, num_hidden_layers=n, head_dim=16, use_sliding_window=True,
                                       sliding_window=w, layer_types=_alternating(n, "full_attention")),
        "mixtral": lambda n: MixtralConfig(**attention, **moe, num_hidden_layers=n, num_local_experts=4),
        "qwen2_moe": lambda n: Qwen2MoeConfig(**attention, **moe, num_hidden_layers=n, num_experts=4,
                                              moe_intermediate_size=32, shared_expert_intermediate_size=48),
        "qwen3_moe": lambda n: Qwen3MoeConfig(**attention, **moe, num_hidden_layers=n, num_experts=4, head_dim=16,
                                              moe_intermediate_size=32),
        "gemma": lambda n: GemmaConfig(**attention, num_hidden_layers=n, head_dim=16),
        "gemma2": lambda n: Gemma2Config(**attention, num_hidden_layers=n, head_dim=16, query_pre_attn_scalar=8,
                                         attn_logit_softcapping=1.5, sliding_window=w),
        # real Gemma 3 configs end on sliding layers (5 sliding : 1 global); here the last layer is a sliding one
        "gemma3_text": lambda n: Gemma3TextConfig(**attention, num_hidden_layers=n, head_dim=16,
                                                  query_pre_attn_scalar=8, sliding_window=w,
                                                  layer_types=_alternating(n, "sliding_attention")),
        "phi3": lambda n: Phi3Config(**attention, num_hidden_layers=n),
        "granite": lambda n: GraniteConfig(**attention, num_hidden_layers=n, attention_multiplier=0.2,
                                           embedding_multiplier=2.0, residual_multiplier=0.5, logits_scaling=4.0),
        # attention and a Mamba-2 mixer side by side in every layer
        "falcon_h1": lambda n: FalconH1Config(**attention, num_hidden_layers=n, mamba_d_ssm=64, mamba_n_heads=4,
                                              mamba_d_head=16, mamba_d_state=8, mamba_chunk_size=8, mamba_expand=1,
                                              lm_head_multiplier=0.5),
        "gpt2": lambda n: GPT2Config(vocab_size=v, n_embd=64, n_layer=n, n_head=4, n_positions=p,
                                     initializer_range=0.3),
        "gpt_neox": lambda n: GPTNeoXConfig(vocab_size=v, hidden_size=64, intermediate_size=96, num_hidden_layers=n,
                                            num_attention_heads=4, max_position_embeddings=p, initializer_range=0.3),
        "olmo2": lambda n: Olmo2Config(**attention, num_hidden_layers=n),
        "falcon": lambda n: FalconConfig(vocab_size=v, hidden_size=64, num_hidden_layers=n, num_attention_heads=4,
                                         max_position_embeddings=p, initializer_range=0.3, alibi=True,
                                         multi_query=False),
        "bloom": lambda n: BloomConfig(vocab_size=v, hidden_size=64, n_layer=n, n_head=4, initializer_range=0.3),
    }


ARCHITECTURES = tuple(_builders(97, 64, WINDOW))


def tiny_config(name: str, layers: int = 2, vocab_size: int = 97, positions: int = 64, window: int = WINDOW):
    """The tiny config of architecture ``name`` (one of :data:`ARCHITECTURES`); BLOOM states no context length."""
    return _builders(vocab_size, positions, window)[name](layers)
