"""Training-step time and peak memory of each weighting scheme against ``uniform`` (plain DPO), side by side.

    python benchmarks/step_overhead.py                       # CPU: Llama 4 × 256, vocab 8k, 4 pairs × ~192 tokens
    python benchmarks/step_overhead.py --device cuda --hidden 1024 --layers 8 --batch 8 --completion 512

Every scheme runs the same optimizer step (``TokenweightTrainer.compute_loss`` → backward → AdamW step) on the
same seeded model and the same batch, each in a fresh process (memory method: ``benchmarks/_common.py``).
Schemes: ``uniform``; ``otpo`` (Sinkhorn on the policy's hidden states, every step); ``tidpo`` without the triplet
term (attribution pass + TDPO2 KL, ``tidpo_gamma=0``) and ``tidpo+triplet`` (anchor sampling and scoring, preset
``paper``), and its two per-step costs alone: ``tidpo (attribution only)`` (``tidpo_kl_alpha=0``) and ``tidpo (KL
only)`` (``tidpo_lambda=0``: prior weights, no attribution pass); ``attention``, ``tisdpo``, ``sepo``, ``tgdpo`` and ``cdpo`` with their weights (rewards) cached (they are
dataset columns by then, as after ``tokenweight precompute <scheme>``); ``tdpo`` (TDPO2's full-vocabulary KL every step); ``lddpo``,
``sampo`` (two seeded host-side draws per step) and ``d2po``, the position baselines; ``uniform + WPO``: plain
DPO with TRL's ``use_weighting`` pair weights; ``uniform (cached reference)``: plain DPO with no reference model
in memory, its per-token log-probs read from the batch (as with ``--ref_log_probs DIR`` after ``tokenweight
precompute reference``; the values are any fixed numbers, which do not change the step's cost); ``simpo`` and
``confpo``: reference-free, so no reference model is built at all (the trainer refuses one). The rows come from
the scheme registry (:func:`scheme_variants`): a newly registered scheme gets one at its defaults. Besides the peak the step
adds, each child reports its peak with the models resident (policy, reference, optimizer state), measured from
before the models are built. Runs are interleaved over ``--rounds`` rounds (at least 5), the order rotated by one
every round (each scheme goes first in turn), so that load on a shared machine hits every scheme alike. Each scheme's
ratios to ``uniform`` are taken within a round (against that round's ``uniform`` run) and reported as the median and
the range over the rounds (wall clock and the process's CPU time, ``time.process_time``). Each goal (:data:`GOALS`)
is **met** when the whole range is at or under its limit, **not met** when the whole range is over it, and
**unresolved** when the range straddles it; on CPU the time goals read the CPU time (one torch thread: it does not
count the time spent waiting for a core on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import MIB, PeakMemory, command_line, markdown_table, run_child  # noqa: E402
from dpo_vs_trl import make_model, make_rows, make_tokenizer, rotated  # noqa: E402

#: Settings of a scheme's own row besides its defaults: TI-DPO's leaves out the triplet term (``tidpo+triplet`` has it).
SCHEME_ROW_SETTINGS = {"tidpo": {"tidpo_gamma": 0.0}}
#: Rows besides one per scheme: TI-DPO with its triplet term and each of its two per-step costs alone (where its
#: overhead goes), WPO's pair weights and the reference-log-prob cache.
EXTRA_VARIANTS = {
    "tidpo+triplet": {"weighting": "tidpo"},
    "tidpo (attribution only)": {"weighting": "tidpo", "tidpo_gamma": 0.0, "tidpo_kl_alpha": 0.0},
    "tidpo (KL only)": {"weighting": "tidpo", "tidpo_gamma": 0.0, "tidpo_lambda": 0.0},
    "uniform + WPO": {"weighting": "uniform", "use_weighting": True},
    "uniform (cached reference)": {"weighting": "uniform", "precompute_ref_log_probs": True},
}


def scheme_variants() -> dict[str, dict]:
    """One row per registered scheme that runs without dataset-supplied weight columns, ``uniform`` (the baseline)
    first, then by name: named after the scheme, ``<name> (cached)`` for a scheme with a prepare hook
    (its weights are dataset columns by then, as after ``tokenweight precompute <scheme>``)."""
    from tokenweight.weights import SCHEMES

    names = ["uniform", *sorted(name for name in SCHEMES if name != "uniform")]
    return {f"{name} (cached)" if SCHEMES[name].has_prepare() else name:
            {"weighting": name, **SCHEME_ROW_SETTINGS.get(name, {})}
            for name in names if not SCHEMES[name].tooling.needs_weight_columns}


VARIANTS = {**scheme_variants(), **EXTRA_VARIANTS}

#: The step-overhead goals: (variant, measured column, limit of its ratio to ``uniform``); ``step_s`` is read as
#: ``cpu_s`` on CPU (:func:`time_key`).
GOALS = (("otpo", "step_s", 1.05), ("tidpo", "step_s", 1.5), ("tidpo+triplet", "step_s", 2.0),
         ("tidpo", "models_peak_mib", 1.2), ("tidpo+triplet", "models_peak_mib", 1.2),
         ("attention (cached)", "step_s", 1.03))
#: How the goals table names a measured column.
MEASURES = {"step_s": "step time", "cpu_s": "step CPU time", "models_peak_mib": "peak with models"}


def time_key(device: str) -> str:
    """The step time the goals read: the process's CPU time on CPU (one thread: on a shared machine it does not count
    the time spent waiting for a core), the wall clock on a GPU."""
    return "cpu_s" if device == "cpu" else "step_s"


def goal_name(variant: str, key: str, limit: float) -> str:
    return f"{variant} {MEASURES[key]} ≤ {limit:.2f}× uniform"


#: Variants whose weights are dataset columns by then (after ``tokenweight precompute <scheme>``).
CACHED_WEIGHTS = tuple(label for label in VARIANTS if label.endswith(" (cached)"))


def variant_dataset(variant: str, tokenizer, rows: list[dict]):
    """The tokenized ``rows`` as ``variant`` sees them: cached attention weights or cached reference log-probs are
    dataset columns (any fixed per-token values: they do not change the step's cost)."""
    import datasets
    import torch

    from tokenweight.data import tokenize_preference_dataset

    dataset, _ = tokenize_preference_dataset(datasets.Dataset.from_list(rows), tokenizer)
    generator = torch.Generator().manual_seed(0)
    if VARIANTS[variant].get("precompute_ref_log_probs"):
        dataset = dataset.map(lambda row: {
            "chosen_ref_logps": (-torch.rand(len(row["chosen_ids"]), generator=generator) * 8).tolist(),
            "rejected_ref_logps": (-torch.rand(len(row["rejected_ids"]), generator=generator) * 8).tolist()})
    if variant in CACHED_WEIGHTS:
        dataset = dataset.map(lambda row: {
            "chosen_weights": (torch.rand(len(row["chosen_ids"]), generator=generator) * 2).tolist(),
            "rejected_weights": (torch.rand(len(row["rejected_ids"]), generator=generator) * 2).tolist()})
    return dataset


def build_trainer(variant: str, tokenizer, make_model, device: str, max_length: int, **overrides):
    """A :class:`TokenweightTrainer` of ``variant`` (config ``overrides`` on top) over fresh ``make_model()`` policy
    and reference (no reference for ``uniform (cached reference)`` and for a reference-free scheme)."""
    from tokenweight.config import TokenweightConfig
    from tokenweight.trainer import TokenweightTrainer
    from tokenweight.weights import SCHEMES

    settings = VARIANTS[variant]
    config = TokenweightConfig(output_dir="/tmp/step_overhead", use_cpu=device == "cpu", report_to="none",
                               max_length=max_length, learning_rate=1e-5, beta=0.1, **settings, **overrides)
    needs_model = SCHEMES[config.weighting].uses_reference and not settings.get("precompute_ref_log_probs")
    reference = make_model() if needs_model else None
    return TokenweightTrainer(model=make_model(), ref_model=reference, args=config, processing_class=tokenizer)


def timed_steps(trainer, batch: dict, steps: int, device: str) -> tuple[list[float], list[float], PeakMemory]:
    """One warm-up optimizer step (``compute_loss`` → backward → AdamW; allocates the optimizer state), then
    ``steps`` timed ones under :class:`PeakMemory`: their wall-clock and process CPU times (s) and the peak."""
    import torch

    model = trainer.model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step():
        loss = trainer.compute_loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    step()
    times, cpu_times = [], []
    with PeakMemory(device) as peak:
        for _ in range(steps):
            start, cpu_start = time.perf_counter(), time.process_time()
            step()
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    return times, cpu_times, peak


def _child(args) -> None:
    import torch

    from tokenweight.data import PreferenceCollator

    torch.set_num_threads(args.threads)
    tokenizer = make_tokenizer(args.vocab)
    dataset = variant_dataset(args.variant, tokenizer, make_rows(args.batch, args.vocab, args.prompt, args.completion))
    with PeakMemory(args.device) as with_models:  # from before the models are built: what stays resident
        trainer = build_trainer(args.variant, tokenizer, lambda: make_model(args), args.device,
                                args.prompt + args.completion + 8)
        batch = {k: v.to(args.device) for k, v in PreferenceCollator(tokenizer.pad_token_id)(list(dataset)).items()}
        times, cpu_times, peak = timed_steps(trainer, batch, args.steps, args.device)
    print(json.dumps({"step_s": statistics.median(times), "cpu_s": statistics.median(cpu_times),
                      "peak_mib": peak.added_bytes / MIB,
                      "models_peak_mib": with_models.added_bytes / MIB}))


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
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return _child(args)
    if args.rounds < 5:
        parser.error("--rounds must be at least 5 (the spread of the ratios is part of the result)")
    variants = args.variants.split(",")
    if "uniform" not in variants:
        parser.error("--variants must include uniform (the baseline)")
    shared = [f"--{k}={getattr(args, k)}" for k in ("device", "vocab", "hidden", "layers", "batch", "prompt",
                                                       "completion", "steps", "threads")]
    results = {v: [] for v in variants}
    for round_, order in enumerate(rotated(variants, args.rounds)):
        for variant in order:
            results[variant].append(run_child(__file__, ["--child", f"--variant={variant}", *shared]))
            print(f"round {round_ + 1}/{args.rounds} {variant}: {results[variant][-1]}", file=sys.stderr)
    print(f"`{command_line()}`\n")
    print(f"device {args.device}, Llama {args.layers} × {args.hidden}, vocab {args.vocab}, {args.batch} pairs, "
          f"prompt {args.prompt} + completion ≤ {args.completion} tokens, {args.rounds} rounds (order rotated every "
          f"round) × median of {args.steps} steps; ratios to uniform within each round: median [min–max]\n")
    print(markdown_table(["scheme", "step (ms)", "time vs uniform", "step CPU (ms)", "CPU time vs uniform",
                          "peak MiB added", "memory vs uniform", "peak MiB with models", "vs uniform"],
                         overhead_rows(results)))
    print()
    print(markdown_table(["goal", "ratio to uniform, median [min–max]", "verdict"], goal_rows(results, args.device)))


def ratios(results: dict[str, list[dict]], variant: str, key: str) -> list[float]:
    """``variant``'s ``key`` over the same round's ``uniform``, one per round."""
    return [run[key] / base[key] for run, base in zip(results[variant], results["uniform"])]


def verdict(low: float, high: float, limit: float) -> str:
    """``met`` when the range ``[low, high]`` of a ratio is at or under ``limit``, ``not met`` when it is over it,
    ``unresolved`` when it straddles it."""
    return "met" if high <= limit else "not met" if low > limit else "unresolved"


def goal_rows(results: dict[str, list[dict]], device: str) -> list[list[str]]:
    """Per goal of :data:`GOALS` whose variant ran: ``[goal, "median [min–max]", verdict]``."""
    rows = []
    for variant, key, limit in GOALS:
        if variant in results:
            key = time_key(device) if key == "step_s" else key
            values = ratios(results, variant, key)
            rows.append([goal_name(variant, key, limit),
                         f"{statistics.median(values):.2f} [{min(values):.2f}–{max(values):.2f}]",
                         verdict(round(min(values), 2), round(max(values), 2), limit)])
    return rows


def overhead_rows(results: dict[str, list[dict]]) -> list[list[str]]:
    """Per scheme: median step time and memories, and the median [min–max] over rounds of its ratios to the same
    round's ``uniform``."""
    def ratio(variant: str, key: str) -> str:
        values = ratios(results, variant, key)
        return f"{statistics.median(values):.2f} [{min(values):.2f}–{max(values):.2f}]"

    def median(variant: str, key: str) -> float:
        return statistics.median(r[key] for r in results[variant])

    return [[variant, f"{median(variant, 'step_s') * 1000:.0f}", ratio(variant, "step_s"),
             f"{median(variant, 'cpu_s') * 1000:.0f}", ratio(variant, "cpu_s"), f"{median(variant, 'peak_mib'):.0f}",
             ratio(variant, "peak_mib"),
             f"{median(variant, 'models_peak_mib'):.0f}", ratio(variant, "models_peak_mib")] for variant in results]


if __name__ == "__main__":
    main()
