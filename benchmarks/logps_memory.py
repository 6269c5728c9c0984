"""Peak memory of per-token log-probs, forward + backward: tokenweight's tiled head vs naive full logits.

    python benchmarks/logps_memory.py                          # vocab 32k, length 1024, batch 2, hidden 256, CPU
    python benchmarks/logps_memory.py --device cuda --batch 4

Both variants take the same final hidden states ``[B, L, d]`` (requiring grad) and output head ``Linear(d, V)``,
compute ``log p(label_t)`` for every position and back-propagate ``Σ logps`` into the hidden states and the head:

- *tiled*: :func:`tokenweight.logps.logps_from_hidden` (one ``[chunk_size, vocab_chunk_size]`` tile of logits at a
  time, recomputed in the backward);
- *tiled + metrics*: the same with ``with_stats=True``, which also computes TRL's per-token entropy, mean logit
  and top-1 flag (``entropy``, ``logits/*``, ``mean_token_accuracy``) from each tile, as the trainer's policy pass does;
- *naive*: ``log_softmax(head(h).float()).gather(labels)`` over the full ``[B, L, V]`` logits.

Each runs in a fresh process after a small warm-up (see ``benchmarks/_common.py`` for the memory method); the parent
also checks that both give the same log-probs and gradients, and prints the ratio chunked / naive. On CPU the
children run with ``MALLOC_MMAP_THRESHOLD_=65536`` so that glibc returns every freed tensor buffer to the OS at once
and the RSS high-water mark follows live tensor memory (with glibc's default adaptive threshold, freed chunk buffers
stay in the heap and the chunked peak reads up to 3× too high at small chunk sizes); this slows both variants.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import MIB, PeakMemory, command_line, markdown_table, run_child  # noqa: E402

MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def _child(args) -> None:
    import torch
    from torch import nn

    from tokenweight.head import OutputHead
    from tokenweight.logps import logps_from_hidden, scores_from_hidden
    from tokenweight.tiled_head import Tiling

    tiling = Tiling(args.chunk_size, args.vocab_chunk_size)

    def naive(hidden, labels, head):
        return torch.log_softmax(head.logits(hidden), dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)

    def chunked(hidden, labels, head):
        return logps_from_hidden(hidden, labels, head, tiling)

    def chunked_metrics(hidden, labels, head):
        logps, stats = scores_from_hidden(hidden, labels, head, tiling, with_stats=True)
        chunked_metrics.stats = stats  # kept alive, as the trainer keeps them until its metrics are computed
        return logps

    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    method = {"chunked": chunked, "chunked+metrics": chunked_metrics, "naive": naive}[args.child]
    torch.manual_seed(0)
    head = OutputHead(nn.Linear(args.hidden, args.vocab, bias=False).to(args.device))
    hidden = torch.randn(args.batch, args.length, args.hidden, device=args.device).requires_grad_()
    labels = torch.randint(0, args.vocab, (args.batch, args.length), device=args.device)
    method(hidden[:, :8], labels[:, :8], head).sum().backward()  # warm-up: kernels, thread pools
    hidden.grad, head.module.weight.grad = None, None
    with PeakMemory(args.device) as peak:
        start = time.perf_counter()
        logps = method(hidden, labels, head)
        logps.sum().backward()
        if args.device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    print(json.dumps({"peak_added_bytes": peak.added_bytes, "seconds": seconds,
                      "logps_sum": logps.sum().item(), "hidden_grad_sum": hidden.grad.abs().sum().item(),
                      "head_grad_sum": head.module.weight.grad.abs().sum().item()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--chunk_size", type=int, default=1024, help="tokenweight's logps_chunk_size")
    parser.add_argument("--vocab_chunk_size", type=int, default=8192, help="tokenweight's logps_vocab_chunk_size")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1: stable on shared machines)")
    parser.add_argument("--child", choices=("chunked", "chunked+metrics", "naive"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    shared = [f"--{k}={getattr(args, k)}" for k in ("vocab", "length", "batch", "hidden", "chunk_size",
                                                     "vocab_chunk_size", "device", "threads")]
    env = MALLOC_ENV if args.device == "cpu" else None
    results = {m: run_child(__file__, ["--child", m, *shared], env) for m in ("chunked", "chunked+metrics", "naive")}
    chunked, metrics, naive = results["chunked"], results["chunked+metrics"], results["naive"]
    agreement = max(abs(ours[k] - naive[k]) / max(1.0, abs(naive[k])) for ours in (chunked, metrics)
                    for k in ("logps_sum", "hidden_grad_sum", "head_grad_sum"))
    print(f"`{command_line()}`\n")
    print(f"per-token log-probs forward + backward, vocab {args.vocab}, length {args.length}, batch {args.batch}, "
          f"hidden {args.hidden}, {args.device}, fp32, {args.threads} thread(s); logits alone are "
          f"{args.batch * args.length * args.vocab * 4 / MIB:.0f} MiB\n")
    tile = f"tile {args.chunk_size} × {args.vocab_chunk_size}"
    rows = [[f"tiled ({tile})", f"{chunked['peak_added_bytes'] / MIB:.1f}",
             f"{chunked['seconds']:.3f}"],
            [f"tiled + metrics ({tile})", f"{metrics['peak_added_bytes'] / MIB:.1f}",
             f"{metrics['seconds']:.3f}"],
            ["naive log_softmax + gather", f"{naive['peak_added_bytes'] / MIB:.1f}", f"{naive['seconds']:.3f}"],
            ["**ratio tiled / naive**", f"**{chunked['peak_added_bytes'] / naive['peak_added_bytes']:.3f}**",
             f"**{chunked['seconds'] / naive['seconds']:.2f}**"],
            ["**ratio tiled + metrics / naive**", f"**{metrics['peak_added_bytes'] / naive['peak_added_bytes']:.3f}**",
             f"**{metrics['seconds'] / naive['seconds']:.2f}**"]]
    print(markdown_table(["method", "peak memory added (MiB)", "time (s)"], rows))
    print(f"\nmax relative difference of Σ logps, Σ|∂/∂hidden|, Σ|∂/∂head|: {agreement:.1e}")


if __name__ == "__main__":
    main()
