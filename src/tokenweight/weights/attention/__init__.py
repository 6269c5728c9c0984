"""AttentionPO / TwDPO token weights: the frozen reference model judges each pair, and the attention of its last
judge-input token to each answer token becomes that token's weight (spec: specs/attentionpo.md).

Modules: ``scheme`` (the registered ``attention`` weighting scheme), ``judge`` (judge inputs spliced from token
ids; the judge wording is ``judge.txt``), ``rows`` (last-token attention rows through transformers' attention
interface), ``judge_layers`` (which layers see the whole judge input: the default layer and cap), ``normalize`` (rows →
weights), ``cache`` (fingerprinted, checksummed shards on disk), ``precompute`` (running the judge).
"""

from tokenweight.weights.attention.cache import (CacheDamagedError, CachedWeights, CacheIncompleteError,
                                                CacheMismatchError, load_attention_weights)
from tokenweight.weights.attention.judge import split_completion
from tokenweight.weights.attention.normalize import WeightStats
from tokenweight.weights.attention.precompute import (JudgeSettings, attention_weights, cache_fingerprint,
                                                      ensure_attention_cache, precompute_attention_weights)
from tokenweight.weights.attention.rows import last_token_attention
from tokenweight.weights.attention.scheme import AttentionScheme, AttentionSettings

__all__ = ["AttentionScheme", "AttentionSettings", "CacheDamagedError", "CacheIncompleteError", "CacheMismatchError",
           "CachedWeights", "JudgeSettings", "WeightStats", "attention_weights", "cache_fingerprint",
           "ensure_attention_cache", "last_token_attention", "load_attention_weights", "precompute_attention_weights",
           "split_completion"]
