"""Batched OTPO weights vs the official per-pair POT loop, same inputs, same run.

Ours: the ``otpo`` scheme's ``compute`` (gather the completion states chunk by chunk, a distance matmul on the
responses, batched unbalanced Sinkhorn, scatter back). Official: for each pair, zero vectors off the response, fp32 cdist on
the full ``(L-1) × (L-1)`` matrix, + 1e-6, divide by its max if > 1, POT's ``sinkhorn_unbalanced(method=
"sinkhorn_stabilized", reg_type="entropy")`` on torch tensors, row/column sums over ``‖Γ‖₁ / τ``.

What is timed, on each side (the comparison is the whole weighting computation, from the model's states to the
weights, not the solver alone):

* both start from the same bf16 ``[2B, L-1, d]`` states and ``loss_mask`` on the same device, and both upcast to
  fp32 inside the timed region (ours as it gathers the response rows, the loop per pair);
* both build their cost matrix inside the timed region (ours: the ``[B, N, M]`` response block; the loop: the
  official full padded ``(L-1) × (L-1)`` matrix per pair, which is what the official code computes, prompt and
  padding included);
* both run with the same torch thread count (``--threads``; POT's torch backend runs torch ops), fp32 on the
  device; the loop's per-pair work (Python, POT's host reads) is part of its cost as it is upstream;
* ours includes the packing, the input checks and scattering the weights back; the loop stops at the per-pair
  weights (scattering them would cost it more).

Timing: one untimed warm-up call of each side, then ``--rounds`` interleaved rounds (one call of each side back
to back, alternating which goes first), so that load from other jobs on a shared machine hits both sides alike;
the table gives the medians and the median and smallest of the rounds' POT/ours ratios.

Inputs: bf16 states (as a bf16 model returns them) with a shared component plus noise, a prompt of
``--prompt-length`` tokens, chosen responses of ``n`` tokens and rejected ones of ``3n/4`` tokens.
POT cells whose estimated loop time exceeds ``--max-pot-seconds`` are extrapolated from one timed pair (marked).

    python benchmarks/otpo_solver.py [--quick] [--device cpu|cuda] [--reg 1 0.1 0.01] [--max-pot-seconds 10]
        [--rounds 5] [--threads 1] [--batch 2 8] [--length 256 1024] [--hidden 2048]

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
from dataclasses import dataclass

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


@dataclass
class Comparison:
    """One cell: per-round wall times of both sides (seconds), the POT/ours ratio of each round, host reads of one
    call of each side, our mean iterations, both sides' weights (the POT side's: one tensor per timed pair)."""

    ours: list[float]
    pot: list[float]
    extrapolated: bool
    reads_ours: int
    reads_pot: int
    iterations: float
    weights: torch.Tensor
    official: list[torch.Tensor]

    @property
    def ratios(self) -> list[float]:
        return [p / o for p, o in zip(self.pot, self.ours)]


def compare(inputs: WeightingInputs, scheme: OTPOScheme, reg: float, reg_m: float, device: str, budget: float,
            rounds: int) -> Comparison:
    """Both sides on the same inputs, interleaved: one untimed warm-up call each (host reads counted there), then
    ``rounds`` rounds that time one call of each side back to back, the side that goes first alternating.

    The POT side is the whole per-pair loop, or, when one pair × B exceeds ``budget`` seconds, one pair × B
    (extrapolated; then only pair 0's weights are compared).
    """
    pairs = inputs.hidden.shape[0] // 2
    mask, hidden = inputs.loss_mask, inputs.hidden

    def official(b: int) -> torch.Tensor:
        return torch.cat(official_pair(hidden[b], hidden[pairs + b], mask[b], mask[pairs + b], reg, reg_m))

    def timed(function):
        synchronize(device)
        start = time.perf_counter()
        result = function()
        synchronize(device)
        return time.perf_counter() - start, result

    with count_host_reads() as reads_ours:
        warm = scheme.compute(inputs)
    with count_host_reads() as reads_pot:
        one_pair, _ = timed(lambda: official(0))  # also POT's warm-up (backend selection, kernels)
    extrapolated = one_pair * pairs > budget
    timed_pairs = 1 if extrapolated else pairs
    ours, pot = [], []
    for round_ in range(rounds):
        sides = [("ours", lambda: scheme.compute(inputs).weights),
                 ("pot", lambda: [official(b) for b in range(timed_pairs)])]
        for side, function in sides if round_ % 2 == 0 else sides[::-1]:
            seconds, result = timed(function)
            if side == "ours":
                ours.append(seconds)
                weights = result
            else:
                pot.append(seconds * pairs / timed_pairs)
                official_weights = result
    return Comparison(ours=ours, pot=pot, extrapolated=extrapolated, reads_ours=reads_ours[0],
                      reads_pot=reads_pot[0] * pairs, iterations=float(warm.metrics["otpo/iterations"]),
                      weights=weights, official=official_weights)


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
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds per cell")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (1 gives stable timings on a busy host)")
    for axis in ("batch", "length", "hidden"):
        parser.add_argument(f"--{axis}", type=int, nargs="+", help=f"these {axis} sizes instead of the grid's")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    grid = {axis: getattr(args, axis) or sizes for axis, sizes in (QUICK_GRID if args.quick else FULL_GRID).items()}

    device_name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else \
        f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    print(f"`{shlex.join(['python', 'benchmarks/otpo_solver.py', *sys.argv[1:]])}`\n")
    print(f"Device: {device_name}; torch {torch.__version__}, POT {ot.__version__}; reg_m={args.reg_m}, prompt "
          f"{args.prompt_length} tokens, rejected = 3/4 of chosen, bf16 states; {args.rounds} interleaved rounds "
          "per cell (medians; POT/ours is the median of the rounds' ratios, worst = the smallest).\n")
    print("| reg | B | chosen/rejected tokens | d | iterations | ours (s) | POT per-pair loop (s) | POT/ours | "
          "worst round | host reads ours | host reads POT loop | max rel. diff |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    extrapolated_any = False
    for reg in args.reg:
        scheme = OTPOScheme(OTPOSettings(otpo_reg=reg, otpo_reg_m=[args.reg_m]))
        for hidden in grid["hidden"]:
            for length in grid["length"]:
                for pairs in grid["batch"]:
                    inputs = make_inputs(pairs, length, hidden, args.prompt_length, args.device)
                    cell = compare(inputs, scheme, reg, args.reg_m, args.device, args.max_pot_seconds, args.rounds)
                    extrapolated_any |= cell.extrapolated
                    mark = "*" if cell.extrapolated else ""
                    print(f"| {reg} | {pairs} | {length}/{3 * length // 4} | {hidden} | {cell.iterations:.0f} | "
                          f"{statistics.median(cell.ours):.3f} | {statistics.median(cell.pot):.3f}{mark} | "
                          f"{statistics.median(cell.ratios):.2f}{mark} | {min(cell.ratios):.2f}{mark} | "
                          f"{cell.reads_ours} | {cell.reads_pot}{mark} | "
                          f"{max_relative_difference(cell.weights, cell.official, pairs):.1e} |", flush=True)
                    del inputs, cell
    if extrapolated_any:
        print("\n\\* POT time extrapolated: one pair timed × B (the loop would exceed "
              f"--max-pot-seconds {args.max_pot_seconds}); its max rel. diff is over that pair only.")


if __name__ == "__main__":
    main()
