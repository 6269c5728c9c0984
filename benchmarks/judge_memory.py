"""Peak CPU memory of one AttentionPO judge pass: interface rows vs eager ``output_attentions=True``.

    python benchmarks/judge_memory.py                  # 4 layers × hidden 256 × 8 heads, judge length 2048

Method. Each variant runs in its own fresh Python process (so allocator state and high-water marks do not mix):
the process imports torch, builds the same seeded random Llama, runs a 16-token warm-up pass of the measured
method (kernels, thread pools), then records its resident set size ``RSS_before`` (``/proc/self/statm``) and runs
one judge pass of ``length`` tokens with :func:`tokenweight.weights.attention.last_token_attention` (last layer). The
reported figure is ``ru_maxrss`` after the pass minus ``RSS_before``: the peak memory the pass added. (It is an upper
bound when an earlier peak of the process exceeds the pass's own, so the ratio is conservative.) The parent also
checks that both methods return the same row (max abs difference) and prints the ratio interface / eager.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _child(args) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tokenweight.weights.attention import last_token_attention

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=1000, hidden_size=args.hidden, intermediate_size=args.hidden * 4 * 2 // 3,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=args.heads, max_position_embeddings=args.length)
    model = LlamaForCausalLM(config).eval()
    input_ids = torch.randint(0, 1000, (1, args.length), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(input_ids)
    last_token_attention(model, input_ids[:, :16], mask[:, :16], method=args.child)  # warm-up
    before = _rss_bytes()
    start = time.perf_counter()
    row = last_token_attention(model, input_ids, mask, method=args.child)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    print(json.dumps({"method": args.child, "peak_added_bytes": peak - before, "seconds": seconds,
                      "row": row[0].tolist()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--length", type=int, default=2048, help="judge input length in tokens")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--child", choices=("interface", "eager"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    results = {}
    for method in ("interface", "eager"):
        command = [sys.executable, __file__, "--child", method, "--length", str(args.length),
                   "--layers", str(args.layers), "--hidden", str(args.hidden), "--heads", str(args.heads)]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results[method] = json.loads(out.strip().splitlines()[-1])
    interface, eager = results["interface"], results["eager"]
    difference = max(abs(a - b) for a, b in zip(interface["row"], eager["row"]))
    mib = 1024 ** 2
    print(f"judge pass, Llama {args.layers} layers × hidden {args.hidden} × {args.heads} heads, "
          f"length {args.length}, batch 1, CPU fp32 (last layer)")
    print("| method | peak memory added (MiB) | time (s) |\n|---|---|---|")
    for name, r in (("interface (SDPA + last-row record)", interface), ("eager output_attentions=True", eager)):
        print(f"| {name} | {r['peak_added_bytes'] / mib:.1f} | {r['seconds']:.2f} |")
    print(f"ratio interface / eager: {interface['peak_added_bytes'] / eager['peak_added_bytes']:.4f} "
          f"(1/{eager['peak_added_bytes'] / max(interface['peak_added_bytes'], 1):.0f}); "
          f"max |row difference| = {difference:.2e}")


if __name__ == "__main__":
    main()
