"""AttentionPO / TwDPO token weights: the frozen reference model judges each pair, and the attention of its last
judge-input token to each answer token becomes that token's weight (spec: specs/attentionpo.md).

Modules: ``judge`` (judge inputs spliced from token ids), ``rows`` (last-token attention rows via hooks),
``normalize`` (rows → weights), ``cache`` (fingerprinted shards on disk), ``precompute`` (running the judge).
"""

from tokenweight.attention.cache import CacheMismatchError, CachedWeights, load_attention_weights
from tokenweight.attention.judge import split_completion
from tokenweight.attention.normalize import WeightStats
from tokenweight.attention.precompute import (JudgeSettings, attention_weights, cache_fingerprint,
                                              ensure_attention_cache, precompute_attention_weights)
from tokenweight.attention.rows import last_token_attention

__all__ = ["CacheMismatchError", "CachedWeights", "JudgeSettings", "WeightStats", "attention_weights",
           "cache_fingerprint", "ensure_attention_cache", "last_token_attention", "load_attention_weights",
           "precompute_attention_weights", "split_completion"]
