"""Batched OTPO weights vs the official per-pair POT loop, same inputs, same run.

Ours: the ``otpo`` scheme's ``compute`` (pack the completion states, one batched distance matmul on the responses,
batched unbalanced Sinkhorn, scatter back). Official: for each pair, zero vectors off the response, fp32 cdist on
the full ``(L-1) × (L-1)`` matrix, + 1e-6, divide by its max if > 1, POT's ``sinkhorn_unbalanced(method=
"sinkhorn_stabilized", reg_type="entropy")`` on torch tensors, row/column sums over ``‖Γ‖₁ / τ``.

Inputs: bf16 states (as a bf16 model returns them) with a shared component plus noise, a prompt of
``--prompt-length`` tokens, chosen responses of ``n`` tokens and rejected ones of ``3n/4`` tokens.
POT cells whose estimated loop time exceeds ``--max-pot-seconds`` are extrapolated from one timed pair (marked).

    python benchmarks/otpo_solver.py [--quick] [--device cpu|cuda] [--reg 1 0.1 0.01] [--max-pot-seconds 10]
        [--threads 1]

Host reads (``.item()``, ``.tolist()``, ``bool(tensor)`` …, each a synchronisation on a GPU) are counted for one
call of each side by :func:`count_host_reads`.
"""

from __future__ import annotations

import argparse
import platform
import shlex
import statistics
import sys
import time
import warnings
from contextlib import contextmanager

import ot
import torch

from tokenweight.weights.base import WeightingInputs
from tokenweight.weights.otpo import OTPOScheme, OTPOSettings

FULL_GRID = {"batch": [2, 8, 32], "length": [256, 1024, 2048], "hidden": [2048, 4096]}
QUICK_GRID = {"batch": [2, 8], "length": [256, 1024], "hidden": [2048]}


def make_inputs(pairs: int, length: int, hidden: int, prompt: int, device: str, seed: int = 0) -> WeightingInputs:
    """``2·pairs`` rows of ``prompt + length`` shifted positions: chosen ``length`` tokens, rejected ``3/4`` of it."""
    generator = torch.Generator().manual_seed(seed)
    positions = prompt + length
    states = (4.0 * torch.randn(1, 1, hidden, generator=generator)
              + torch.randn(2 * pairs, positions, hidden, generator=generator)).to(torch.bfloat16)
    loss_mask = torch.zeros(2 * pairs, positions, dtype=torch.bool)
    loss_mask[:pairs, prompt:prompt + length] = True
    loss_mask[pairs:, prompt:prompt + 3 * length // 4] = True
    ids = torch.zeros(2 * pairs, positions + 1, dtype=torch.long)
    return WeightingInputs(input_ids=ids.to(device), attention_mask=torch.ones_like(ids).to(device),
                           completion_mask=torch.cat([loss_mask[:, :1], loss_mask], dim=1).long().to(device),
                           loss_mask=loss_mask.to(device), batch={}, hidden=states.to(device))


def official_pair(chosen: torch.Tensor, rejected: torch.Tensor, chosen_mask: torch.Tensor,
                  rejected_mask: torch.Tensor, reg: float, reg_m: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The official per-pair computation on ``[L-1, d]`` states and ``[L-1]`` masks; weights ``[L-1]`` each."""
    cost = torch.cdist(chosen.float() * chosen_mask[:, None], rejected.float() * rejected_mask[:, None]) + 1e-6
    normaliser = cost.max()
    if normaliser > 1:
        cost = cost / normaliser
    a, b = chosen_mask.float(), rejected_mask.float()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = ot.unbalanced.sinkhorn_unbalanced(a, b, cost, reg, reg_m, method="sinkhorn_stabilized",
                                                 reg_type="entropy")
    scale = plan.sum() / torch.minimum(a.sum(), b.sum())
    return plan.sum(1) / scale, plan.sum(0) / scale


HOST_READS = ("item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__")
"""The ``torch.Tensor`` methods that copy a value to the host (a synchronisation on a GPU)."""


@contextmanager
def count_host_reads():
    """Count calls of :data:`HOST_READS` inside the block (yields a one-element list holding the count).

    On a GPU each is a device synchronisation; on a CPU this counts the same reads, so the number is the same.
    """
    count = [0]
    originals = {name: getattr(torch.Tensor, name) for name in HOST_READS}

    def counting(original):
        def read(self, *args, **kwargs):
            count[0] += 1
            return original(self, *args, **kwargs)
        return read

    for name, original in originals.items():
        setattr(torch.Tensor, name, counting(original))
    try:
        yield count
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_ours(inputs: WeightingInputs, scheme: OTPOScheme, device: str) -> tuple[float, torch.Tensor, int, float]:
    """Median wall time of ``scheme.compute`` after one untimed warm-up (3 repeats when a run is under 1 s), with
    the host reads and the mean iterations of the warm-up."""
    with count_host_reads() as reads:
        warm = scheme.compute(inputs)
    iterations = float(warm.metrics["otpo/iterations"])
    times = []
    while True:
        synchronize(device)
        start = time.perf_counter()
        weights = scheme.compute(inputs).weights
        synchronize(device)
        times.append(time.perf_counter() - start)
        if times[0] >= 1.0 or len(times) == 3:
            return statistics.median(times), weights, reads[0], iterations


def time_official(inputs: WeightingInputs, reg: float, reg_m: float, device: str,
                  budget: float) -> tuple[float, bool, list[torch.Tensor], int]:
    """Wall time of the per-pair loop, or ``B ×`` one pair's time when that exceeds ``budget`` (extrapolated),
    and the loop's host reads (one pair's × B)."""
    pairs = inputs.hidden.shape[0] // 2
    mask, hidden = inputs.loss_mask, inputs.hidden

    def run(b: int) -> torch.Tensor:
        return torch.cat(official_pair(hidden[b], hidden[pairs + b], mask[b], mask[pairs + b], reg, reg_m))

    with count_host_reads() as reads:
        run(0)  # warm-up (POT backend selection, kernels)
    synchronize(device)
    start = time.perf_counter()
    first = run(0)
    synchronize(device)
    one_pair = time.perf_counter() - start
    if one_pair * pairs > budget:
        return one_pair * pairs, True, [first], reads[0] * pairs
    start = time.perf_counter()
    results = [run(b) for b in range(pairs)]
    synchronize(device)
    return time.perf_counter() - start, False, results, reads[0] * pairs


def max_relative_difference(ours: torch.Tensor, official: list[torch.Tensor], pairs: int) -> float:
    worst = 0.0
    for b, reference in enumerate(official):
        mine = torch.cat([ours[b], ours[pairs + b]]).double()
        reference = reference.double()
        worst = max(worst, ((mine - reference).abs().max() / reference.abs().max()).item())
    return worst


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small subset of the grid")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--max-pot-seconds", type=float, default=10.0,
                        help="extrapolate the POT loop from one pair when it would take longer than this")
    parser.add_argument("--prompt-length", type=int, default=128)
    parser.add_argument("--reg", type=float, nargs="+", default=[1.0, 0.1, 0.01])
    parser.add_argument("--reg-m", type=float, default=0.2)
    parser.add_argument("--threads", type=int, help="CPU threads for torch (1 gives stable timings on a busy host)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    grid = QUICK_GRID if args.quick else FULL_GRID

    device_name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else \
        f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    print(f"`{shlex.join(['python', 'benchmarks/otpo_solver.py', *sys.argv[1:]])}`\n")
    print(f"Device: {device_name}; torch {torch.__version__}, POT {ot.__version__}; reg_m={args.reg_m}, prompt {args.prompt_length} tokens, rejected = 3/4 of chosen, bf16 states.\n")
    print("| reg | B | chosen/rejected tokens | d | iterations | ours (s) | POT per-pair loop (s) | POT/ours | "
          "host reads ours | host reads POT loop | max rel. diff |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    extrapolated_any = False
    for reg in args.reg:
        scheme = OTPOScheme(OTPOSettings(otpo_reg=reg, otpo_reg_m=[args.reg_m]))
        for hidden in grid["hidden"]:
            for length in grid["length"]:
                for pairs in grid["batch"]:
                    inputs = make_inputs(pairs, length, hidden, args.prompt_length, args.device)
                    ours, weights, reads, iterations = time_ours(inputs, scheme, args.device)
                    pot, extrapolated, official, pot_reads = time_official(inputs, reg, args.reg_m, args.device,
                                                                           args.max_pot_seconds)
                    extrapolated_any |= extrapolated
                    mark = "*" if extrapolated else ""
                    print(f"| {reg} | {pairs} | {length}/{3 * length // 4} | {hidden} | {iterations:.0f} | {ours:.3f} | "
                          f"{pot:.3f}{mark} | {pot / ours:.1f}{mark} | {reads} | {pot_reads}{mark} | "
                          f"{max_relative_difference(weights, official, pairs):.1e} |", flush=True)
                    del inputs, weights, official
    if extrapolated_any:
        print("\n\\* POT time extrapolated: one pair timed × B (the loop would exceed "
              f"--max-pot-seconds {args.max_pot_seconds}); its max rel. diff is over that pair only.")


if __name__ == "__main__":
    main()
