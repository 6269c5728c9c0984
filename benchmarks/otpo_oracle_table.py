"""OTPO weights against the official algorithm in float64 (POT ``sinkhorn_stabilized``, ``reg_type="entropy"``, on the
full padded matrix: ``tests/otpo_oracles.py``), over reg × reg_m × shared prefix × state dtype.

Two pairs (40/35 and 31/45 response tokens, d = 32, a shared component 3× the noise, NaN at padding); the first
``prefix`` response states of chosen and rejected are identical (a chat template's assistant header). The
relative difference is ``max |ours − oracle| / max |oracle|`` over both sides of both pairs.

    python benchmarks/otpo_oracle_table.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from test_otpo_plan import official, random_pairs  # noqa: E402  (the tests' oracle and inputs)

from tokenweight.weights.otpo import otpo_weights  # noqa: E402


def worst_difference(prefix: int, reg: float, reg_m: float, dtype: torch.dtype) -> tuple[float, bool, bool]:
    """Max relative difference, and whether ours and POT converged on every pair."""
    chosen, rejected, chosen_mask, rejected_mask = random_pairs(seed=12, lengths=[(40, 35), (31, 45)], shared=3.0)
    rejected[:, :prefix] = chosen[:, :prefix]
    chosen, rejected = chosen.to(dtype), rejected.to(dtype)
    w_c, w_r, log = otpo_weights(chosen, rejected, chosen_mask, rejected_mask, reg=reg, reg_m=reg_m, log=True)
    ref_c, ref_r, _ = official(chosen.float(), rejected.float(), chosen_mask, rejected_mask, reg, reg_m)
    worst = 0.0
    for b in range(2):
        for ours, ref in ((w_c[b][chosen_mask[b]], ref_c[b]), (w_r[b][rejected_mask[b]], ref_r[b])):
            worst = max(worst, float(np.abs(ours.double().numpy() - ref).max() / np.abs(ref).max()))
    return worst, bool(log["converged"].all()), log["method"]


def main() -> None:
    print("`python benchmarks/otpo_oracle_table.py`\n")
    print("| reg | reg_m | shared prefix | states dtype | solver form | converged | max rel. diff |")
    print("|---:|---:|---:|---|---|---|---:|")
    for reg in (1.0, 0.1, 0.01):
        for reg_m in (0.2, 10.0):
            for prefix in (0, 1, 5, 30):
                for dtype in (torch.float32, torch.bfloat16):
                    worst, converged, method = worst_difference(prefix, reg, reg_m, dtype)
                    print(f"| {reg} | {reg_m} | {prefix} | {str(dtype).split('.')[1]} | {method} | "
                          f"{'yes' if converged else 'no'} | {worst:.1e} |", flush=True)


if __name__ == "__main__":
    main()
