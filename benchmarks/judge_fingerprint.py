"""Cost of fingerprinting every judge parameter (SHA-256 of all bytes) against the judge pass it protects.

    python benchmarks/judge_fingerprint.py               # ~1.1B-parameter Llama (TinyLlama shape), fp32, CPU
    python benchmarks/judge_fingerprint.py --dtype bfloat16 --length 2048

Builds a random Llama from a config (no download), then times in one process, side by side:
``model_fingerprint`` (every parameter's name, shape, dtype and bytes) and one judge forward of ``length``
tokens (:func:`tokenweight.weights.attention.last_token_attention`, interface rows, last layer; a pair needs two).
Prints both times, the hashing throughput, and the fingerprint's cost in judge pairs.
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tokenweight.weights.attention import last_token_attention
from tokenweight.fingerprint import model_fingerprint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--length", type=int, default=512, help="judge input length in tokens")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=22)
    parser.add_argument("--intermediate", type=int, default=5632)
    parser.add_argument("--vocab", type=int, default=32000)
    args = parser.parse_args()

    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                         num_hidden_layers=args.layers, num_attention_heads=32, num_key_value_heads=4,
                         max_position_embeddings=max(2048, args.length), torch_dtype=args.dtype)
    model = LlamaForCausalLM(config).to(getattr(torch, args.dtype)).eval()
    parameters = sum(p.numel() for p in model.parameters())
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    input_ids = torch.randint(0, args.vocab, (1, args.length), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(input_ids)
    last_token_attention(model, input_ids[:, :16], mask[:, :16])  # warm-up

    start = time.perf_counter()
    fingerprint = model_fingerprint(model)
    hashing = time.perf_counter() - start
    start = time.perf_counter()
    last_token_attention(model, input_ids, mask)
    forward = time.perf_counter() - start

    print(f"model: {parameters / 1e9:.2f}B parameters in {len(fingerprint['parameters'])} tensors, {args.dtype}, "
          f"{size / 2**30:.2f} GiB; {torch.get_num_threads()} threads")
    print(f"fingerprint (every parameter, SHA-256): {hashing:.2f} s ({size / hashing / 1e9:.2f} GB/s)")
    print(f"one judge forward, {args.length} tokens (interface rows, last layer): {forward:.2f} s; "
          f"one pair (2 forwards): {2 * forward:.2f} s")
    print(f"fingerprint / one pair's judge pass: {hashing / (2 * forward):.2f}; "
          f"share of judging 1,000 pairs: {hashing / (hashing + 2000 * forward):.2e}")


if __name__ == "__main__":
    main()
