"""``tokenweight bench keyfact``: every weighting scheme × seeds × KeyFact variants with the same budget, in one
run; writes a report folder (results.json, report.md, learning curves, weight heatmaps) and optionally the KeyFact
section of docs/BENCHMARKS.md."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from rich.console import Console

EXAMPLES = """examples:
  tokenweight bench keyfact --quick                          # smoke run: 2 small base models, base variant, 2 seeds
  tokenweight bench keyfact --jobs 2 --update_docs           # the full benchmark (every row, 2 base models x 3 seeds)
  tokenweight bench keyfact --schemes uniform,oracle,oracle-unit,tidpo,tidpo:weights --variants base,noise0.2 --seeds 5
  tokenweight bench keyfact --schemes uniform,otpo --tune --output_dir runs/bench
  tokenweight bench keyfact --facts my_facts.json --train_size 1024
  tokenweight bench keyfact --quick --output_dir runs/q && tokenweight bench keyfact --report_from runs/q
rows: every registered scheme that runs on KeyFact, oracle (key-only weights, uniform's total n on the key),
  oracle-unit (weight 1 on the key), and <scheme>:<ablation> (e.g. tidpo:weights, tidpo:kl); uniform is required
--report_from DIR rebuilds the analysis, report.md, plots (and with --update_docs the docs' blocks) of a finished
  run folder without training; several --report_from merge the folders of one benchmark run in parts (e.g. one
  variant each) into --output_dir; --compare DIR2 adds the row-by-row comparison with a run on another facts file
base models: every run is repeated on each (--base_seeds); a difference holds where its interval (over base
  models, seeds and distinct prompts) excludes 0 and it has the same sign on every base model
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
    keyfact.add_argument("--seeds", type=int, default=3, help="number of seeds 0..N-1 per base model (default 3)")
    keyfact.add_argument("--base_seeds", help="comma-separated base seeds: every run is repeated on each base model "
                         "(default: the shipped replicas of the facts file, 0,1 for both built-in ones; 0 for another "
                         "file)")
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
    keyfact.add_argument("--claims_docs", default="docs/KEYFACT.md",
                         help="document whose paper-claims block --update_docs rewrites (default docs/KEYFACT.md)")
    keyfact.add_argument("--report_from", metavar="DIR", action="append", default=[],
                         help="run nothing: rebuild the analysis, report.md and plots of the finished run folder DIR; "
                              "repeated: merge the folders (one benchmark run in parts) into --output_dir first")
    keyfact.add_argument("--compare", metavar="DIR", action="append", default=[],
                         help="with --report_from: a finished run folder on another facts file, compared row by row "
                              "(repeatable)")
    keyfact.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace):
    """The :class:`~tokenweight.keyfact.bench.BenchSettings` named by the flags (``--quick`` first, then the sizes)."""
    from tokenweight.keyfact.bench import VARIANTS, BenchSettings, default_rows, quick_settings
    from tokenweight.keyfact.bench.rows import bench_row
    from tokenweight.keyfact.bench.settings import default_base_seeds

    rows = args.schemes.split(",") if args.schemes else default_rows()
    for label in rows:
        bench_row(label)
    settings = BenchSettings(rows=rows, seeds=list(range(args.seeds)),
                             variants=args.variants.split(",") if args.variants else list(VARIANTS), facts=args.facts,
                             jobs=args.jobs, tune=args.tune, base_seeds=default_base_seeds("default", args.facts))
    if args.quick:
        settings = quick_settings(settings)
        if args.variants:
            settings.variants = args.variants.split(",")
    if args.base_seeds:
        settings.base_seeds = _integers(args.base_seeds, "--base_seeds")
    for key in ("train_size", "eval_size", "epochs"):
        if getattr(args, key) is not None:
            setattr(settings, key, getattr(args, key))
    settings.__post_init__()  # check what the flags set after construction
    return settings


def _integers(text: str, flag: str) -> list[int]:
    from tokenweight.errors import UserError
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise UserError(f"{flag}: expected comma-separated integers, got {text!r}") from None


def command_line(args: argparse.Namespace, settings) -> str:
    """The ``tokenweight bench keyfact`` command that ran (for the report): the flags given, with the seeds and base
    seeds ``settings`` ran (``--quick`` runs at most two seeds)."""
    words = ["tokenweight", "bench", "keyfact"]
    ran = {"seeds": len(settings.seeds), "base_seeds": ",".join(map(str, settings.base_seeds))}
    for key in ("schemes", "seeds", "base_seeds", "variants", "jobs", "facts", "train_size", "eval_size", "epochs",
                "output_dir"):
        value = ran.get(key, getattr(args, key))
        if value is not None:
            words += [f"--{key}", str(value)]
    words += [f"--{flag}" for flag in ("quick", "tune", "update_docs") if getattr(args, flag)]
    return " ".join(shlex.quote(w) for w in words)


def run(args: argparse.Namespace) -> int:
    from tokenweight.keyfact.bench import markdown_table, run_benchmark, update_docs
    from tokenweight.keyfact.bench.benchmark import expected_runs
    from tokenweight.keyfact.bench.folders import merge_folders, write_report
    from tokenweight.keyfact.bench.report import update_claims_docs
    from tokenweight.errors import UserError
    from tokenweight.models import hide_shard_writing_bars

    hide_shard_writing_bars()
    console = Console()
    if args.compare and not args.report_from:
        raise UserError("--compare needs --report_from (it compares finished run folders)")
    if args.report_from:
        output_dir = args.report_from[0]
        if len(args.report_from) > 1:
            output_dir = args.output_dir
            if str(Path(output_dir).resolve()) in {str(Path(d).resolve()) for d in args.report_from}:
                raise UserError("--report_from with several folders merges them into --output_dir, which must be "
                                "another folder")
            merge_folders([Path(d) for d in args.report_from], Path(output_dir))
        results = write_report(output_dir, tuple(args.compare))
    else:
        settings = settings_from_args(args)
        console.print(f"{expected_runs(settings)} runs: {len(settings.base_seeds)} base model(s) × "
                      f"{len(settings.seeds)} seed(s) × (row, variant) cells", markup=False, highlight=False)
        output_dir = args.output_dir
        results = run_benchmark(settings, output_dir, command_line(args, settings))
    console.print(markdown_table(results), soft_wrap=True, markup=False, highlight=False)
    console.print(f"report: {output_dir}/report.md, results.json, items.npz, forest.png, curves_*.png, heatmaps/")
    if args.update_docs:
        console.print(f"updated {update_docs(results, args.docs)} and {update_claims_docs(results, args.claims_docs)}")
    return 0
