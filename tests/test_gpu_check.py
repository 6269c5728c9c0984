"""`benchmarks/gpu_check.py --tiny`: the GPU check's code runs end to end on CPU with a tiny config, every scheme
gets a step row, its two oracle comparisons agree (OTPO solver vs the POT loop, judge interface rows vs eager maps),
and the comparison with TRL at UltraFeedback-like lengths gives a row per variant."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tokenweight.weights import SCHEMES

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "gpu_check.py"
sys.path.insert(0, str(SCRIPT.parent))
from step_overhead import VARIANTS  # noqa: E402


def table_rows(report: str, first_header: str) -> dict[str, list[str]]:
    """The rows of the markdown table whose first column is ``first_header``: first cell → the other cells."""
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def test_gpu_check_tiny_runs_every_part_on_cpu(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--output", str(tmp_path / "report.md")],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = (tmp_path / "report.md").read_text()
    steps = table_rows(report, "scheme")
    assert list(steps) == list(VARIANTS)
    # every registered scheme that runs without weight columns has a row (step_overhead's VARIANTS)
    assert {settings["weighting"] for settings in VARIANTS.values()} >= {
        name for name, scheme in SCHEMES.items() if not scheme.tooling.needs_weight_columns}
    assert all(float(row[0]) > 0 for row in steps.values())  # step (ms)
    assert steps["uniform"][1] == "1.00"
    (otpo,) = table_rows(report, "B").values()
    assert float(otpo[-1]) < 1e-4  # batched solver vs POT: max relative difference
    assert set(table_rows(report, "method")) == {"interface", "eager"}
    difference = float(re.search(r"max abs difference of the rows: (\S+)", report).group(1))
    assert difference < 1e-6
    trl = table_rows(report, "variant")  # part 4: tokenweight (padded, padding-free, precomputed reference) vs TRL
    assert list(trl) == ["tokenweight", "tokenweight+padding_free", "trl", "tokenweight+precompute", "trl+precompute"]
    assert [row[-5] for row in trl.values()] == ["trl", "trl", "trl", "trl+precompute", "trl+precompute"]
    assert trl["trl"][-4:] == ["1.00 [1.00–1.00]"] * 4 and all(float(row[-4].split()[0]) > 0 for row in trl.values())
    assert "Padding-free against our padded path, per round: steps/s" in report
