"""Training-step time and peak memory of each weighting scheme against ``uniform`` (plain DPO), side by side.

    python benchmarks/step_overhead.py                       # CPU: Llama 4 × 256, vocab 8k, 4 pairs × ~192 tokens
    python benchmarks/step_overhead.py --device cuda --hidden 1024 --layers 8 --batch 8 --completion 512

Every scheme runs the same optimizer step (``TokenweightTrainer.compute_loss`` → backward → AdamW step) on the
same seeded model and the same batch, each in a fresh process (memory method: ``benchmarks/_common.py``).
Schemes: ``uniform``; ``otpo`` (Sinkhorn on the policy's hidden states, every step); ``tidpo`` without the triplet
term (attribution pass + TDPO2 KL, ``tidpo_gamma=0``) and ``tidpo+triplet`` (anchor sampling and scoring, preset
``paper``); ``attention`` with its weights cached (they are dataset columns by then, as after
``tokenweight precompute attention``). Runs are interleaved over ``--rounds`` rounds and the median step time of
each is reported, so that load on a shared machine hits every scheme alike.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import MIB, PeakMemory, command_line, markdown_table, run_child  # noqa: E402
from dpo_vs_trl import make_model, make_rows, make_tokenizer  # noqa: E402

VARIANTS = {
    "uniform": {"weighting": "uniform"},
    "otpo": {"weighting": "otpo"},
    "tidpo": {"weighting": "tidpo", "tidpo_gamma": 0.0},
    "tidpo+triplet": {"weighting": "tidpo"},
    "attention (cached)": {"weighting": "attention"},
}


def _child(args) -> None:
    import datasets
    import torch

    from tokenweight.config import TokenweightConfig
    from tokenweight.data import PreferenceCollator, tokenize_preference_dataset
    from tokenweight.trainer import TokenweightTrainer

    torch.set_num_threads(args.threads)
    tokenizer = make_tokenizer(args.vocab)
    rows = make_rows(args.batch, args.vocab, args.prompt, args.completion)
    dataset, _ = tokenize_preference_dataset(datasets.Dataset.from_list(rows), tokenizer)
    if VARIANTS[args.variant]["weighting"] == "attention":  # cached weights: any fixed per-token values
        generator = torch.Generator().manual_seed(0)
        dataset = dataset.map(lambda row: {
            "chosen_weights": (torch.rand(len(row["chosen_ids"]), generator=generator) * 2).tolist(),
            "rejected_weights": (torch.rand(len(row["rejected_ids"]), generator=generator) * 2).tolist()})
    config = TokenweightConfig(output_dir="/tmp/step_overhead", use_cpu=args.device == "cpu", report_to="none",
                               max_length=args.prompt + args.completion + 8, learning_rate=1e-5, beta=0.1,
                               **{k: v for k, v in VARIANTS[args.variant].items()})
    trainer = TokenweightTrainer(model=make_model(args), ref_model=make_model(args), args=config,
                                 processing_class=tokenizer)
    model = trainer.model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    batch = {k: v.to(args.device) for k, v in PreferenceCollator(tokenizer.pad_token_id)(list(dataset)).items()}

    def step():
        loss = trainer.compute_loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if args.device == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up (allocates optimizer state)
    times = []
    with PeakMemory(args.device) as peak:
        for _ in range(args.steps):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
    print({"step_s": statistics.median(times), "peak_mib": peak.added_bytes / MIB}.__repr__().replace("'", '"'))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4, help="pairs per step")
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--completion", type=int, default=160)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return _child(args)
    variants = args.variants.split(",")
    shared = [f"--{k}={getattr(args, k)}" for k in ("device", "vocab", "hidden", "layers", "batch", "prompt",
                                                       "completion", "steps", "threads")]
    results = {v: [] for v in variants}
    for round_ in range(args.rounds):
        for variant in variants:
            results[variant].append(run_child(__file__, ["--child", f"--variant={variant}", *shared]))
            print(f"round {round_ + 1}/{args.rounds} {variant}: {results[variant][-1]}", file=sys.stderr)
    base_time = statistics.median(r["step_s"] for r in results["uniform"])
    base_mem = statistics.median(r["peak_mib"] for r in results["uniform"])
    rows = []
    for variant in variants:
        step = statistics.median(r["step_s"] for r in results[variant])
        mem = statistics.median(r["peak_mib"] for r in results[variant])
        rows.append([variant, f"{step * 1000:.0f}", f"{step / base_time:.2f}", f"{mem:.0f}", f"{mem / base_mem:.2f}"])
    print(f"`{command_line()}`\n")
    print(f"device {args.device}, Llama {args.layers} × {args.hidden}, vocab {args.vocab}, {args.batch} pairs, "
          f"prompt {args.prompt} + completion ≤ {args.completion} tokens, median of {args.rounds} rounds × "
          f"{args.steps} steps\n")
    print(markdown_table(["scheme", "step (ms)", "time vs uniform", "peak MiB added", "memory vs uniform"], rows))


if __name__ == "__main__":
    main()
