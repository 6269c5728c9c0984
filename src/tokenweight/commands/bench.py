"""``tokenweight bench keyfact``: every weighting scheme × seeds × KeyFact variants with the same budget, in one
run; writes a report folder (results.json, report.md, learning curves, weight heatmaps) and optionally the KeyFact
section of docs/BENCHMARKS.md."""

from __future__ import annotations

import argparse
import shlex

from rich.console import Console

EXAMPLES = """examples:
  tokenweight bench keyfact --quick                          # smoke run: small model, base variant, 2 seeds
  tokenweight bench keyfact --jobs 2 --update_docs           # the full benchmark (every row, 5 seeds, 7 variants)
  tokenweight bench keyfact --schemes uniform,oracle,oracle-unit,tidpo,tidpo:weights --variants base,noise0.2 --seeds 5
  tokenweight bench keyfact --schemes uniform,otpo --tune --output_dir runs/bench
  tokenweight bench keyfact --facts my_facts.json --train_size 1024
rows: every registered scheme that runs on KeyFact, oracle (key-only weights, uniform's total n on the key),
  oracle-unit (weight 1 on the key), and <scheme>:<ablation> (e.g. tidpo:weights, tidpo:kl); uniform is required
variants: base, verbosity (chosen_longer 0.8), noise0.1, noise0.2, noise0.4, shortcut (keyfact_shortcut 0.9),
  shortcut-rejected (keyfact_shortcut 0.1: the sentence marks rejected)
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="benchmarks (tokenweight bench keyfact --help)", description=__doc__,
                                   epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    tasks = parser.add_subparsers(dest="task", metavar="TASK", required=True)
    keyfact = tasks.add_parser("keyfact", help="the KeyFact comparison of the weighting schemes", description=__doc__,
                               epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    keyfact.add_argument("--schemes", help="comma-separated rows (default: every scheme, both oracles, every ablation)")
    keyfact.add_argument("--seeds", type=int, default=5, help="number of seeds 0..N-1 (default 5)")
    keyfact.add_argument("--variants", help="comma-separated variants (default: all seven)")
    keyfact.add_argument("--quick", action="store_true",
                         help="tiny budget (small model, 32 pairs, base variant, at most 2 seeds): a smoke test")
    keyfact.add_argument("--tune", action="store_true",
                         help="pick each row's learning rate (0.5x, 1x, 2x the budget's) on a validation set")
    keyfact.add_argument("--jobs", type=int, default=1, help="worker processes, one thread each (default 1)")
    keyfact.add_argument("--facts", help="facts JSON file (default: the built-in facts)")
    keyfact.add_argument("--train_size", type=int, help="training pairs per run (default 512)")
    keyfact.add_argument("--eval_size", type=int, help="pairs of the fixed evaluation set (default 512)")
    keyfact.add_argument("--epochs", type=float, help="training epochs (default: tokenweight train's KeyFact budget)")
    keyfact.add_argument("--output_dir", default="outputs/bench-keyfact", help="report folder")
    keyfact.add_argument("--update_docs", action="store_true", help="rewrite the KeyFact section of --docs")
    keyfact.add_argument("--docs", default="docs/BENCHMARKS.md", help="benchmark document (default docs/BENCHMARKS.md)")
    keyfact.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace):
    """The :class:`~tokenweight.keyfact.bench.BenchSettings` named by the flags (``--quick`` first, then the sizes)."""
    from tokenweight.keyfact.bench import VARIANTS, BenchSettings, default_rows, quick_settings
    from tokenweight.keyfact.bench.rows import bench_row

    rows = args.schemes.split(",") if args.schemes else default_rows()
    for label in rows:
        bench_row(label)
    settings = BenchSettings(rows=rows, seeds=list(range(args.seeds)),
                             variants=args.variants.split(",") if args.variants else list(VARIANTS), facts=args.facts,
                             jobs=args.jobs, tune=args.tune)
    if args.quick:
        settings = quick_settings(settings)
        if args.variants:
            settings.variants = args.variants.split(",")
    for key in ("train_size", "eval_size", "epochs"):
        if getattr(args, key) is not None:
            setattr(settings, key, getattr(args, key))
    return settings


def command_line(args: argparse.Namespace) -> str:
    """The ``tokenweight bench keyfact`` command equivalent to ``args`` (for the report)."""
    words = ["tokenweight", "bench", "keyfact"]
    for key in ("schemes", "seeds", "variants", "jobs", "facts", "train_size", "eval_size", "epochs", "output_dir"):
        value = getattr(args, key)
        if value is not None:
            words += [f"--{key}", str(value)]
    words += [f"--{flag}" for flag in ("quick", "tune", "update_docs") if getattr(args, flag)]
    return " ".join(shlex.quote(w) for w in words)


def run(args: argparse.Namespace) -> int:
    from tokenweight.keyfact.bench import markdown_table, run_benchmark, update_docs
    from tokenweight.models import hide_shard_writing_bars

    hide_shard_writing_bars()
    results = run_benchmark(settings_from_args(args), args.output_dir, command_line(args))
    console = Console()
    console.print(markdown_table(results), soft_wrap=True, markup=False, highlight=False)
    console.print(f"report: {args.output_dir}/report.md, results.json, items.npz, forest.png, curves_*.png, "
                  "heatmaps/")
    if args.update_docs:
        console.print(f"updated {update_docs(results, args.docs)}")
    return 0
